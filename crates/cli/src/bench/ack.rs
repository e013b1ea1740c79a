//! `bench ack`: durable ack latency in v1 mode. S senders, each in its own room, send R msgs/s
//! (open loop) with ids; the latency is from the send to the `ack`, which DynamoWave sends only
//! after the message is committed and fsync'd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::fanout::wait_for_deliveries;
use super::load::{self, Clock, Counters, Protocol, Recorder};
use super::report::{Latency, Report, progress};
use super::{Common, target};

#[derive(Args, Debug)]
pub struct AckArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 100)]
    pub senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

/// The id in `{"type":"ack","id":"<n>",...}`.
fn acked_id(frame: &str) -> Option<u64> {
    let rest = frame.strip_prefix(r#"{"type":"ack","id":""#)?;
    rest[..rest.find('"')?].parse().ok()
}

pub async fn run(a: AckArgs) -> anyhow::Result<Report> {
    target::check(&a.common.url, a.common.allow_remote)?;
    anyhow::ensure!(
        a.rate > 0.0 && a.duration > 0.0,
        "--rate and --duration must be positive"
    );
    let bar = progress(a.common.json);
    let (conns, connect_failures) = load::connect_many(
        &a.common.url,
        a.senders,
        a.concurrency,
        Protocol::V1,
        |i| Some(format!("ack-{i}")),
        |n| bar.set_message(format!("connecting {n}/{}", a.senders)),
    )
    .await;
    let clock = Clock::start();
    let counters = Arc::new(Counters::default());
    let recorder = Arc::new(Recorder::new());
    let per_sender = (a.rate * a.duration).round() as usize;
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let started = clock.micros();
    let mut readers = JoinSet::new();
    let mut sending = JoinSet::new();
    let senders = conns.len();
    for (n, (i, conn)) in conns.into_iter().enumerate() {
        let sent_at: Arc<Vec<AtomicU64>> =
            Arc::new((0..per_sender).map(|_| AtomicU64::new(0)).collect());
        let (counters_r, recorder, sent_at_r) =
            (counters.clone(), recorder.clone(), sent_at.clone());
        let mut rx = conn.rx;
        readers.spawn(async move {
            while let Ok(text) = rx.next_text().await {
                let text = text.as_str();
                if let Some(id) = acked_id(text) {
                    let now = clock.micros();
                    if let Some(at) = sent_at_r.get(id as usize) {
                        recorder.record(n, now.saturating_sub(at.load(Ordering::Relaxed)));
                        counters_r.delivered_at(now);
                    }
                } else if text.starts_with(r#"{"type":"error""#) {
                    counters_r.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let (counters, payload, room) = (counters.clone(), a.payload, format!("ack-{i}"));
        let mut tx = conn.tx;
        let offset = period.mul_f64(n as f64 / senders.max(1) as f64);
        sending.spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + offset, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for seq in 0..per_sender {
                tick.tick().await;
                let now = clock.micros();
                sent_at[seq].store(now, Ordering::Relaxed);
                let data = load::stamp(n, seq as u64, now, payload);
                let frame = load::send_frame(Protocol::V1, &room, &data, Some(&seq.to_string()));
                if tx.send_text(frame).await.is_err() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            tx
        });
    }
    bar.set_message("sending");
    let senders_tx = sending.join_all().await;
    let sent = Counters::get(&counters.sent);
    wait_for_deliveries(&counters, sent, Duration::from_secs(5)).await;
    bar.finish_and_clear();
    readers.abort_all();
    drop(senders_tx);
    let acked = Counters::get(&counters.delivered).min(sent);
    let window =
        (Counters::get(&counters.last_delivery).saturating_sub(started)).max(1) as f64 / 1e6;
    Ok(Report {
        scenario: "ack",
        url: a.common.url.clone(),
        params: json!({ "senders": a.senders, "rate": a.rate, "duration": a.duration, "payload": a.payload }),
        connections: senders as u64,
        connect_failures,
        errors: Counters::get(&counters.errors),
        sent,
        expected: sent,
        delivered: acked,
        delivery_ratio: Report::ratio(acked, sent),
        deliveries_per_sec: acked as f64 / window,
        latency_us: Latency::of(&recorder.merged()),
        elapsed_s: clock.micros() as f64 / 1e6,
        json: a.common.json,
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_id_of_an_ack() {
        let ack = r#"{"type":"ack","id":"42","room":"r","seq":7,"ts":1,"duplicate":false}"#;
        assert_eq!(super::acked_id(ack), Some(42));
        assert_eq!(super::acked_id(r#"{"type":"message","id":"42"}"#), None);
    }
}

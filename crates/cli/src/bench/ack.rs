//! `bench ack`: durable ack latency in v1 mode. S senders, each in its own room, send R msgs/s
//! (open loop) with ids; the latency is from the send to the `ack`, which DynamoWave sends only
//! after the message is committed and fsync'd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::load::{self, Counters, Protocol, Run};
use super::report::{Report, progress};
use super::{Common, target};
use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;

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
    let run = Run::new();
    let per_sender = (a.rate * a.duration).round() as usize;
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let started = run.clock.micros();
    let mut readers = JoinSet::new();
    let mut sending = JoinSet::new();
    let senders = conns.len();
    for (n, (i, conn)) in conns.into_iter().enumerate() {
        // Send times by message id (= seq), shared by this sender's writer and reader.
        let sent_at: Arc<Vec<AtomicU64>> =
            Arc::new((0..per_sender).map(|_| AtomicU64::new(0)).collect());
        let (reader_run, reader_sent_at) = (run.clone(), sent_at.clone());
        let mut rx = conn.rx;
        readers.spawn(async move {
            while let Ok(text) = rx.next_text().await {
                let text = text.as_str();
                if let Some(at) = acked_id(text).and_then(|id| reader_sent_at.get(id as usize)) {
                    let now = reader_run.clock.micros();
                    reader_run
                        .recorder
                        .record(n, now.saturating_sub(at.load(Ordering::Relaxed)));
                    reader_run.counters.delivered_at(now);
                } else if text.starts_with(r#"{"type":"error""#) {
                    reader_run.error();
                }
            }
        });
        let (run, payload, room) = (run.clone(), a.payload, format!("ack-{i}"));
        let mut tx = conn.tx;
        let mut tick = load::pacer(period, period.mul_f64(n as f64 / senders.max(1) as f64));
        sending.spawn(async move {
            for (seq, sent_at) in sent_at.iter().enumerate() {
                tick.tick().await;
                let now = run.clock.micros();
                sent_at.store(now, Ordering::Relaxed);
                let data = load::stamp(n, seq as u64, now, payload);
                let frame = load::send_frame(Protocol::V1, &room, &data, Some(&seq.to_string()));
                if tx.send_text(frame).await.is_err() {
                    run.error();
                    break;
                }
                run.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            tx
        });
    }
    bar.set_message("sending");
    let senders_tx = sending.join_all().await;
    let sent = Counters::get(&run.counters.sent);
    run.wait_for(sent, Duration::from_secs(5)).await;
    bar.finish_and_clear();
    readers.abort_all();
    drop(senders_tx);
    let params = json!({ "senders": a.senders, "rate": a.rate, "duration": a.duration, "payload": a.payload });
    Ok(Report::of_deliveries(
        "ack",
        &a.common,
        params,
        (senders, connect_failures),
        &run,
        started,
        sent,
    ))
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

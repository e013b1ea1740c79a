//! `bench fanout`: one room, N members, S of them senders at R msgs/s each.
//!
//! Senders are paced open-loop by a timer: a sender never waits for deliveries, so a slow server
//! shows up as latency and a delivery ratio below 1, not as a lower offered rate. Every member
//! (the senders included) should receive every message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::load::{self, Counters, PROBE, Protocol, Run};
use super::report::{Report, progress};
use super::{Common, target};

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Members of the room.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// How many of the members send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of message text.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// compat reaches any AWS-sample server; v1 uses a room and acks (DynamoWave only).
    #[arg(long, value_enum, default_value_t = Protocol::Compat)]
    pub protocol: Protocol,
    /// Room for v1 (compat servers have one broadcast room).
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Handshakes in flight while connecting.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Seconds to wait for stragglers after the last send.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// One more client floods the room with this many msgs/s while the senders run (0: none),
    /// to see the others' latency hold while the server rate-limits and closes it.
    #[arg(long, default_value_t = 0.0)]
    pub flood_rate: f64,
}

pub async fn run(a: FanoutArgs) -> anyhow::Result<Report> {
    target::check(&a.common.url, a.common.allow_remote)?;
    anyhow::ensure!(
        a.senders >= 1 && a.senders <= a.members,
        "--senders must be 1 to --members"
    );
    anyhow::ensure!(
        a.rate > 0.0 && a.duration > 0.0,
        "--rate and --duration must be positive"
    );
    anyhow::ensure!(a.flood_rate >= 0.0, "--flood-rate must be 0 or positive");
    let params = json!({
        "members": a.members, "senders": a.senders, "rate": a.rate, "duration": a.duration,
        "payload": a.payload, "protocol": a.protocol.as_str(), "flood_rate": a.flood_rate,
    });
    let bar = progress(a.common.json);
    bar.set_message("connecting");
    let room = a.room.clone();
    let (conns, connect_failures) = load::connect_many(
        &a.common.url,
        a.members,
        a.concurrency,
        a.protocol,
        |_| Some(room.clone()),
        |n| bar.set_message(format!("connecting {n}/{}", a.members)),
    )
    .await;
    anyhow::ensure!(
        conns.len() >= a.senders,
        "only {} of {} members connected",
        conns.len(),
        a.members
    );

    let run = Run::new();
    let probed = Arc::new(AtomicUsize::new(0));
    let members = conns.len();
    let mut readers = JoinSet::new();
    let mut senders = Vec::new();
    for (n, (_, conn)) in conns.into_iter().enumerate() {
        let (run, probed) = (run.clone(), probed.clone());
        let mut rx = conn.rx;
        readers.spawn(async move {
            let mut saw_probe = false;
            loop {
                let Ok(text) = rx.next_text().await else {
                    run.error();
                    return;
                };
                if !run.delivered(n, text.as_str()) && !saw_probe && text.as_str().contains(PROBE) {
                    saw_probe = true;
                    probed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        if n < a.senders {
            senders.push(conn.tx);
        }
    }

    // Warm up: every member must see a probe before the measured phase, so a server that
    // registers members asynchronously is not blamed for messages sent before it finished.
    bar.set_message("warming up");
    let warmup_deadline = Instant::now() + Duration::from_secs(30);
    while probed.load(Ordering::Relaxed) < members && Instant::now() < warmup_deadline {
        let frame = load::send_frame(a.protocol, &a.room, PROBE, None);
        senders[0].send_text(frame).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::ensure!(
        probed.load(Ordering::Relaxed) == members,
        "only {} of {members} members received the warm-up probe",
        probed.load(Ordering::Relaxed)
    );

    let flood = if a.flood_rate > 0.0 {
        let first = a.common.url.split(',').next().unwrap_or_default();
        let conn = load::connect(first, a.protocol, Some(&a.room)).await?;
        Some(Flooder::start(conn, &a))
    } else {
        None
    };

    let started = run.clock.micros();
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let per_sender = (a.rate * a.duration).round() as u64;
    let mut sending = JoinSet::new();
    for (s, mut tx) in senders.into_iter().enumerate() {
        let (run, protocol, room, payload) = (run.clone(), a.protocol, a.room.clone(), a.payload);
        // Spread the senders over one period instead of firing together.
        let mut tick = load::pacer(period, period.mul_f64(s as f64 / a.senders as f64));
        sending.spawn(async move {
            for seq in 0..per_sender {
                tick.tick().await;
                let data = load::stamp(s, seq, run.clock.micros(), payload);
                if tx
                    .send_text(load::send_frame(protocol, &room, &data, None))
                    .await
                    .is_err()
                {
                    run.error();
                    break;
                }
                run.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            tx
        });
    }
    let progress_task = {
        let (bar, counters) = (bar.clone(), run.counters.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_message(format!(
                    "sent {}  delivered {}",
                    Counters::get(&counters.sent),
                    Counters::get(&counters.delivered)
                ));
            }
        })
    };
    let senders: Vec<_> = sending.join_all().await;
    let expected = Counters::get(&run.counters.sent) * members as u64;
    run.wait_for(expected, Duration::from_secs_f64(a.drain))
        .await;
    progress_task.abort();
    bar.finish_and_clear();
    readers.abort_all();
    drop(senders);
    let connections = (members, connect_failures);
    let mut report = Report::of_deliveries(
        "fanout",
        &a.common,
        params,
        connections,
        &run,
        started,
        expected,
    );
    if let Some(flood) = flood {
        report.flood = Some(flood.finish().await);
    }
    Ok(report)
}

/// The flooding client of `--flood-rate`: sends as fast as asked and counts how the server
/// answered (rate_limited errors, the close code).
struct Flooder {
    sender: tokio::task::JoinHandle<u64>,
    reader: tokio::task::JoinHandle<Option<(u16, String)>>,
    rate_limited: Arc<AtomicUsize>,
}

impl Flooder {
    fn start(conn: load::Conn, a: &FanoutArgs) -> Self {
        let (mut tx, mut rx) = (conn.tx, conn.rx);
        let (protocol, room) = (a.protocol, a.room.clone());
        // Batches once per millisecond: the timer's resolution.
        let per_ms = a.flood_rate / 1000.0;
        let total = (a.flood_rate * a.duration).round() as u64;
        let sender = tokio::spawn(async move {
            let mut tick = load::pacer(Duration::from_millis(1), Duration::ZERO);
            let (mut sent, mut owed) = (0u64, 0.0f64);
            while sent < total {
                tick.tick().await;
                owed += per_ms;
                while owed >= 1.0 && sent < total {
                    owed -= 1.0;
                    let frame = load::send_frame(protocol, &room, "flood", None);
                    if tx.send_text(frame).await.is_err() {
                        return sent;
                    }
                    sent += 1;
                }
            }
            sent
        });
        let rate_limited = Arc::new(AtomicUsize::new(0));
        let counted = rate_limited.clone();
        let reader = tokio::spawn(async move {
            loop {
                match rx.next_text().await {
                    Ok(text) => {
                        if text.as_str().contains("\"rate_limited\"") {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(dynamowave_client::ClientError::Closed { code, reason }) => {
                        return Some((code, reason));
                    }
                    Err(_) => return None,
                }
            }
        });
        Flooder {
            sender,
            reader,
            rate_limited,
        }
    }

    async fn finish(self) -> serde_json::Value {
        let sent = self.sender.await.unwrap_or(0);
        // A server that never closes the flooder leaves the reader waiting: give it a moment.
        let closed = match tokio::time::timeout(Duration::from_secs(2), self.reader).await {
            Ok(Ok(closed)) => closed,
            _ => None,
        };
        json!({
            "sent": sent,
            "rateLimited": self.rate_limited.load(Ordering::Relaxed),
            "closeCode": closed.as_ref().map(|c| c.0),
            "closeReason": closed.map(|c| c.1),
        })
    }
}

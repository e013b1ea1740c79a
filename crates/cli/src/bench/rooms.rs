//! `bench rooms`: many rooms of 10 to 100 members with chat-like traffic (v1). Every member
//! sends at a low rate to its own room; every member of a room should receive every message
//! sent there.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use rand::Rng;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::fanout::wait_for_deliveries;
use super::load::{self, Clock, Counters, Protocol, Recorder};
use super::report::{Latency, Report, progress};
use super::{Common, target};

#[derive(Args, Debug)]
pub struct RoomsArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    #[arg(long, default_value_t = 10)]
    pub min_members: usize,
    #[arg(long, default_value_t = 100)]
    pub max_members: usize,
    /// Messages per second per member (chat-like: well below one).
    #[arg(long, default_value_t = 0.5)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

pub async fn run(a: RoomsArgs) -> anyhow::Result<Report> {
    target::check(&a.common.url, a.common.allow_remote)?;
    anyhow::ensure!(
        1 <= a.min_members && a.min_members <= a.max_members,
        "need 1 <= --min-members <= --max-members"
    );
    anyhow::ensure!(
        a.rate > 0.0 && a.duration > 0.0,
        "--rate and --duration must be positive"
    );
    let mut rng = rand::rng();
    let sizes: Vec<usize> = (0..a.rooms)
        .map(|_| rng.random_range(a.min_members..=a.max_members))
        .collect();
    // Member i belongs to room room_of[i].
    let room_of: Vec<usize> = sizes
        .iter()
        .enumerate()
        .flat_map(|(r, &n)| std::iter::repeat_n(r, n))
        .collect();
    let total = room_of.len();
    let bar = progress(a.common.json);
    let (conns, connect_failures) = load::connect_many(
        &a.common.url,
        total,
        a.concurrency,
        Protocol::V1,
        |i| Some(format!("bench-room-{}", room_of[i])),
        |n| bar.set_message(format!("connecting {n}/{total}")),
    )
    .await;
    let mut connected_in = vec![0u64; a.rooms];
    for (i, _) in &conns {
        connected_in[room_of[*i]] += 1;
    }
    let clock = Clock::start();
    let counters = Arc::new(Counters::default());
    let recorder = Arc::new(Recorder::new());
    let sent_in: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
        (0..a.rooms)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
    );
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let per_member = (a.rate * a.duration).round() as u64;
    let started = clock.micros();
    let mut readers = JoinSet::new();
    let mut sending = JoinSet::new();
    let members = conns.len();
    for (n, (i, conn)) in conns.into_iter().enumerate() {
        let (counters_r, recorder) = (counters.clone(), recorder.clone());
        let mut rx = conn.rx;
        readers.spawn(async move {
            while let Ok(text) = rx.next_text().await {
                let text = text.as_str();
                if text.starts_with(r#"{"type":"message""#)
                    && let Some(at) = load::stamp_micros(text)
                {
                    let now = clock.micros();
                    recorder.record(n, now.saturating_sub(at));
                    counters_r.delivered_at(now);
                } else if text.starts_with(r#"{"type":"error""#) {
                    counters_r.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let (counters, sent_in, payload) = (counters.clone(), sent_in.clone(), a.payload);
        let room_index = room_of[i];
        let mut tx = conn.tx;
        // Chat is bursty and unsynchronized: a random phase per member.
        let offset = period.mul_f64(rand::rng().random::<f64>());
        sending.spawn(async move {
            let room = format!("bench-room-{room_index}");
            let mut tick = tokio::time::interval_at(Instant::now() + offset, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for seq in 0..per_member {
                tick.tick().await;
                let data = load::stamp(n, seq, clock.micros(), payload);
                if tx
                    .send_text(load::send_frame(Protocol::V1, &room, &data, None))
                    .await
                    .is_err()
                {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                counters.sent.fetch_add(1, Ordering::Relaxed);
                sent_in[room_index].fetch_add(1, Ordering::Relaxed);
            }
            tx
        });
    }
    bar.set_message("sending");
    let senders = sending.join_all().await;
    let expected: u64 = sent_in
        .iter()
        .zip(&connected_in)
        .map(|(sent, members)| sent.load(Ordering::Relaxed) * members)
        .sum();
    wait_for_deliveries(&counters, expected, Duration::from_secs(5)).await;
    bar.finish_and_clear();
    readers.abort_all();
    drop(senders);
    let delivered = Counters::get(&counters.delivered).min(expected);
    let window =
        (Counters::get(&counters.last_delivery).saturating_sub(started)).max(1) as f64 / 1e6;
    Ok(Report {
        scenario: "rooms",
        url: a.common.url.clone(),
        params: json!({
            "rooms": a.rooms, "min_members": a.min_members, "max_members": a.max_members,
            "rate": a.rate, "duration": a.duration, "payload": a.payload, "members": total,
        }),
        connections: members as u64,
        connect_failures,
        errors: Counters::get(&counters.errors),
        sent: Counters::get(&counters.sent),
        expected,
        delivered,
        delivery_ratio: Report::ratio(delivered, expected),
        deliveries_per_sec: delivered as f64 / window,
        latency_us: Latency::of(&recorder.merged()),
        elapsed_s: clock.micros() as f64 / 1e6,
        json: a.common.json,
        ..Report::default()
    })
}

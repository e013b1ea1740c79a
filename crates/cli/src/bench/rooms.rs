//! `bench rooms`: many rooms of 10 to 100 members with chat-like traffic (v1). Every member
//! sends at a low rate to its own room; every member of a room should receive every message
//! sent there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::load::{self, Protocol, Run};
use super::report::{Report, progress};
use super::{Common, target};
use clap::Args;
use rand::Rng;
use serde_json::json;
use tokio::task::JoinSet;

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
    let run = Run::new();
    let sent_in: Arc<Vec<AtomicU64>> = Arc::new((0..a.rooms).map(|_| AtomicU64::new(0)).collect());
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let per_member = (a.rate * a.duration).round() as u64;
    let started = run.clock.micros();
    let mut readers = JoinSet::new();
    let mut sending = JoinSet::new();
    let members = conns.len();
    for (n, (i, conn)) in conns.into_iter().enumerate() {
        let reader_run = run.clone();
        let mut rx = conn.rx;
        readers.spawn(async move {
            while let Ok(text) = rx.next_text().await {
                let text = text.as_str();
                if text.starts_with(r#"{"type":"message""#) {
                    reader_run.delivered(n, text);
                } else if text.starts_with(r#"{"type":"error""#) {
                    reader_run.error();
                }
            }
        });
        let (run, sent_in, payload) = (run.clone(), sent_in.clone(), a.payload);
        let room_index = room_of[i];
        let mut tx = conn.tx;
        // Chat is bursty and unsynchronized: a random phase per member.
        let mut tick = load::pacer(period, period.mul_f64(rand::rng().random::<f64>()));
        sending.spawn(async move {
            let room = format!("bench-room-{room_index}");
            for seq in 0..per_member {
                tick.tick().await;
                let data = load::stamp(n, seq, run.clock.micros(), payload);
                if tx
                    .send_text(load::send_frame(Protocol::V1, &room, &data, None))
                    .await
                    .is_err()
                {
                    run.error();
                    break;
                }
                run.counters.sent.fetch_add(1, Ordering::Relaxed);
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
    run.wait_for(expected, Duration::from_secs(5)).await;
    bar.finish_and_clear();
    readers.abort_all();
    drop(senders);
    let params = json!({
        "rooms": a.rooms, "min_members": a.min_members, "max_members": a.max_members,
        "rate": a.rate, "duration": a.duration, "payload": a.payload, "members": total,
    });
    let connections = (members, connect_failures);
    Ok(Report::of_deliveries(
        "rooms",
        &a.common,
        params,
        connections,
        &run,
        started,
        expected,
    ))
}

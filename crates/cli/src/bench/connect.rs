//! `bench connect`: how fast the server accepts new WebSocket connections. It opens N
//! connections, C handshakes at a time, holds them all until the end (so closing does not
//! overlap the measurement), and reports connections per second and handshake latency.

use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::load::{self, Protocol};
use super::report::{Latency, Report, progress};
use super::{Common, target};

#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open (a process may hold about 20,000 files here).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = Protocol::Compat)]
    pub protocol: Protocol,
}

pub async fn run(a: ConnectArgs) -> anyhow::Result<Report> {
    target::check(&a.common.url, a.common.allow_remote)?;
    let bar = progress(a.common.json);
    let started = Instant::now();
    let (conns, connect_failures) = load::connect_many(
        &a.common.url,
        a.connections,
        a.concurrency,
        a.protocol,
        |_| None,
        |n| bar.set_message(format!("connected {n}/{}", a.connections)),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut handshakes = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for (_, c) in &conns {
        handshakes.saturating_record((c.handshake.as_micros() as u64).max(1));
    }
    let opened = conns.len() as u64;
    drop(conns);
    Ok(Report {
        scenario: "connect",
        url: a.common.url.clone(),
        params: json!({
            "connections": a.connections, "concurrency": a.concurrency,
            "protocol": a.protocol.as_str(),
        }),
        connections: opened,
        connect_failures,
        connects_per_sec: Some(opened as f64 / elapsed.max(1e-9)),
        latency_us: Latency::of(&handshakes),
        delivery_ratio: 1.0,
        elapsed_s: elapsed,
        json: a.common.json,
        ..Report::default()
    })
}

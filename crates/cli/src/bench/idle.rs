//! `bench idle`: N idle connections held for a while. When the server runs on this machine the
//! report has its RSS before and after, and the difference per connection.
//! At the end, a connection whose read side has ended (the server dropped it) counts as an
//! error.

use std::time::Duration;

use clap::Args;
use futures_util::FutureExt;
use serde_json::json;

use super::load::{self, Protocol};
use super::report::{Report, progress};
use super::{Common, target};

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to hold (a process may hold about 20,000 files here).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = Protocol::Compat)]
    pub protocol: Protocol,
}

pub async fn run(a: IdleArgs) -> anyhow::Result<Report> {
    let port = target::check(&a.common.url, a.common.allow_remote)?;
    let pid = a.common.server_pid.or_else(|| target::find_listener(port));
    let baseline = pid.and_then(target::rss_bytes);
    let bar = progress(a.common.json);
    let started = std::time::Instant::now();
    let (mut conns, connect_failures) = load::connect_many(
        &a.common.url,
        a.connections,
        a.concurrency,
        a.protocol,
        |_| None,
        |n| bar.set_message(format!("connected {n}/{}", a.connections)),
    )
    .await;
    bar.set_message(format!("holding {} connections", conns.len()));
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let rss = pid.and_then(target::rss_bytes);
    // A connection the server dropped has its read side ended (or a close frame waiting).
    let mut errors = 0;
    for (_, c) in &mut conns {
        if let Some(Err(_)) = c.rx.next_text().now_or_never() {
            errors += 1;
        }
    }
    bar.finish_and_clear();
    let held = conns.len() as u64;
    drop(conns);
    let per_connection = match (baseline, rss) {
        (Some(b), Some(r)) if held > 0 => Some((r as f64 - b as f64) / held as f64),
        _ => None,
    };
    Ok(Report {
        scenario: "idle",
        url: a.common.url.clone(),
        params: json!({
            "connections": a.connections, "hold": a.hold,
            "protocol": a.protocol.as_str(),
        }),
        connections: held,
        connect_failures,
        errors,
        delivery_ratio: 1.0,
        elapsed_s: started.elapsed().as_secs_f64(),
        server_pid: pid,
        server_rss_baseline_bytes: baseline,
        server_rss_bytes: rss,
        rss_per_connection_bytes: per_connection,
        json: a.common.json,
        ..Report::default()
    })
}

//! `dynamowave bench`: the built-in load generator.
//!
//! Every scenario connects real WebSocket clients (the client library) to a server, drives
//! load, and reports throughput, the delivery ratio, latency percentiles (HDR histogram) and
//! errors: a progress line on a terminal, or one JSON object with `--json`.
//!
//! - [`fanout`]: one room, N members, S senders at R msgs/s each, paced open-loop;
//! - [`rooms`]: many rooms of 10–100 members with chat-like traffic (v1);
//! - [`connect`]: new connections per second;
//! - [`idle`]: N idle connections held; the server's RSS per connection when it is local;
//! - [`ack`]: durable ack latency in v1 mode.
//!
//! `fanout`, `connect` and `idle` speak the compat protocol by default, so any server that
//! implements the AWS sample can be measured. Latency is measured from a send timestamp inside
//! each payload (`b:<sender>:<seq>:<micros>:` then padding), against one clock in this process.

mod ack;
mod connect;
mod fanout;
mod idle;
mod load;
mod report;
mod rooms;
mod target;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// One room, N members, S of them sending at R msgs/s each (open loop).
    Fanout(fanout::FanoutArgs),
    /// Many rooms of varied size with chat-like traffic (v1 protocol).
    Rooms(rooms::RoomsArgs),
    /// New connections per second.
    Connect(connect::ConnectArgs),
    /// N idle connections held for a while; reports the server's RSS when it is local.
    Idle(idle::IdleArgs),
    /// Durable ack latency of v1 `sendmessage`.
    Ack(ack::AckArgs),
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket URL of the server under test; several, comma-separated, spread the clients
    /// over the nodes of a cluster (client i on URL i mod count).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Print one JSON object instead of a human summary.
    #[arg(long)]
    pub json: bool,
    /// Allow a target outside the loopback range (never point this at a server you do not own).
    #[arg(long)]
    pub allow_remote: bool,
    /// PID of the server, for its RSS; found from the listening port when the server is local.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = match args.scenario {
        Scenario::Fanout(a) => fanout::run(a).await?,
        Scenario::Rooms(a) => rooms::run(a).await?,
        Scenario::Connect(a) => connect::run(a).await?,
        Scenario::Idle(a) => idle::run(a).await?,
        Scenario::Ack(a) => ack::run(a).await?,
    };
    report.print();
    Ok(())
}

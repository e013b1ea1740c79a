//! `dynamowave`: the one binary. `serve` (the default) runs the chat server; more subcommands
//! (chat, bench, backup, ...) join it as they are built.
//!
//! # Layout
//!
//! - `main.rs`: argument parsing and logging setup, nothing else.
//! - `serve.rs`: `dynamowave serve`: merges flags, environment and the TOML file into a
//!   `ServerConfig`, binds, and runs the server until SIGINT/SIGTERM.
//! - `chat.rs`: `dynamowave chat`, the terminal client.
//! - `bench/`: `dynamowave bench`, the load generator, one file per scenario.
//! - `backup.rs`: `dynamowave backup`, an online snapshot of a store.
//! - `restore.rs`: `dynamowave restore`, a new data directory at a point in time.
//! - `dlq.rs`: `dynamowave dlq`, the dead-letter queue of a running server.
//! - `token.rs`: `dynamowave token`, an HS256 token for development (`auth = jwt`).
//! - `rekey.rs`: `dynamowave rekey`, moves stored rows to the newest encryption key.
//! - `local_gateway/`: `dynamowave emulate-aws`, a local API Gateway WebSocket API and Lambda
//!   Runtime API that run the AWS shape's handler binaries (deploy/aws/run-local.sh).

mod backup;
mod bench;
mod chat;
mod dlq;
mod local_gateway;
mod rekey;
mod restore;
mod serve;
mod token;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "dynamowave",
    version,
    about = "A real-time chat backend in one binary"
)]
struct Cli {
    /// Log lines on stderr: readable text, or one JSON object per line. Filter with RUST_LOG
    /// (default: info).
    #[arg(
        long,
        global = true,
        env = "DYNAMOWAVE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat server (the default).
    Serve(Box<serve::ServeArgs>),
    /// Chat in a terminal (or from a script, reading lines from stdin).
    Chat(chat::ChatArgs),
    /// Measure a server: throughput, delivery ratio, latency, connects, memory.
    Bench(bench::BenchArgs),
    /// Write a consistent snapshot of a store to a file, while its server keeps serving.
    Backup(backup::BackupArgs),
    /// Make a new data directory holding a store's state at a point in time.
    Restore(restore::RestoreArgs),
    /// List, show, replay or purge a running server's dead letters.
    Dlq(dlq::DlqArgs),
    /// Rewrite stored messages and dead letters under the newest encryption key, while the
    /// server keeps serving.
    Rekey(rekey::RekeyArgs),
    /// Print an HS256 token for a server with --auth jwt (development; reads the same
    /// --config and DYNAMOWAVE_JWT_SECRET as serve).
    Token(token::TokenArgs),
    /// A local API Gateway WebSocket API that runs the AWS shape's Lambda handler binaries,
    /// unchanged, through the Lambda Runtime API (deploy/aws/run-local.sh starts it).
    EmulateAws(local_gateway::EmulateAwsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // tungstenite logs whole frames, message bodies included, at trace level: never with a
    // blanket RUST_LOG=trace, only when tungstenite is named in RUST_LOG.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("tungstenite")) {
        filter = filter.add_directive("tungstenite=info".parse().expect("a valid directive"));
    }
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line: timestamp, level, target, message and the event's fields at the
        // top level.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Serve(args)) => runtime.block_on(serve::run(*args)),
        Some(Command::Chat(args)) => runtime.block_on(chat::run(args)),
        Some(Command::Bench(args)) => runtime.block_on(bench::run(args)),
        Some(Command::Backup(args)) => backup::run(args),
        Some(Command::Restore(args)) => restore::run(args),
        Some(Command::Dlq(args)) => runtime.block_on(dlq::run(args)),
        Some(Command::Rekey(args)) => rekey::run(args),
        Some(Command::Token(args)) => token::run(args),
        Some(Command::EmulateAws(args)) => runtime.block_on(local_gateway::main(args)),
        None => runtime.block_on(serve::run(serve::ServeArgs::from_env())),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its own rules (unique ids, flag names) only when a command is built: here,
    /// for every subcommand, rather than at a user's first run.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}

//! `dynamowave serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser};
use dynamowave_server::ServerConfig;

/// Every option also reads a `DYNAMOWAVE_*` variable; precedence is
/// defaults < `--config` file < environment < flags.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names, e.g. `data-dir`).
    #[arg(long, env = "DYNAMOWAVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "DYNAMOWAVE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the SQLite store [default: ./dynamowave-data].
    #[arg(long, env = "DYNAMOWAVE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bearer token for the management API; without it, only loopback clients may use it.
    #[arg(long, env = "DYNAMOWAVE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest WebSocket frame in bytes; larger closes with 1009 [default: 32768].
    #[arg(long, env = "DYNAMOWAVE_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest WebSocket message and API body in bytes [default: 131072].
    #[arg(long, env = "DYNAMOWAVE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Frames queued per connection before it is closed as too slow (1013) [default: 1024].
    #[arg(long, env = "DYNAMOWAVE_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Milliseconds one socket write may take before the connection is dropped [default: 10000].
    #[arg(long, env = "DYNAMOWAVE_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Milliseconds graceful shutdown waits for connections to close [default: 10000].
    #[arg(long, env = "DYNAMOWAVE_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Milliseconds of silence before the server pings a connection [default: 30000].
    #[arg(long, env = "DYNAMOWAVE_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// Milliseconds of silence (pings unanswered) before a connection is closed [default: 600000].
    #[arg(long, env = "DYNAMOWAVE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Longest a connection may last, in milliseconds; 0 is no limit [default: 0].
    #[arg(long, env = "DYNAMOWAVE_MAX_CONNECTION_MS")]
    pub max_connection_ms: Option<u64>,
}

/// Parses only the environment, for a bare `dynamowave` (no subcommand).
#[derive(Parser)]
struct EnvOnly {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    pub fn from_env() -> Self {
        EnvOnly::parse_from(["dynamowave"]).args
    }

    fn into_config(self) -> anyhow::Result<ServerConfig> {
        let mut c = match &self.config {
            Some(path) => ServerConfig::from_toml_file(path)?,
            None => ServerConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        set!(
            listen,
            data_dir,
            max_frame_bytes,
            max_message_bytes,
            outbound_queue,
            write_timeout_ms,
            shutdown_grace_ms,
            ping_interval_ms,
            idle_timeout_ms,
            max_connection_ms
        );
        if self.admin_token.is_some() {
            c.admin_token = self.admin_token;
        }
        c.validate()?;
        Ok(c)
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let (listen, data_dir) = (config.listen, config.data_dir.clone());
    // Open the store first: the line below promises a server that accepts connections.
    let server = dynamowave_server::Server::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    println!(
        "DynamoWave chat on ws://{addr}/ws (data in {}) - try: npx wscat -c ws://{addr}/ws",
        data_dir.display()
    );
    server.serve(listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

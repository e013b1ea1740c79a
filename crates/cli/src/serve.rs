//! `dynamowave serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use dynamowave_core::ports::Backend;
use dynamowave_server::ServerConfig;
use dynamowave_store_nats::{NatsBackend, NatsConfig};
use dynamowave_store_sqlite::SqliteBackend;

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
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub hooks: HookArgs,
}

/// The product's backend's say over joins (TOML table `[hooks]`; docs/protocol.md, "Join hook").
#[derive(Args, Debug, Default)]
pub struct HookArgs {
    /// http:// URL POSTed before every join; a 2xx allows, a 4xx refuses with its reason.
    #[arg(long, env = "DYNAMOWAVE_JOIN_HOOK_URL", help_heading = "Hooks")]
    pub join_hook_url: Option<String>,
    /// Milliseconds the join hook may take [default: 2000].
    #[arg(long, env = "DYNAMOWAVE_JOIN_HOOK_TIMEOUT_MS", help_heading = "Hooks")]
    pub join_hook_timeout_ms: Option<u64>,
    /// A join hook that times out, fails or answers 5xx: allow or deny [default: deny].
    #[arg(long, env = "DYNAMOWAVE_JOIN_HOOK_ON_TIMEOUT", help_heading = "Hooks")]
    pub join_hook_on_timeout: Option<dynamowave_server::config::HookFallback>,
    /// Ask the join hook before every $connect too (event `connect`).
    #[arg(long, env = "DYNAMOWAVE_JOIN_HOOK_ON_CONNECT", help_heading = "Hooks")]
    pub join_hook_on_connect: Option<bool>,
    /// Signs hook requests and webhook batches: X-DynamoWave-Signature: sha256=<hex HMAC-SHA256>.
    #[arg(
        long,
        env = "DYNAMOWAVE_WEBHOOK_SECRET",
        hide_env_values = true,
        help_heading = "Hooks"
    )]
    pub webhook_secret: Option<String>,
    /// http:// URL the chat's events are POSTed to, in batches, at least once, in order.
    #[arg(long, env = "DYNAMOWAVE_WEBHOOK_URL", help_heading = "Hooks")]
    pub webhook_url: Option<String>,
    /// Milliseconds one webhook POST may take [default: 5000].
    #[arg(long, env = "DYNAMOWAVE_WEBHOOK_TIMEOUT_MS", help_heading = "Hooks")]
    pub webhook_timeout_ms: Option<u64>,
    /// Events per webhook POST [default: 100].
    #[arg(long, env = "DYNAMOWAVE_WEBHOOK_BATCH_MAX", help_heading = "Hooks")]
    pub webhook_batch_max: Option<usize>,
    /// Attempts of a batch before it goes to the dead-letter queue [default: 10].
    #[arg(long, env = "DYNAMOWAVE_WEBHOOK_MAX_ATTEMPTS", help_heading = "Hooks")]
    pub webhook_max_attempts: Option<u32>,
}

/// One node of a cluster on NATS JetStream instead of the embedded store (TOML table
/// `[cluster]`; docs/cluster.md).
#[derive(Args, Debug, Default)]
pub struct ClusterArgs {
    /// Join a cluster on NATS JetStream: nats://HOST:PORT or tls://HOST:PORT, comma-separated
    /// for several servers [default: none, the embedded SQLite store].
    #[arg(long, env = "DYNAMOWAVE_CLUSTER", help_heading = "Cluster")]
    pub cluster: Option<String>,
    /// This node's id, unique in the cluster (A-Z, a-z, 0-9, - and _) [default: random, printed at start].
    #[arg(long, env = "DYNAMOWAVE_NODE_ID", help_heading = "Cluster")]
    pub node_id: Option<String>,
    /// Replicas of the streams and buckets, at most the NATS servers in the cluster [default: 1].
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_REPLICAS", help_heading = "Cluster")]
    pub cluster_replicas: Option<usize>,
    /// NATS user (with --cluster-password).
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_USER", help_heading = "Cluster")]
    pub cluster_user: Option<String>,
    /// NATS password of --cluster-user.
    #[arg(
        long,
        env = "DYNAMOWAVE_CLUSTER_PASSWORD",
        hide_env_values = true,
        help_heading = "Cluster"
    )]
    pub cluster_password: Option<String>,
    /// NATS token.
    #[arg(
        long,
        env = "DYNAMOWAVE_CLUSTER_TOKEN",
        hide_env_values = true,
        help_heading = "Cluster"
    )]
    pub cluster_token: Option<String>,
    /// NATS credentials file (user JWT and nkey seed).
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_CREDS", help_heading = "Cluster")]
    pub cluster_creds: Option<PathBuf>,
    /// PEM CA certificate of tls:// NATS servers that are not publicly trusted.
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_TLS_CA", help_heading = "Cluster")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// PEM client certificate, for NATS servers that verify clients (with --cluster-tls-key).
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_TLS_CERT", help_heading = "Cluster")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// PEM private key of --cluster-tls-cert.
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_TLS_KEY", help_heading = "Cluster")]
    pub cluster_tls_key: Option<PathBuf>,
    /// Seconds message ids are remembered for idempotent retries [default: 86400].
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_ID_TTL_S", help_heading = "Cluster")]
    pub cluster_id_ttl_s: Option<u64>,
    /// JetStream's duplicate window on the messages stream, seconds [default: 120].
    #[arg(
        long,
        env = "DYNAMOWAVE_CLUSTER_DUPLICATE_WINDOW_S",
        help_heading = "Cluster"
    )]
    pub cluster_duplicate_window_s: Option<u64>,
    /// Seconds after its last heartbeat that a node's connections leave the members lists [default: 15].
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_NODE_TTL_S", help_heading = "Cluster")]
    pub cluster_node_ttl_s: Option<u64>,
    /// Prefix of the stream, bucket and subject names (several chats on one NATS) [default: DW].
    #[arg(long, env = "DYNAMOWAVE_CLUSTER_PREFIX", help_heading = "Cluster")]
    pub cluster_prefix: Option<String>,
}

/// TLS, authentication, access lists and encryption at rest (TOML tables `[tls]`, `[auth]`,
/// `[access]`, `[encryption]`; docs/security.md).
#[derive(Args, Debug, Default)]
pub struct SecurityArgs {
    /// PEM certificate chain: serve https and wss (with --tls-key).
    #[arg(long, env = "DYNAMOWAVE_TLS_CERT", help_heading = "Security")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DYNAMOWAVE_TLS_KEY", help_heading = "Security")]
    pub tls_key: Option<PathBuf>,
    /// Refuse plaintext connections except from loopback.
    #[arg(long, env = "DYNAMOWAVE_REQUIRE_TLS", num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub require_tls: Option<bool>,
    /// How WebSocket clients authenticate: none or jwt [default: none].
    #[arg(long, env = "DYNAMOWAVE_AUTH", help_heading = "Security")]
    pub auth: Option<dynamowave_server::config::AuthMode>,
    /// HS256 secret for --auth jwt (at least 32 characters).
    #[arg(
        long,
        env = "DYNAMOWAVE_JWT_SECRET",
        hide_env_values = true,
        help_heading = "Security"
    )]
    pub jwt_secret: Option<String>,
    /// PEM public key (EdDSA or RS256) for --auth jwt.
    #[arg(long, env = "DYNAMOWAVE_JWT_PUBLIC_KEY", help_heading = "Security")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file for --auth jwt; the token's `kid` picks the key.
    #[arg(long, env = "DYNAMOWAVE_JWKS", help_heading = "Security")]
    pub jwks: Option<PathBuf>,
    /// Seconds of clock skew allowed on a token's exp and nbf [default: 30].
    #[arg(long, env = "DYNAMOWAVE_JWT_LEEWAY_S", help_heading = "Security")]
    pub jwt_leeway_s: Option<u64>,
    /// The audience tokens must name in `aud` [default: none: tokens with aud are refused].
    #[arg(long, env = "DYNAMOWAVE_JWT_AUDIENCE", help_heading = "Security")]
    pub jwt_audience: Option<String>,
    /// The issuer tokens must name in `iss` [default: not checked].
    #[arg(long, env = "DYNAMOWAVE_JWT_ISSUER", help_heading = "Security")]
    pub jwt_issuer: Option<String>,
    /// Browser origins that may connect, comma-separated [default: the page's own origin].
    #[arg(
        long,
        env = "DYNAMOWAVE_ALLOWED_ORIGINS",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Only these networks may connect (CIDR, comma-separated) [default: all].
    #[arg(
        long,
        env = "DYNAMOWAVE_ALLOW_IPS",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub allow_ips: Option<Vec<ipnet::IpNet>>,
    /// These networks may not connect (CIDR, comma-separated).
    #[arg(
        long,
        env = "DYNAMOWAVE_DENY_IPS",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub deny_ips: Option<Vec<ipnet::IpNet>>,
    /// File holding a 32-byte key, base64; repeat for rotation (the last encrypts new rows).
    #[arg(long, help_heading = "Security")]
    pub encryption_key_file: Vec<PathBuf>,
    /// Keys, base64, comma-separated (after any --encryption-key-file).
    #[arg(
        long = "encryption-key",
        env = "DYNAMOWAVE_ENCRYPTION_KEY",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = "Security"
    )]
    pub encryption_keys: Option<Vec<String>>,
}

/// Rate limits, connection caps and reserved capacity (TOML table `[limits]`).
#[derive(Args, Debug, Default)]
pub struct LimitArgs {
    /// Frames per second per connection; 0 is no limit [default: 10].
    #[arg(long, env = "DYNAMOWAVE_MESSAGES_PER_SECOND", help_heading = "Limits")]
    pub messages_per_second: Option<u32>,
    /// Frames a connection may send at once above the rate [default: 20].
    #[arg(long, env = "DYNAMOWAVE_MESSAGE_BURST", help_heading = "Limits")]
    pub message_burst: Option<u32>,
    /// Rate-limited frames within 10 s before the connection is closed with 1008 [default: 100].
    #[arg(long, env = "DYNAMOWAVE_ABUSE_CLOSE_AFTER", help_heading = "Limits")]
    pub abuse_close_after: Option<u32>,
    /// New connections per second per source IP; 0 is no limit [default: 20].
    #[arg(
        long,
        env = "DYNAMOWAVE_CONNECTIONS_PER_IP_PER_SECOND",
        help_heading = "Limits"
    )]
    pub connections_per_ip_per_second: Option<u32>,
    /// New connections a source IP may open at once above the rate [default: 40].
    #[arg(
        long,
        env = "DYNAMOWAVE_CONNECTION_BURST_PER_IP",
        help_heading = "Limits"
    )]
    pub connection_burst_per_ip: Option<u32>,
    /// Open connections per source IP; 0 is no limit [default: 1000].
    #[arg(
        long,
        env = "DYNAMOWAVE_MAX_CONNECTIONS_PER_IP",
        help_heading = "Limits"
    )]
    pub max_connections_per_ip: Option<usize>,
    /// Networks exempt from per-IP limits, comma-separated CIDR [default: 127.0.0.1/32,::1/128].
    #[arg(
        long,
        env = "DYNAMOWAVE_PER_IP_EXEMPT",
        value_delimiter = ',',
        help_heading = "Limits"
    )]
    pub per_ip_exempt: Option<Vec<ipnet::IpNet>>,
    /// Open connections in all; over it the upgrade answers 503; 0 is no limit [default: 10000].
    #[arg(long, env = "DYNAMOWAVE_MAX_CONNECTIONS", help_heading = "Limits")]
    pub max_connections: Option<usize>,
    /// Milliseconds from TCP accept until the request headers are read, TLS included [default: 10000].
    #[arg(long, env = "DYNAMOWAVE_HANDSHAKE_TIMEOUT_MS", help_heading = "Limits")]
    pub handshake_timeout_ms: Option<u64>,
    /// Rooms one connection may be in at once [default: 100].
    #[arg(
        long,
        env = "DYNAMOWAVE_MAX_ROOMS_PER_CONNECTION",
        help_heading = "Limits"
    )]
    pub max_rooms_per_connection: Option<usize>,
    /// $connect/$disconnect handled at once, reserved apart from messages [default: 1024].
    #[arg(long, env = "DYNAMOWAVE_CONNECT_CONCURRENCY", help_heading = "Limits")]
    pub connect_concurrency: Option<usize>,
    /// Frames handled at once across all connections [default: 1024].
    #[arg(long, env = "DYNAMOWAVE_MESSAGE_CONCURRENCY", help_heading = "Limits")]
    pub message_concurrency: Option<usize>,
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

    /// The merged settings (`dynamowave rekey` shares this with `serve`).
    pub(crate) fn into_config(self) -> anyhow::Result<ServerConfig> {
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
        macro_rules! set_in {
            ($group:ident, $args:ident: $($field:ident => $target:ident),*) => {
                $( if let Some(v) = self.$args.$field { c.$group.$target = v; } )*
            };
        }
        macro_rules! set_opt_in {
            ($group:ident, $args:ident: $($field:ident => $target:ident),*) => {
                $( if let Some(v) = self.$args.$field { c.$group.$target = Some(v); } )*
            };
        }
        set_opt_in!(tls, security: tls_cert => cert, tls_key => key);
        set_in!(tls, security: require_tls => require);
        set_in!(auth, security: auth => mode, jwt_leeway_s => leeway_s);
        set_opt_in!(auth, security: jwt_secret => jwt_secret, jwt_public_key => jwt_public_key, jwks => jwks);
        set_opt_in!(auth, security: jwt_audience => audience, jwt_issuer => issuer);
        set_in!(access, security: allowed_origins => allowed_origins, allow_ips => allow_ips, deny_ips => deny_ips);
        if !self.security.encryption_key_file.is_empty() {
            c.encryption.key_files = self.security.encryption_key_file;
        }
        set_in!(encryption, security: encryption_keys => keys);
        set_in!(limits, limits:
            messages_per_second => messages_per_second,
            message_burst => message_burst,
            abuse_close_after => abuse_close_after,
            connections_per_ip_per_second => connections_per_ip_per_second,
            connection_burst_per_ip => connection_burst_per_ip,
            max_connections_per_ip => max_connections_per_ip,
            per_ip_exempt => per_ip_exempt,
            max_connections => max_connections,
            handshake_timeout_ms => handshake_timeout_ms,
            max_rooms_per_connection => max_rooms_per_connection,
            connect_concurrency => connect_concurrency,
            message_concurrency => message_concurrency
        );
        set_opt_in!(cluster, cluster:
            cluster => url, node_id => node_id, cluster_user => user,
            cluster_password => password, cluster_token => token, cluster_creds => creds_file,
            cluster_tls_ca => tls_ca, cluster_tls_cert => tls_cert, cluster_tls_key => tls_key
        );
        set_in!(cluster, cluster:
            cluster_replicas => replicas,
            cluster_id_ttl_s => id_ttl_s,
            cluster_duplicate_window_s => duplicate_window_s,
            cluster_node_ttl_s => node_ttl_s,
            cluster_prefix => prefix
        );
        set_opt_in!(hooks, hooks:
            join_hook_url => join_hook_url, webhook_secret => webhook_secret, webhook_url => webhook_url
        );
        set_in!(hooks, hooks:
            webhook_timeout_ms => webhook_timeout_ms,
            webhook_batch_max => webhook_batch_max,
            webhook_max_attempts => webhook_max_attempts,
            join_hook_timeout_ms => join_hook_timeout_ms,
            join_hook_on_timeout => join_hook_on_timeout,
            join_hook_on_connect => join_hook_on_connect
        );
        c.validate()?;
        Ok(c)
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    if running_as_root() {
        tracing::warn!(
            "running as root: run the server as an unprivileged user (see deploy/systemd/dynamowave.service)"
        );
    }
    let listen = config.listen;
    let auth = config.auth.mode;
    let (backend, store_text) = backend(&config);
    // Open the store first: the line below promises a server that accepts connections.
    let server = dynamowave_server::Server::open(config, backend).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    if auth == dynamowave_server::config::AuthMode::None && !addr.ip().to_canonical().is_loopback()
    {
        tracing::warn!(
            %addr,
            "auth is none on a non-loopback address: anyone who reaches it may connect under any \
             name; use --auth jwt (docs/security.md)"
        );
    }
    // Watched before the line below: a SIGHUP (`systemctl reload`) right after it must not
    // kill the server, with or without TLS.
    reload_on_sighup(server.tls())?;
    if server.tls().is_some() {
        println!(
            "DynamoWave chat on wss://{addr}/ws and https://{addr}/ ({store_text}) - try: npx wscat -c wss://{addr}/ws"
        );
    } else {
        println!(
            "DynamoWave chat on ws://{addr}/ws ({store_text}) - try: npx wscat -c ws://{addr}/ws"
        );
    }
    server.serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// The store of this deployment shape, and how the start line names it: a cluster node on
/// NATS JetStream when `[cluster] url` is set, else the embedded SQLite store.
fn backend(config: &ServerConfig) -> (Box<dyn Backend>, String) {
    let cl = &config.cluster;
    match &cl.url {
        Some(url) => {
            let mut nats = NatsConfig::new(url.clone());
            if let Some(id) = &cl.node_id {
                nats.node_id = id.clone();
            }
            nats.replicas = cl.replicas;
            nats.user = cl.user.clone();
            nats.password = cl.password.clone();
            nats.token = cl.token.clone();
            nats.creds_file = cl.creds_file.clone();
            nats.tls_ca_file = cl.tls_ca.clone();
            nats.tls_cert_file = cl.tls_cert.clone();
            nats.tls_key_file = cl.tls_key.clone();
            nats.prefix = cl.prefix.clone();
            nats.id_ttl = Duration::from_secs(cl.id_ttl_s);
            nats.duplicate_window = Duration::from_secs(cl.duplicate_window_s);
            nats.node_ttl = Duration::from_secs(cl.node_ttl_s);
            nats.webhooks = config.hooks.webhook_url.is_some();
            let text = format!("cluster node {} on {url}", nats.node_id);
            (Box::new(NatsBackend::new(nats)), text)
        }
        None => {
            let e = &config.encryption;
            let sqlite = SqliteBackend::new(&config.data_dir, e.key_files.clone(), e.keys.clone())
                .with_webhooks(config.hooks.webhook_url.is_some());
            (
                Box::new(sqlite),
                format!("data in {}", config.data_dir.display()),
            )
        }
    }
}

/// SIGHUP re-reads the TLS certificate and key: new handshakes get the new certificate,
/// established connections go on; a pair that does not load is logged and the old one kept.
/// Without TLS there is nothing to reload, and the signal is only logged.
fn reload_on_sighup(tls: Option<dynamowave_server::tls::TlsFiles>) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot watch SIGHUP (TLS certificate reloads)")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match &tls {
                    Some(tls) => {
                        tls.reload_logged();
                    }
                    None => tracing::info!("SIGHUP: no TLS certificate to reload"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tls;
    Ok(())
}

/// The owner of `/proc/self` is the process's effective user.
fn running_as_root() -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

pub(crate) async fn shutdown_signal() {
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

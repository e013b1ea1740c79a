//! Server settings. Precedence: defaults < TOML file (`--config`) < `DYNAMOWAVE_*` environment
//! < command-line flags; the binary merges the last three, this file holds the first two.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `dynamowave serve` can be told. Field names are the TOML keys.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the SQLite store lives.
    pub data_dir: PathBuf,
    /// Bearer token for the management API; without one it answers loopback clients only.
    pub admin_token: Option<String>,
    /// Largest WebSocket frame; a bigger one closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Largest WebSocket message (all its frames) and management API body; over it: 1009 / 413.
    pub max_message_bytes: usize,
    /// Frames queued per connection before it counts as a slow consumer and is closed with 1013.
    pub outbound_queue: usize,
    /// How long one write to a socket may take before the connection is dropped.
    pub write_timeout_ms: u64,
    /// How long graceful shutdown waits for connections to close.
    pub shutdown_grace_ms: u64,
    /// A connection silent this long gets a WebSocket ping (any frame, pongs too, counts).
    pub ping_interval_ms: u64,
    /// A connection silent this long, pings unanswered, is closed with 1001 (API Gateway: 10 min).
    pub idle_timeout_ms: u64,
    /// Closes every connection with 1001 after this long, however active; 0 is off.
    pub max_connection_ms: u64,
    /// `[tls]`: https/wss.
    pub tls: TlsConfig,
    /// `[auth]`: who a WebSocket client is.
    pub auth: AuthConfig,
    /// `[access]`: which origins and addresses may connect.
    pub access: AccessConfig,
    /// `[limits]`: rate limits, connection caps, reserved capacity.
    pub limits: LimitsConfig,
    /// `[encryption]`: message bodies at rest.
    pub encryption: EncryptionConfig,
    /// `[cluster]`: one node of a cluster on NATS JetStream instead of the embedded store.
    pub cluster: ClusterConfig,
    /// `[hooks]`: the product's backend's say over joins.
    pub hooks: HooksConfig,
}

/// `[hooks]` (flags `--join-hook-*`, `--webhook-secret`; docs/protocol.md, "Join hook").
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HooksConfig {
    /// `http://` URL POSTed before every `join` (and `$connect` with `join-hook-on-connect`);
    /// a 2xx allows, a 4xx refuses with its `reason`.
    pub join_hook_url: Option<String>,
    /// How long the hook may take before `join-hook-on-timeout` decides.
    pub join_hook_timeout_ms: u64,
    /// What a hook that times out, cannot be reached or answers 5xx means.
    pub join_hook_on_timeout: HookFallback,
    /// Checks `$connect` too (the event `connect`, without a room).
    pub join_hook_on_connect: bool,
    /// Signs hook requests and webhook batches: `X-DynamoWave-Signature: sha256=<hex>`.
    pub webhook_secret: Option<String>,
    /// `http://` URL the events (`connect`, `message`, ...) are POSTed to, in batches.
    pub webhook_url: Option<String>,
    /// How long one webhook POST may take.
    pub webhook_timeout_ms: u64,
    /// Events per POST.
    pub webhook_batch_max: usize,
    /// Attempts of one batch before it goes to the dead-letter queue.
    pub webhook_max_attempts: u32,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            join_hook_url: None,
            join_hook_timeout_ms: 2000,
            join_hook_on_timeout: HookFallback::Deny,
            join_hook_on_connect: false,
            webhook_secret: None,
            webhook_url: None,
            webhook_timeout_ms: 5000,
            webhook_batch_max: 100,
            webhook_max_attempts: 10,
        }
    }
}

/// What an unanswered hook means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookFallback {
    Allow,
    Deny,
}

impl std::str::FromStr for HookFallback {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(HookFallback::Allow),
            "deny" => Ok(HookFallback::Deny),
            other => Err(format!(
                "join-hook-on-timeout is `allow` or `deny`, not {other:?}"
            )),
        }
    }
}

/// `[cluster]` (flags `--cluster`, `--node-id`, `--cluster-*`; docs/cluster.md). With no `url`
/// the server runs alone on its embedded SQLite store.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// `nats://HOST:PORT` or `tls://HOST:PORT`; comma-separated for several NATS servers.
    pub url: Option<String>,
    /// This node's id, unique in the cluster; a random one (printed at start) when unset.
    pub node_id: Option<String>,
    /// Replicas of the cluster's streams and buckets (3 on a three-server NATS cluster).
    pub replicas: usize,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A NATS credentials file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    /// CA certificate of `tls://` servers, when not publicly trusted.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for NATS servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long message ids are remembered for idempotent retries, in seconds.
    pub id_ttl_s: u64,
    /// JetStream's own duplicate window on the messages stream, in seconds.
    pub duplicate_window_s: u64,
    /// A node that stops heartbeating leaves the members lists after this many seconds.
    pub node_ttl_s: u64,
    /// Names the streams and buckets (`DW_MESSAGES`, ...) and subjects (`dw.msg.>`).
    pub prefix: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            url: None,
            node_id: None,
            replicas: 1,
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            id_ttl_s: 24 * 3600,
            duplicate_window_s: 120,
            node_ttl_s: 15,
            prefix: "DW".into(),
        }
    }
}

/// `[tls]` (flags `--tls-cert`, `--tls-key`, `--require-tls`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`, the listener speaks TLS (https, wss).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Refuse plaintext connections except from loopback.
    pub require: bool,
}

/// How WebSocket clients are authenticated on `$connect`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `?name=` is taken at its word (a warning is logged when not on loopback).
    #[default]
    None,
    /// A JWT is required; its `sub` is the user.
    Jwt,
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(AuthMode::None),
            "jwt" => Ok(AuthMode::Jwt),
            other => Err(format!("auth is `none` or `jwt`, not {other:?}")),
        }
    }
}

/// `[auth]` (flags `--auth`, `--jwt-secret`, `--jwt-public-key`, `--jwks`, `--jwt-leeway-s`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// HS256 shared secret.
    pub jwt_secret: Option<String>,
    /// PEM public key for EdDSA or RS256 tokens.
    pub jwt_public_key: Option<PathBuf>,
    /// A JWKS file (JSON Web Key Set); the token's `kid` picks the key.
    pub jwks: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// When set, a token's `aud` must name it (as identity providers issue tokens); when not,
    /// tokens with an `aud` are refused.
    pub audience: Option<String>,
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            jwt_secret: None,
            jwt_public_key: None,
            jwks: None,
            leeway_s: 30,
            audience: None,
            issuer: None,
        }
    }
}

/// `[access]` (flags `--allowed-origins`, `--allow-ips`, `--deny-ips`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AccessConfig {
    /// Browser origins allowed to open a WebSocket (`https://chat.example.com`). Empty: the
    /// page's own origin, and clients that send no `Origin` (non-browsers).
    pub allowed_origins: Vec<String>,
    /// When not empty, only these networks may connect (CIDR).
    pub allow_ips: Vec<ipnet::IpNet>,
    /// These networks may not connect (CIDR); checked before `allow-ips`.
    pub deny_ips: Vec<ipnet::IpNet>,
}

/// `[limits]`. Every rejection is counted in a metric.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Messages (any frame) per second per connection; 0 is no limit.
    pub messages_per_second: u32,
    /// Messages a connection may send at once above the rate.
    pub message_burst: u32,
    /// Rate-limited frames within 10 s after which the connection is closed with 1008.
    pub abuse_close_after: u32,
    /// New connections per second per source IP; 0 is no limit.
    pub connections_per_ip_per_second: u32,
    /// New connections a source IP may open at once above the rate.
    pub connection_burst_per_ip: u32,
    /// Open connections per source IP; 0 is no limit.
    pub max_connections_per_ip: usize,
    /// Networks exempt from the per-IP limits [default: 127.0.0.1/32 and ::1/128].
    pub per_ip_exempt: Vec<ipnet::IpNet>,
    /// Open connections in all; over it the upgrade answers 503. 0 is no limit.
    pub max_connections: usize,
    /// Time from TCP accept until the request headers are read (TLS handshake included); also
    /// the header-read timeout of later requests on a keep-alive connection.
    pub handshake_timeout_ms: u64,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
    /// `$connect`/`$disconnect` handled at once, reserved apart from message handling.
    pub connect_concurrency: usize,
    /// Frames handled at once across all connections (messages, joins, history...).
    pub message_concurrency: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            messages_per_second: 10,
            message_burst: 20,
            abuse_close_after: 100,
            connections_per_ip_per_second: 20,
            connection_burst_per_ip: 40,
            max_connections_per_ip: 1000,
            // A reverse proxy on the same host would make every client one IP.
            per_ip_exempt: vec![
                ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1])),
                ipnet::IpNet::from(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
            ],
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            max_rooms_per_connection: 100,
            // Low budgets make a connect burst queue, and each waiting connection holds its
            // read buffer: 64 cost ~4 KiB per idle connection in `bench idle`.
            connect_concurrency: 1024,
            message_concurrency: 1024,
        }
    }
}

/// `[encryption]` (flag `--encryption-key-file`, repeatable; `DYNAMOWAVE_ENCRYPTION_KEY`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EncryptionConfig {
    /// Files of 32 random bytes, base64; the last one encrypts new rows, all of them decrypt.
    pub key_files: Vec<PathBuf>,
    /// Keys given inline (base64), e.g. from `DYNAMOWAVE_ENCRYPTION_KEY`; after the files.
    pub keys: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("dynamowave-data"),
            admin_token: None,
            max_frame_bytes: 32 * 1024,
            max_message_bytes: 128 * 1024,
            outbound_queue: 1024,
            write_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 600_000,
            max_connection_ms: 0,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            access: AccessConfig::default(),
            limits: LimitsConfig::default(),
            encryption: EncryptionConfig::default(),
            cluster: ClusterConfig::default(),
            hooks: HooksConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// Settings for tests and benchmarks on one machine: no per-connection message rate and no
    /// per-IP limits (every client is 127.0.0.1), the rest as the defaults.
    pub fn unthrottled() -> Self {
        ServerConfig {
            limits: LimitsConfig {
                messages_per_second: 0,
                connections_per_ip_per_second: 0,
                max_connections_per_ip: 0,
                max_connections: 0,
                ..LimitsConfig::default()
            },
            ..ServerConfig::default()
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Checks values that would make the server misbehave rather than fail.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_owned()));
        if self.max_frame_bytes < 1024 {
            return bad("max-frame-bytes must be at least 1024");
        }
        if self.max_message_bytes < self.max_frame_bytes {
            return bad("max-message-bytes must be at least max-frame-bytes");
        }
        if self.ping_interval_ms == 0 || self.ping_interval_ms > self.idle_timeout_ms {
            return bad("ping-interval-ms must be between 1 and idle-timeout-ms");
        }
        if self.outbound_queue == 0 {
            return bad("outbound-queue must be at least 1");
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            return bad("admin-token must be at least 16 characters");
        }
        if let Some(url) = &self.hooks.join_hook_url
            && !url.starts_with("http://")
        {
            return bad(
                "join-hook-url must be an http:// URL (put the backend next to the server, or a TLS-terminating proxy in front of it)",
            );
        }
        if let Some(url) = &self.hooks.webhook_url
            && !url.starts_with("http://")
        {
            return bad(
                "webhook-url must be an http:// URL (put the backend next to the server, or a TLS-terminating proxy in front of it)",
            );
        }
        if self.hooks.webhook_timeout_ms == 0
            || self.hooks.webhook_batch_max == 0
            || self.hooks.webhook_max_attempts == 0
        {
            return bad(
                "webhook-timeout-ms, webhook-batch-max and webhook-max-attempts must be at least 1",
            );
        }
        if self.hooks.join_hook_timeout_ms == 0 {
            return bad("join-hook-timeout-ms must be at least 1");
        }
        if self
            .hooks
            .webhook_secret
            .as_deref()
            .is_some_and(|s| s.len() < 16)
        {
            return bad("webhook-secret must be at least 16 characters");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls-cert and tls-key go together: give both or neither");
        }
        if self.auth.mode == AuthMode::Jwt {
            let keys = [
                self.auth.jwt_secret.is_some(),
                self.auth.jwt_public_key.is_some(),
                self.auth.jwks.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                return bad("auth = jwt needs exactly one of jwt-secret, jwt-public-key or jwks");
            }
        }
        if self
            .auth
            .jwt_secret
            .as_deref()
            .is_some_and(|s| s.len() < 32)
        {
            return bad("jwt-secret must be at least 32 characters (HS256 needs a long secret)");
        }
        let cl = &self.cluster;
        if cl.url.is_some() {
            if !matches!(cl.replicas, 1..=5) {
                return bad("cluster-replicas must be between 1 and 5");
            }
            if cl.user.is_some() != cl.password.is_some() {
                return bad("cluster-user and cluster-password go together: give both or neither");
            }
            if cl.tls_cert.is_some() != cl.tls_key.is_some() {
                return bad(
                    "cluster-tls-cert and cluster-tls-key go together: give both or neither",
                );
            }
            if cl.node_ttl_s < 3 {
                return bad(
                    "cluster-node-ttl-s must be at least 3 (heartbeats go every third of it)",
                );
            }
            if cl.id_ttl_s < cl.duplicate_window_s {
                return bad("cluster-id-ttl-s must be at least cluster-duplicate-window-s");
            }
            if cl.duplicate_window_s == 0 {
                return bad("cluster-duplicate-window-s must be at least 1");
            }
            if !self.encryption.key_files.is_empty() || !self.encryption.keys.is_empty() {
                return bad(
                    "encryption keys are for the embedded store and a cluster does not use them: \
                     encrypt JetStream at rest with nats-server's `jetstream { cipher: aes, key: ... }` \
                     (docs/cluster.md), and drop the encryption keys from this node's settings",
                );
            }
        }
        let l = &self.limits;
        if l.messages_per_second > 0 && l.message_burst == 0 {
            return bad("message-burst must be at least 1 when messages-per-second is set");
        }
        if l.connections_per_ip_per_second > 0 && l.connection_burst_per_ip == 0 {
            return bad(
                "connection-burst-per-ip must be at least 1 when connections-per-ip-per-second is set",
            );
        }
        if l.handshake_timeout_ms == 0 {
            return bad("handshake-timeout-ms must be at least 1");
        }
        if l.max_rooms_per_connection == 0 {
            return bad("max-rooms-per-connection must be at least 1");
        }
        if l.connect_concurrency == 0 || l.message_concurrency == 0 {
            return bad("connect-concurrency and message-concurrency must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_only_what_it_names() {
        let c: ServerConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\nmax-frame-bytes = 4096").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_frame_bytes, 4096);
        assert_eq!(c.data_dir, ServerConfig::default().data_dir);
        assert!(
            toml::from_str::<ServerConfig>("lisen = \"x\"").is_err(),
            "typos are errors"
        );
    }

    #[test]
    fn validation_catches_nonsense() {
        let c = ServerConfig {
            max_message_bytes: 10,
            ..ServerConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(ServerConfig::default().validate().is_ok());
    }
}

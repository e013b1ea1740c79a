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

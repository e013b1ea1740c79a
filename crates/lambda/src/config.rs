//! The handler's settings, from the function's environment (deploy/aws/template.yaml sets them).

use std::time::Duration;

use dynamowave_core::protocol::Limits;

use crate::dynamo::Tables;

/// API Gateway's WebSocket limits: 32 KB frames, 128 KB messages. Announced in `connected`.
pub const API_GATEWAY_LIMITS: Limits = Limits {
    max_frame_bytes: 32 * 1024,
    max_message_bytes: 128 * 1024,
    max_rooms_per_connection: 100,
};

#[derive(Clone, Debug)]
pub struct Config {
    pub tables: Tables,
    /// `DLQ_URL`: the SQS queue that keeps posts that kept failing. Without it they are logged
    /// and dropped (a warning at start says so).
    pub dlq_url: Option<String>,
    /// `DYNAMOWAVE_CONNECTIONS_ENDPOINT`: the `@connections` base URL (a custom domain, or the
    /// local emulator). Default: `https://{domainName}/{stage}` from each event.
    pub endpoint: Option<String>,
    /// `DYNAMOWAVE_JWT_SECRET`: when set, `$connect` requires an HS256 token, as the server's
    /// `auth = jwt`.
    pub jwt_secret: Option<String>,
    /// `DYNAMOWAVE_FANOUT_CONCURRENCY` (default 64): posts in flight at once per message.
    pub fanout_concurrency: usize,
    /// `DYNAMOWAVE_POST_ATTEMPTS` (default 3): tries of one post before it is dead-lettered.
    pub post_attempts: u32,
    /// `DYNAMOWAVE_POST_BACKOFF_MS` (default 100): the first retry's wait; each next one is
    /// four times longer, with full jitter.
    pub post_backoff: Duration,
    /// `DYNAMOWAVE_MAX_ROOMS_PER_CONNECTION` (default 100).
    pub limits: Limits,
}

impl Config {
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a whole number")),
            }
        };
        let fanout_concurrency = number("DYNAMOWAVE_FANOUT_CONCURRENCY", 64)? as usize;
        if fanout_concurrency == 0 {
            return Err("DYNAMOWAVE_FANOUT_CONCURRENCY must be at least 1".into());
        }
        let post_attempts = number("DYNAMOWAVE_POST_ATTEMPTS", 3)?.clamp(1, 10) as u32;
        let mut limits = API_GATEWAY_LIMITS;
        limits.max_rooms_per_connection =
            number("DYNAMOWAVE_MAX_ROOMS_PER_CONNECTION", 100)?.max(1) as usize;
        Ok(Config {
            tables: Tables::from_env(),
            dlq_url: var("DLQ_URL"),
            endpoint: var("DYNAMOWAVE_CONNECTIONS_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_owned()),
            jwt_secret: var("DYNAMOWAVE_JWT_SECRET"),
            fanout_concurrency,
            post_attempts,
            post_backoff: Duration::from_millis(number("DYNAMOWAVE_POST_BACKOFF_MS", 100)?),
            limits,
        })
    }
}

//! The join hook (`--join-hook-url`): the product's backend allows or refuses each `join`
//! (and `$connect`, with `--join-hook-on-connect`) before it takes effect.
//!
//! The server POSTs `{"event":"join","room","user","connectionId","sourceIp"}` (`connect`
//! without `room`), signed with `--webhook-secret` when set. A 2xx answer allows. A 4xx
//! refuses: the client gets `forbidden` with the answer's `reason` (a JSON `{"reason":...}` or a
//! plain-text body). No answer within `--join-hook-timeout-ms`, a connection error or a 5xx is
//! decided by `--join-hook-on-timeout` (deny by default: a backend that is down must not open
//! rooms it would have refused).

use std::time::Duration;

use async_trait::async_trait;
use dynamowave_core::ports::{GateEvent, GateRequest, JoinGate};
use dynamowave_core::{ChatError, ErrorCode};
use serde::Serialize;

use crate::config::{HookFallback, HooksConfig};

/// The header that carries the body's HMAC-SHA256 under `--webhook-secret`.
pub const SIGNATURE_HEADER: &str = "x-dynamowave-signature";
/// Longest refusal reason passed on to the client.
const MAX_REASON: usize = 200;

/// The join hook over HTTP.
pub struct HttpJoinGate {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    fallback: HookFallback,
    on_connect: bool,
    key: Option<ring::hmac::Key>,
}

impl HttpJoinGate {
    /// The gate `hooks` configures; `None` without a `join-hook-url`.
    pub fn from_config(hooks: &HooksConfig) -> Option<Self> {
        let url = hooks.join_hook_url.clone()?;
        let timeout = Duration::from_millis(hooks.join_hook_timeout_ms);
        Some(HttpJoinGate {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("a plain HTTP client always builds"),
            url,
            timeout,
            fallback: hooks.join_hook_on_timeout,
            on_connect: hooks.join_hook_on_connect,
            key: hooks
                .webhook_secret
                .as_deref()
                .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())),
        })
    }

    /// What an unanswered or failed hook means, by the configured fallback.
    fn unanswered(&self, what: &str) -> Result<(), ChatError> {
        metrics::counter!("dynamowave_join_hook_unanswered_total").increment(1);
        match self.fallback {
            HookFallback::Allow => {
                tracing::warn!(url = %self.url, "join hook {what}: allowed (join-hook-on-timeout = allow)");
                Ok(())
            }
            HookFallback::Deny => {
                tracing::warn!(url = %self.url, "join hook {what}: refused (join-hook-on-timeout = deny)");
                Err(ChatError::new(
                    ErrorCode::Forbidden,
                    "the join could not be checked right now and was refused; try again in a moment",
                ))
            }
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HookBody<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    user: &'a str,
    connection_id: &'a str,
    source_ip: &'a str,
}

/// `sha256=<hex>` of `body` under `key`.
pub fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[async_trait]
impl JoinGate for HttpJoinGate {
    async fn check(&self, request: GateRequest<'_>) -> Result<(), ChatError> {
        let body = HookBody {
            event: match request.event {
                GateEvent::Join => "join",
                GateEvent::Connect => "connect",
            },
            room: request.room.map(|r| r.as_str()),
            user: request.user.as_str(),
            connection_id: request.connection.as_str(),
            source_ip: request.source_ip,
        };
        let body = serde_json::to_vec(&body).expect("plain strings serialize");
        let mut post = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.key {
            post = post.header(SIGNATURE_HEADER, signature(key, &body));
        }
        let started = std::time::Instant::now();
        let answer = post.body(body).send().await;
        metrics::histogram!("dynamowave_join_hook_seconds").record(started.elapsed());
        let response = match answer {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return self.unanswered(&format!("took over {} ms", self.timeout.as_millis()));
            }
            Err(e) => return self.unanswered(&format!("failed ({e})")),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_server_error() {
            return self.unanswered(&format!("answered {status}"));
        }
        // A refusal: its reason, as JSON `{"reason": ...}` or the text itself.
        let text = response.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
            .unwrap_or(text);
        let mut reason = reason.trim().to_owned();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        metrics::counter!("dynamowave_join_hook_refused_total").increment(1);
        let what = match (request.event, request.room) {
            (GateEvent::Join, Some(room)) => format!("joining {room}"),
            _ => "connecting".to_owned(),
        };
        Err(ChatError::new(
            ErrorCode::Forbidden,
            if reason.is_empty() {
                format!("{what} was refused")
            } else {
                format!("{what} was refused: {reason}")
            },
        ))
    }

    fn checks_connect(&self) -> bool {
        self.on_connect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

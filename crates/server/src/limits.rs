//! `[limits]`: rate limits, connection caps and reserved capacity (docs/security.md).
//!
//! - [`Limiter::admit`] runs in the upgrade handler, before the WebSocket upgrade: the global
//!   maximum of open connections, then per source IP the maximum of open connections and the
//!   rate of new ones (a governor token bucket per address). A refusal is an HTTP 429 (rate) or
//!   503 (capacity) with a JSON body naming the limit and its setting. An admitted connection
//!   holds a [`ConnectionPermit`]; dropping it (at the end of the connection task, or with the
//!   upgrade callback when the upgrade fails) gives the counts back.
//! - [`FrameGate`] is one connection's frame rate: a governor direct limiter (one atomic, no
//!   allocation) and a strike count for closing abusers with 1008.
//! - Two semaphores keep capacity apart: [`Limiter::connect_permit`] for `$connect` and
//!   `$disconnect`, [`Limiter::message_permit`] around the handling of every other frame, so a
//!   message flood cannot hold up logins or clean-up. (The SQLite writer has the matching
//!   priority lane for connection-table commands.)
//!
//! Every refusal is counted: `dynamowave_rate_limited_total{scope=...}` and
//! `dynamowave_abuse_closes_total`; `dynamowave_connections_open` is the open-connection gauge.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dynamowave_core::{ChatError, ErrorCode};
use governor::clock::{Clock, MonotonicClock};
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use metrics::{Counter, Gauge};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::LimitsConfig;

/// Rate-limited frames are counted over this window to decide on an abuse close.
pub const ABUSE_WINDOW: Duration = Duration::from_secs(10);
/// The per-IP rate limiter forgets addresses whose bucket is full again every this many
/// admissions, so a stream of distinct addresses cannot grow its map without bound.
const PRUNE_EVERY: u64 = 4096;

type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, MonotonicClock>;
type KeyedLimiter = RateLimiter<IpAddr, HashMapStateStore<IpAddr>, MonotonicClock>;

/// The server-wide state of the limits; one per server, in [`crate::AppState`].
pub struct Limiter {
    config: LimitsConfig,
    /// Per-connection frame quota; `None` when `messages-per-second` is 0.
    frame_quota: Option<Quota>,
    /// Open connections (admitted, not yet ended), exempt addresses included.
    open: AtomicUsize,
    /// Open connections per source address, when `max-connections-per-ip` is set. Addresses
    /// leave the map when their last connection ends.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per source address; `None` when `connections-per-ip-per-second` is 0.
    ip_rate: Option<KeyedLimiter>,
    admissions: AtomicU64,
    connect: Semaphore,
    messages: Semaphore,
    counters: Counters,
}

/// Metric handles, registered once (the recorder is installed before the server builds this).
struct Counters {
    message: Counter,
    connection_rate: Counter,
    connections_per_ip: Counter,
    max_connections: Counter,
    abuse_closes: Counter,
    open: Gauge,
}

impl Counters {
    fn new() -> Self {
        const RATE_LIMITED: &str = "dynamowave_rate_limited_total";
        metrics::describe_counter!(
            RATE_LIMITED,
            "Requests refused by a limit, by scope: message (a frame over the connection's rate), \
             connection_rate, connections_per_ip, max_connections (upgrades refused), rooms (a join \
             over max-rooms-per-connection)"
        );
        metrics::describe_counter!(
            "dynamowave_abuse_closes_total",
            "Connections closed with 1008 for sending too many frames over their rate"
        );
        metrics::describe_gauge!(
            "dynamowave_connections_open",
            "WebSocket connections admitted and not yet ended"
        );
        Counters {
            message: metrics::counter!(RATE_LIMITED, "scope" => "message"),
            connection_rate: metrics::counter!(RATE_LIMITED, "scope" => "connection_rate"),
            connections_per_ip: metrics::counter!(RATE_LIMITED, "scope" => "connections_per_ip"),
            max_connections: metrics::counter!(RATE_LIMITED, "scope" => "max_connections"),
            abuse_closes: metrics::counter!("dynamowave_abuse_closes_total"),
            open: metrics::gauge!("dynamowave_connections_open"),
        }
    }
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    // `validate` requires a burst when the rate is set; a burst of 0 would mean the rate alone.
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// Whole milliseconds, rounded up: waiting `retryAfterMs` must be enough.
fn ceil_ms(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(1_000_000) as u64).max(1)
}

impl Limiter {
    pub fn new(config: &LimitsConfig) -> Self {
        let ip_rate = quota(
            config.connections_per_ip_per_second,
            config.connection_burst_per_ip,
        )
        .map(|q| RateLimiter::new(q, HashMapStateStore::default(), MonotonicClock));
        Limiter {
            frame_quota: quota(config.messages_per_second, config.message_burst),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            ip_rate,
            admissions: AtomicU64::new(0),
            // `validate` refuses 0; a semaphore of 0 would block every connection forever.
            connect: Semaphore::new(config.connect_concurrency.max(1)),
            messages: Semaphore::new(config.message_concurrency.max(1)),
            counters: Counters::new(),
            config: config.clone(),
        }
    }

    /// Connections admitted and not yet ended.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Decides whether a new connection from `ip` may be upgraded. Checks the capacities first,
    /// so a refused attempt does not spend a token of the address's rate.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let ip = ip.to_canonical();
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        // From here on, dropping the permit (on any refusal too) gives the count back.
        let mut permit = ConnectionPermit {
            limiter: self.clone(),
            ip: None,
        };
        self.counters.open.increment(1.0);
        let max = self.config.max_connections;
        if max > 0 && before >= max {
            self.counters.max_connections.increment(1);
            return Err(Refusal::MaxConnections { max });
        }
        let max_per_ip = self.config.max_connections_per_ip;
        if (max_per_ip == 0 && self.ip_rate.is_none()) || self.is_exempt(ip) {
            return Ok(permit);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if max_per_ip > 0 && per_ip.get(&ip).copied().unwrap_or(0) >= max_per_ip {
            self.counters.connections_per_ip.increment(1);
            return Err(Refusal::ConnectionsPerIp {
                ip,
                max: max_per_ip,
            });
        }
        if let Some(rate) = &self.ip_rate {
            if let Err(not_until) = rate.check_key(&ip) {
                self.counters.connection_rate.increment(1);
                let retry_after = not_until.wait_time_from(rate.clock().now());
                return Err(Refusal::ConnectionRate {
                    ip,
                    per_second: self.config.connections_per_ip_per_second,
                    burst: self.config.connection_burst_per_ip,
                    retry_after_ms: ceil_ms(retry_after),
                });
            }
            if self.admissions.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
                rate.retain_recent();
                rate.shrink_to_fit();
            }
        }
        if max_per_ip > 0 {
            *per_ip.entry(ip).or_insert(0) += 1;
            permit.ip = Some(ip);
        }
        Ok(permit)
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.config
            .per_ip_exempt
            .iter()
            .any(|net| net.contains(&ip))
    }

    fn release(&self, ip: Option<IpAddr>) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.counters.open.decrement(1.0);
        let Some(ip) = ip else { return };
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// A permit from the `$connect`/`$disconnect` budget (`connect-concurrency`), which frame
    /// handling never uses.
    pub async fn connect_permit(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed, so this always gets a permit.
        self.connect.acquire().await.ok()
    }

    /// A permit from the frame-handling budget (`message-concurrency`), held while one frame
    /// is dispatched.
    pub async fn message_permit(&self) -> Option<SemaphorePermit<'_>> {
        self.messages.acquire().await.ok()
    }

    /// A new connection's frame rate limiter.
    pub fn frame_gate(&self) -> FrameGate {
        FrameGate {
            limiter: self
                .frame_quota
                .map(|q| RateLimiter::direct_with_clock(q, MonotonicClock)),
            strikes: 0,
            window_start: None,
            close_after: self.config.abuse_close_after,
        }
    }

    /// The `error` a rate-limited frame gets; counts it.
    pub fn rate_limited(&self, retry_after_ms: u64) -> ChatError {
        self.counters.message.increment(1);
        ChatError::new(
            ErrorCode::RateLimited,
            format!(
                "too many frames: a connection may send {} per second, with bursts of {} \
                 (messages-per-second, message-burst); this one was not handled, send it again \
                 after retryAfterMs",
                self.config.messages_per_second, self.config.message_burst
            ),
        )
        .with_retry_after(retry_after_ms)
    }

    /// The close reason for an abuser (at most 123 bytes, as close reasons must be); counts it.
    pub fn abuse_close_reason(&self) -> String {
        self.counters.abuse_closes.increment(1);
        format!(
            "rate limit: {} frames over {}/s (burst {}) within {} s",
            self.config.abuse_close_after,
            self.config.messages_per_second,
            self.config.message_burst,
            ABUSE_WINDOW.as_secs()
        )
    }
}

/// An admitted connection's share of the counts; given back when dropped.
pub struct ConnectionPermit {
    limiter: Arc<Limiter>,
    /// The address counted in `per_ip`, if it was.
    ip: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limiter.release(self.ip);
    }
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `max-connections`: HTTP 503.
    MaxConnections { max: usize },
    /// `max-connections-per-ip`: HTTP 503.
    ConnectionsPerIp { ip: IpAddr, max: usize },
    /// `connections-per-ip-per-second` / `connection-burst-per-ip`: HTTP 429 with Retry-After.
    ConnectionRate {
        ip: IpAddr,
        per_second: u32,
        burst: u32,
        retry_after_ms: u64,
    },
}

impl Refusal {
    /// The setting that would have to be raised.
    pub fn setting(&self) -> &'static str {
        match self {
            Refusal::MaxConnections { .. } => "max-connections",
            Refusal::ConnectionsPerIp { .. } => "max-connections-per-ip",
            Refusal::ConnectionRate { .. } => "connections-per-ip-per-second",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::MaxConnections { max } => format!(
                "the server has reached its limit of {max} open connections (max-connections); \
                 try again later"
            ),
            Refusal::ConnectionsPerIp { ip, max } => format!(
                "too many open connections from {ip}: at most {max} per address \
                 (max-connections-per-ip); close one or try again later"
            ),
            Refusal::ConnectionRate {
                ip,
                per_second,
                burst,
                retry_after_ms,
            } => format!(
                "too many new connections from {ip}: at most {per_second} per second, with bursts \
                 of {burst} (connections-per-ip-per-second, connection-burst-per-ip); try again \
                 in {retry_after_ms} ms"
            ),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, retry_after_ms) = match &self {
            Refusal::ConnectionRate { retry_after_ms, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                Some(*retry_after_ms),
            ),
            // How long until someone else disconnects is anyone's guess: no Retry-After.
            Refusal::MaxConnections { .. } | Refusal::ConnectionsPerIp { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                None,
            ),
        };
        let mut body = serde_json::json!({
            "code": code,
            "message": self.message(),
            "limit": self.setting(),
        });
        let mut response = match retry_after_ms {
            Some(ms) => {
                body["retryAfterMs"] = ms.into();
                let mut response = (status, Json(body)).into_response();
                // Whole seconds, rounded up.
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(ms.div_ceil(1000).max(1)),
                );
                response
            }
            None => (status, Json(body)).into_response(),
        };
        // A refused client should not keep the TCP connection for another try.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// One connection's frame rate: `messages-per-second` with `message-burst`, and the abuse close
/// after `abuse-close-after` rate-limited frames within [`ABUSE_WINDOW`].
pub struct FrameGate {
    limiter: Option<DirectLimiter>,
    strikes: u32,
    window_start: Option<<MonotonicClock as Clock>::Instant>,
    close_after: u32,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Pass,
    /// Do not handle it; answer `rate_limited` with this `retryAfterMs`.
    Limited { retry_after_ms: u64 },
    /// Too many rate-limited frames: close the connection with 1008.
    Abuse,
}

impl FrameGate {
    /// Takes one frame's token (text and binary frames; pings, pongs and close frames are not
    /// limited).
    pub fn check(&mut self) -> Verdict {
        let Some(limiter) = &self.limiter else {
            return Verdict::Pass;
        };
        let Err(not_until) = limiter.check() else {
            return Verdict::Pass;
        };
        let now = limiter.clock().now();
        if self.close_after > 0 {
            match self.window_start {
                Some(start) if now.duration_since(start) < ABUSE_WINDOW => {
                    self.strikes += 1;
                }
                _ => {
                    self.window_start = Some(now);
                    self.strikes = 1;
                }
            }
            if self.strikes >= self.close_after {
                return Verdict::Abuse;
            }
        }
        Verdict::Limited {
            retry_after_ms: ceil_ms(not_until.wait_time_from(now)),
        }
    }
}

/// The `id` of a frame, when it is a JSON object whose `id` is a string: echoed in the
/// `rate_limited` error without decoding the frame any further.
pub fn frame_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
    }
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<IdOnly<'_>>(text)
        .ok()?
        .id
        .map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut LimitsConfig)) -> Arc<Limiter> {
        let mut config = LimitsConfig {
            per_ip_exempt: vec![],
            ..LimitsConfig::default()
        };
        f(&mut config);
        Arc::new(Limiter::new(&config))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_passes_then_frames_are_limited_then_the_abuser_is_closed() {
        let limiter = limits(|c| {
            c.messages_per_second = 1;
            c.message_burst = 3;
            c.abuse_close_after = 4;
        });
        let mut gate = limiter.frame_gate();
        for _ in 0..3 {
            assert_eq!(gate.check(), Verdict::Pass);
        }
        for _ in 0..3 {
            match gate.check() {
                Verdict::Limited { retry_after_ms } => {
                    assert!((1..=1000).contains(&retry_after_ms))
                }
                other => panic!("expected Limited, got {other:?}"),
            }
        }
        assert_eq!(gate.check(), Verdict::Abuse);
    }

    #[test]
    fn zero_means_no_frame_limit() {
        let limiter = limits(|c| c.messages_per_second = 0);
        let mut gate = limiter.frame_gate();
        for _ in 0..10_000 {
            assert_eq!(gate.check(), Verdict::Pass);
        }
    }

    #[test]
    fn per_ip_capacity_is_released_when_a_permit_drops() {
        let limiter = limits(|c| {
            c.connections_per_ip_per_second = 0;
            c.max_connections_per_ip = 2;
        });
        let a = limiter.admit(ip("192.0.2.1")).unwrap();
        let _b = limiter.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            limiter.admit(ip("192.0.2.1")).err().unwrap().setting(),
            "max-connections-per-ip"
        );
        // Another address has its own count; IPv4-mapped IPv6 is the same address.
        let _c = limiter.admit(ip("192.0.2.2")).unwrap();
        assert!(limiter.admit(ip("::ffff:192.0.2.1")).is_err());
        drop(a);
        let _d = limiter.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(limiter.open_connections(), 3);
    }

    #[test]
    fn exempt_networks_skip_the_per_ip_limits_but_not_the_global_one() {
        let limiter = limits(|c| {
            c.max_connections_per_ip = 1;
            c.max_connections = 3;
            c.per_ip_exempt = vec!["10.0.0.0/8".parse().unwrap()];
        });
        let held: Vec<_> = (0..3)
            .map(|_| limiter.admit(ip("10.1.2.3")).unwrap())
            .collect();
        assert_eq!(
            limiter.admit(ip("10.1.2.3")).err().unwrap(),
            Refusal::MaxConnections { max: 3 }
        );
        drop(held);
        assert_eq!(limiter.open_connections(), 0);
        assert!(limiter.per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn the_connection_rate_answers_429_with_retry_after() {
        let limiter = limits(|c| {
            c.connections_per_ip_per_second = 1;
            c.connection_burst_per_ip = 2;
            c.max_connections_per_ip = 0;
        });
        let _a = limiter.admit(ip("192.0.2.9")).unwrap();
        let _b = limiter.admit(ip("192.0.2.9")).unwrap();
        let refusal = limiter.admit(ip("192.0.2.9")).err().unwrap();
        assert!(
            matches!(refusal, Refusal::ConnectionRate { retry_after_ms, .. } if (1..=1000).contains(&retry_after_ms))
        );
        let response = refusal.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn ids_are_read_only_from_json_objects_with_string_ids() {
        assert_eq!(
            frame_id(r#"{"action":"x","id":"m1"}"#).as_deref(),
            Some("m1")
        );
        assert_eq!(frame_id(r#"{"id":"a\"b"}"#).as_deref(), Some("a\"b"));
        assert_eq!(frame_id(r#"{"id":5}"#), None);
        assert_eq!(frame_id(r#"{"id":null}"#), None);
        assert_eq!(frame_id("hello"), None);
        assert_eq!(frame_id(r#"["id"]"#), None);
    }

    #[test]
    fn abuse_reasons_fit_in_a_close_frame() {
        let limiter = limits(|c| {
            c.messages_per_second = u32::MAX;
            c.message_burst = u32::MAX;
            c.abuse_close_after = u32::MAX;
        });
        assert!(limiter.abuse_close_reason().len() <= 123);
    }
}

//! Domain types. Each one is validated when it is made, so the rest of the code can trust it.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::ChatError;

/// The room compat-mode connections live in, as the original had a single broadcast channel.
pub const DEFAULT_ROOM: &str = "general";

/// Longest room name; keeps keys small in every store (DynamoDB, JetStream subjects, SQLite).
pub const MAX_ROOM_LEN: usize = 64;
/// Longest user name accepted from `?name=`.
pub const MAX_USER_LEN: usize = 64;
/// Longest client message id (the idempotency key).
pub const MAX_MESSAGE_ID_LEN: usize = 128;

/// A room name matching `[A-Za-z0-9_.-]{1,64}`: safe as a JetStream subject token, a DynamoDB
/// key and a URL path segment without escaping.
#[derive(Clone, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(Arc<str>);

/// Rooms are compared for every delivery (is the connection still in it?); ids that share their
/// allocation, like every use of the default room, compare without reading the names.
impl PartialEq for RoomId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

// Hashes the name, as the derived impl would: equal ids have equal names.
impl std::hash::Hash for RoomId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl RoomId {
    pub fn parse(name: &str) -> Result<Self, ChatError> {
        let valid_len = (1..=MAX_ROOM_LEN).contains(&name.len());
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid_len && valid_chars {
            Ok(RoomId(name.into()))
        } else {
            Err(ChatError::bad_request(format!(
                "invalid room name {name:?}: use 1 to {MAX_ROOM_LEN} characters from A-Z a-z 0-9 _ . -"
            )))
        }
    }

    /// The default room; every call shares one allocation.
    pub fn default_room() -> Self {
        static DEFAULT: std::sync::LazyLock<RoomId> =
            std::sync::LazyLock::new(|| RoomId(DEFAULT_ROOM.into()));
        DEFAULT.clone()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RoomId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", self.0)
    }
}

/// Position of a message in its room's log. The first message of a room has seq 1; 0 means
/// "before the first message" (an empty room's head, or `after: 0` to replay everything).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection id in API Gateway's style: 16 URL-safe characters, random, never reused.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionId(Arc<str>);

impl ConnectionId {
    pub fn generate() -> Self {
        ConnectionId(random_token(16).into())
    }

    /// Accepts an id from a URL or a store row; it only has to be a plausible token.
    pub fn parse(id: &str) -> Result<Self, ChatError> {
        if (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'.'))
        {
            Ok(ConnectionId(id.into()))
        } else {
            Err(ChatError::bad_request(format!(
                "invalid connection id {id:?}"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}

/// Who sent a message. Without authentication it comes from `?name=`; with it, from the verified
/// identity, never from a frame.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserName(Arc<str>);

impl UserName {
    pub fn parse(name: &str) -> Result<Self, ChatError> {
        let trimmed = name.trim();
        if trimmed.is_empty()
            || trimmed.len() > MAX_USER_LEN
            || trimmed.chars().any(char::is_control)
        {
            return Err(ChatError::bad_request(format!(
                "invalid user name {name:?}: use 1 to {MAX_USER_LEN} bytes of printable characters"
            )));
        }
        Ok(UserName(trimmed.into()))
    }

    /// A name for a client that gave none, like `guest-k3x9`.
    pub fn guest() -> Self {
        UserName(format!("guest-{}", random_token(4).to_ascii_lowercase()).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserName({})", self.0)
    }
}

/// A random alphanumeric token, used for connection ids and server-assigned message ids.
pub fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Milliseconds since the Unix epoch: the `ts` of every message.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-27T14:19:18.123Z`, the form API Gateway uses for `connectedAt`.
pub fn rfc3339_ms(ms: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomId::parse("general").is_ok());
        assert!(RoomId::parse("a.b-c_D9").is_ok());
        assert!(RoomId::parse(&"x".repeat(64)).is_ok());
        assert!(RoomId::parse(&"x".repeat(65)).is_err());
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("has space").is_err());
        assert!(RoomId::parse("slash/room").is_err());
        assert!(RoomId::parse("émoji").is_err());
    }

    #[test]
    fn user_names() {
        assert_eq!(UserName::parse(" alice ").unwrap().as_str(), "alice");
        assert!(UserName::parse("").is_err());
        assert!(UserName::parse("a\nb").is_err());
        assert!(UserName::guest().as_str().starts_with("guest-"));
    }

    #[test]
    fn connection_ids_are_unique_and_parse_back() {
        let a = ConnectionId::generate();
        let b = ConnectionId::generate();
        assert_ne!(a, b);
        assert_eq!(ConnectionId::parse(a.as_str()).unwrap(), a);
        assert!(ConnectionId::parse("../etc").is_err());
    }

    #[test]
    fn timestamps_format_like_api_gateway() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}

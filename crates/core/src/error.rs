//! Errors a client can cause or meet, grouped by what they turn into on the wire: the `code` of
//! an `error` frame, a WebSocket close code, and an HTTP status for the management API.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame. Callers match on it; the message says what to fix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, lacks a field, or a field has the wrong type or value.
    BadRequest,
    /// The room has never been created (no one joined it and nothing was posted to it).
    NotFound,
    /// The connection sent to or left a room it has not joined.
    NotJoined,
    /// The connection named in a management call is gone (API Gateway's 410).
    Gone,
    /// A frame, message or body is over the configured limit.
    TooLarge,
    /// Too many requests; `retryAfterMs` says when to try again.
    RateLimited,
    /// No or invalid credentials.
    Unauthorized,
    /// Valid credentials that do not allow this.
    Forbidden,
    /// The store could not commit; nothing was saved. Retry with the same id.
    Unavailable,
    /// A bug on our side.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Gone => "gone",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The WebSocket close code used when this error ends a connection (RFC 6455 §7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::TooLarge => close_code::MESSAGE_TOO_BIG,
            ErrorCode::RateLimited | ErrorCode::Unavailable => close_code::TRY_AGAIN_LATER,
            ErrorCode::Internal => close_code::INTERNAL_ERROR,
            ErrorCode::BadRequest
            | ErrorCode::NotFound
            | ErrorCode::NotJoined
            | ErrorCode::Gone
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden => close_code::POLICY_VIOLATION,
        }
    }

    /// The HTTP status the management API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::NotJoined => 409,
            ErrorCode::Gone => 410,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the server uses.
pub mod close_code {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation (bad credentials, abuse).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or message over the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Overloaded or too slow: reconnect later and resume from history.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// An error with a code and a message that tells the user what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ChatError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    pub fn with_retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

/// A store failed. The request it served was not applied; retrying it is safe.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is closing or closed (graceful shutdown).
    #[error("the store is shut down")]
    Closed,
    /// The backend failed (I/O, SQLite, network). The text is for logs, not for clients.
    #[error("store backend failed: {0}")]
    Backend(String),
    /// The store refused the request as the client sent it (an edit of someone else's
    /// message, a reaction to a message that does not exist): nothing was changed, and a retry
    /// would be refused too. The error says what to fix and goes to the client as it is.
    #[error("{0}")]
    Refused(ChatError),
}

impl From<StoreError> for ChatError {
    /// The backend's own text stays in the server's log (the adapter logs it); clients learn
    /// only what to do.
    fn from(e: StoreError) -> Self {
        let message = match e {
            StoreError::Refused(e) => return e,
            StoreError::Closed => {
                "the server is shutting down and nothing was changed; retry (a message with the same id)"
            }
            StoreError::Backend(_) => {
                "the store is unavailable and nothing was changed; retry (a message with the same id)"
            }
        };
        ChatError::new(ErrorCode::Unavailable, message).with_retry_after(1000)
    }
}

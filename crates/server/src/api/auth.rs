//! The management API's guard: the admin bearer token when one is configured, otherwise
//! loopback clients only (so an unconfigured server never exposes it to the network).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dynamowave_core::{ChatError, ErrorCode};

use super::ApiError;
use crate::app::AppState;

pub async fn require_admin(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match &state.config.admin_token {
        Some(token) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => {
                    next.run(request).await
                }
                Some(_) => ApiError(ChatError::new(
                    ErrorCode::Unauthorized,
                    "the admin token is wrong",
                ))
                .into_response(),
                None => ApiError(ChatError::new(
                    ErrorCode::Unauthorized,
                    "send Authorization: Bearer <admin token> (the server's --admin-token)",
                ))
                .into_response(),
            }
        }
        None if peer.ip().is_loopback() => next.run(request).await,
        None => ApiError(ChatError::new(
            ErrorCode::Forbidden,
            "without --admin-token the management API answers loopback clients only",
        ))
        .into_response(),
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
    }
}

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
        // to_canonical: an IPv4 client of a dual-stack listener shows up as ::ffff:127.0.0.1.
        None if peer.ip().to_canonical().is_loopback() => next.run(request).await,
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
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use crate::app::{AppState, router};
    use crate::config::ServerConfig;

    async fn status(admin_token: Option<&str>, peer: &str, bearer: Option<&str>) -> StatusCode {
        let config = ServerConfig {
            admin_token: admin_token.map(str::to_owned),
            ..ServerConfig::default()
        };
        let state = AppState::for_tests(
            config,
            tokio::sync::watch::channel(false).1,
            std::sync::Arc::new(dynamowave_core::memory::MemoryLifecycle),
        );
        let peer: SocketAddr = peer.parse().unwrap();
        let app = router(state).layer(MockConnectInfo(peer));
        let mut request =
            Request::post("/rooms/r/messages").header("content-type", "application/json");
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = app
            .oneshot(request.body(Body::from(r#"{"data":"x"}"#)).unwrap())
            .await
            .unwrap();
        response.status()
    }

    #[tokio::test]
    async fn without_a_token_only_loopback_clients_get_in() {
        assert_eq!(
            status(None, "127.0.0.1:5000", None).await,
            StatusCode::CREATED
        );
        assert_eq!(status(None, "[::1]:5000", None).await, StatusCode::CREATED);
        assert_eq!(
            status(None, "[::ffff:127.0.0.1]:5000", None).await,
            StatusCode::CREATED
        );
        assert_eq!(
            status(None, "192.0.2.7:5000", None).await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn with_a_token_everyone_needs_it() {
        let token = Some("0123456789abcdef-admin");
        assert_eq!(
            status(token, "192.0.2.7:5000", token).await,
            StatusCode::CREATED
        );
        assert_eq!(
            status(token, "127.0.0.1:5000", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(token, "192.0.2.7:5000", Some("0123456789abcdef-admiN")).await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn constant_time_eq() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
    }
}

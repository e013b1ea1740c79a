//! The WebSocket handshake of `GET /ws` (RFC 6455 §4.2).
//!
//! Done here rather than by axum's `WebSocketUpgrade` so that the connection task owns the
//! upgraded socket: a [`Socket`] is tungstenite's stream over hyper's upgraded connection, and
//! the gateway writes the fan-out's encoded frames to it directly, many per write
//! (`crate::wire`), while tungstenite reads and answers the client's frames. The checks are
//! axum's (and RFC 6455's): 400 with what is missing for a request that is not a WebSocket
//! handshake, 426 for a connection that cannot be upgraded.

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

/// A WebSocket connection after the handshake.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A valid WebSocket handshake request, not answered yet.
pub struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request to `/ws` is not a WebSocket handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// A header the handshake needs is missing or wrong: 400 with what to send.
    BadRequest(&'static str),
    /// The connection cannot switch protocols (not HTTP/1.1): 426.
    NotUpgradable,
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            HandshakeError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            HandshakeError::NotUpgradable => (
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded to a WebSocket: use HTTP/1.1",
            ),
        };
        let body = serde_json::json!({ "code": "bad_request", "message": message });
        (status, axum::Json(body)).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = HandshakeError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let key = check(&parts.headers)?.clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        Ok(Handshake { key, on_upgrade })
    }
}

/// The handshake's headers; returns `Sec-WebSocket-Key`.
fn check(headers: &HeaderMap) -> Result<&HeaderValue, HandshakeError> {
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(HandshakeError::BadRequest(
            "not a WebSocket handshake: the Connection header must include \"upgrade\"",
        ));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err(HandshakeError::BadRequest(
            "not a WebSocket handshake: the Upgrade header must be \"websocket\"",
        ));
    }
    if !has_token(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(HandshakeError::BadRequest(
            "unsupported WebSocket version: send Sec-WebSocket-Version: 13",
        ));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::BadRequest(
            "not a WebSocket handshake: Sec-WebSocket-Key is missing",
        ))
}

/// The subprotocols the client offered (`Sec-WebSocket-Protocol`, comma-separated, any number
/// of headers), trimmed; values that are not text are skipped.
pub fn requested_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

impl Handshake {
    /// Answers 101 Switching Protocols (with `protocol` as `Sec-WebSocket-Protocol` when
    /// given) and, once hyper hands the connection over, runs `serve` on the socket.
    pub fn accept<F, Fut>(
        self,
        protocol: Option<&'static str>,
        config: WebSocketConfig,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    // A task of its own: this task's state keeps `serve`'s captures beside the
                    // future made of them, and every open connection would carry both.
                    tokio::spawn(serve(socket));
                }
                Err(e) => tracing::debug!(error = %e, "the WebSocket upgrade did not complete"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = derive_accept_key(self.key.as_bytes());
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::try_from(accept).expect("base64 is a valid header value"),
        );
        if let Some(protocol) = protocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const HANDSHAKE: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_browser_handshake_passes() {
        assert_eq!(
            check(&headers(&HANDSHAKE)).unwrap(),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        // RFC 6455 §1.3's example key and accept value.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn each_missing_header_is_named() {
        for (i, needle) in ["Connection", "Upgrade", "Version", "Key"]
            .iter()
            .enumerate()
        {
            let mut pairs = HANDSHAKE.to_vec();
            pairs.remove(i);
            match check(&headers(&pairs)) {
                Err(HandshakeError::BadRequest(message)) => {
                    assert!(message.contains(needle), "{message}")
                }
                other => panic!("without {needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn protocols_are_split_and_trimmed() {
        let map = headers(&[
            (
                "sec-websocket-protocol",
                "dynamowave.v1, dynamowave.token.x",
            ),
            ("sec-websocket-protocol", " other ,"),
        ]);
        let offered: Vec<_> = requested_protocols(&map).collect();
        assert_eq!(offered, ["dynamowave.v1", "dynamowave.token.x", "other"]);
    }
}

//! The join hook against a real local HTTP receiver: it allows, refuses with a reason, stalls
//! past the timeout and fails; `--join-hook-on-timeout` decides the last two; with
//! `--join-hook-on-connect` it can refuse the upgrade; requests are signed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{TestServer, raw_upgrade, until};
use dynamowave_core::ErrorCode;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;
use dynamowave_server::config::{HookFallback, HooksConfig};
use dynamowave_server::hooks::{SIGNATURE_HEADER, signature};

const SECRET: &str = "a-hook-secret-of-some-length";

/// What the receiver was asked, with whether the signature matched.
type Seen = Arc<Mutex<Vec<(serde_json::Value, bool)>>>;

/// A backend on 127.0.0.1:0: room `open` is allowed, `secret` refused with a reason, `slow`
/// answers after 1.5 s, `broken` answers 500; a `connect` of `mallory` is refused.
async fn backend() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = recorded.clone();
            async move {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
                let signed = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok())
                    == Some(signature(&key, &body).as_str());
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
                seen.lock().unwrap().push((request.clone(), signed));
                let answer: Response = match (request["event"].as_str(), request["room"].as_str()) {
                    (Some("connect"), _) if request["user"] == "mallory" => {
                        (StatusCode::FORBIDDEN, "banned for spam").into_response()
                    }
                    (Some("join"), Some("secret")) => (
                        StatusCode::FORBIDDEN,
                        axum::Json(serde_json::json!({"reason": "members only"})),
                    )
                        .into_response(),
                    (Some("join"), Some("slow")) => {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        StatusCode::NO_CONTENT.into_response()
                    }
                    (Some("join"), Some("broken")) => {
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                    _ => StatusCode::NO_CONTENT.into_response(),
                };
                answer
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn server(url: &str, on_timeout: HookFallback, on_connect: bool) -> TestServer {
    TestServer::start_with(ServerConfig {
        hooks: HooksConfig {
            join_hook_url: Some(url.to_owned()),
            join_hook_timeout_ms: 500,
            join_hook_on_timeout: on_timeout,
            join_hook_on_connect: on_connect,
            webhook_secret: Some(SECRET.into()),
            ..HooksConfig::default()
        },
        ..ServerConfig::unthrottled()
    })
    .await
}

/// Joins `room` and returns `Ok(())` for `joined`, or the error's code and message.
async fn try_join(
    c: &mut dynamowave_client::Client,
    room: &str,
) -> Result<(), (ErrorCode, String)> {
    c.join(room, None).await.unwrap();
    let (frame, _) = until(c, |f| {
        matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
    })
    .await;
    match frame {
        ServerFrame::Joined { .. } => Ok(()),
        ServerFrame::Error { code, message, .. } => Err((code, message)),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn the_backend_allows_refuses_and_a_silent_one_is_denied() {
    let (url, seen) = backend().await;
    let server = server(&url, HookFallback::Deny, false).await;
    let mut ann = server.v1("ann").await;
    assert_eq!(try_join(&mut ann, "open").await, Ok(()));
    let (code, message) = try_join(&mut ann, "secret").await.unwrap_err();
    assert_eq!(code, ErrorCode::Forbidden);
    assert_eq!(message, "joining secret was refused: members only");
    // Refused: not a member, so sending there is `not_joined`.
    ann.send_message("secret", "x", "m1").await.unwrap();
    let (frame, _) = until(&mut ann, |f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(
        matches!(
            frame,
            ServerFrame::Error {
                code: ErrorCode::NotJoined,
                ..
            }
        ),
        "{frame:?}"
    );
    let (code, message) = try_join(&mut ann, "slow").await.unwrap_err();
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("could not be checked"), "{message}");
    assert_eq!(
        try_join(&mut ann, "broken").await.unwrap_err().0,
        ErrorCode::Forbidden
    );
    // Joining a room it is in asks nothing.
    let asked = seen.lock().unwrap().len();
    assert_eq!(try_join(&mut ann, "open").await, Ok(()));
    assert_eq!(seen.lock().unwrap().len(), asked);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(_, signed)| *signed),
        "every request is signed: {seen:?}"
    );
    let (first, _) = &seen[0];
    assert_eq!(first["event"], "join");
    assert_eq!(first["room"], "open");
    assert_eq!(first["user"], "ann");
    assert_eq!(first["sourceIp"], "127.0.0.1");
    assert_eq!(first["connectionId"].as_str().unwrap().len(), 16);
    server.stop().await;
}

#[tokio::test]
async fn allow_on_timeout_lets_joins_through_when_the_backend_is_slow_or_down() {
    let (url, _) = backend().await;
    let server = server(&url, HookFallback::Allow, false).await;
    let mut ann = server.v1("ann").await;
    assert_eq!(try_join(&mut ann, "slow").await, Ok(()));
    assert_eq!(try_join(&mut ann, "broken").await, Ok(()));
    assert_eq!(
        try_join(&mut ann, "secret").await.unwrap_err().0,
        ErrorCode::Forbidden,
        "an answered refusal still refuses"
    );
    server.stop().await;
    // Nothing listening at all.
    let server = server_without_backend(HookFallback::Allow).await;
    let mut bob = server.v1("bob").await;
    assert_eq!(try_join(&mut bob, "anything").await, Ok(()));
    server.stop().await;
}

async fn server_without_backend(on_timeout: HookFallback) -> TestServer {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    server(&url, on_timeout, false).await
}

#[tokio::test]
async fn with_on_connect_the_backend_can_refuse_the_upgrade() {
    let (url, seen) = backend().await;
    let server = server(&url, HookFallback::Deny, true).await;
    let (status, _, body) = raw_upgrade(
        server.addr,
        "/ws?name=mallory",
        &[("Sec-WebSocket-Protocol", "dynamowave.v1")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden", "{body}");
    assert_eq!(
        body["message"], "connecting was refused: banned for spam",
        "{body}"
    );
    let mut ann = server.v1("ann").await;
    assert_eq!(try_join(&mut ann, "open").await, Ok(()));
    let events: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["connect", "connect", "join"]);
    server.stop().await;
}

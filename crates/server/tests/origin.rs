//! The origin check against cross-site WebSocket hijacking, against the real server: by default
//! a browser page may connect only from the server's own origin; `access.allowed-origins`
//! replaces that with a list; clients that send no `Origin` (not browsers) always pass.

mod common;

use std::net::SocketAddr;

use common::TestServer;
use dynamowave_client::Client;
use dynamowave_server::ServerConfig;
use dynamowave_server::config::{AccessConfig, AuthConfig, AuthMode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Connects in v1 mode with `Origin: origin`.
async fn connect_from(server: &TestServer, origin: &str) -> Result<Client, String> {
    let mut request = server.ws_url("page").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_str(origin).unwrap());
    Client::connect_request(request, None)
        .await
        .map_err(|e| e.to_string())
}

/// The upgrade's answer as plain HTTP/1.1: status and JSON body.
async fn answer(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, _, body) = common::raw_upgrade(addr, "/ws", headers).await;
    (status, body)
}

/// Asserts a 403 `forbidden` whose message names `origin`.
async fn refused(server: &TestServer, origin: &str) {
    let (status, body) = answer(server.addr, &[("Origin", origin)]).await;
    assert_eq!(status, 403, "{origin}: {body}");
    assert_eq!(body["code"], "forbidden", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("origin {origin} may not open a WebSocket here")),
        "{message}"
    );
}

#[tokio::test]
async fn same_origin_and_non_browser_clients_connect_by_default() {
    let server = TestServer::start_with(ServerConfig::unthrottled()).await;
    let own = format!("http://{}", server.addr);
    connect_from(&server, &own).await.unwrap();
    // No Origin at all: wscat, the Rust client, curl.
    server.v1("cli").await;
    server.compat().await;
    // The same host under another name or port is another origin.
    let port = server.addr.port();
    refused(&server, &format!("http://localhost:{port}")).await;
    refused(&server, &format!("http://127.0.0.1:{}", port + 1)).await;
    // The scheme is not compared: behind a proxy that ends TLS the page is https and the
    // request to this server is not; host and port are what only this server can serve.
    connect_from(&server, &format!("https://127.0.0.1:{port}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn cross_origin_is_refused_with_403_naming_the_origin() {
    let server = TestServer::start_with(ServerConfig::unthrottled()).await;
    refused(&server, "https://evil.example").await;
    refused(&server, "null").await;
    let error = connect_from(&server, "https://evil.example")
        .await
        .err()
        .expect("refused");
    assert!(error.contains("403"), "{error}");
    let metrics = reqwest::get(server.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dynamowave_origin_refused_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_origin_is_checked_before_the_token() {
    let secret = "origin-test-secret-0123456789-0123456789";
    let server = TestServer::start_with(ServerConfig {
        auth: AuthConfig {
            mode: AuthMode::Jwt,
            jwt_secret: Some(secret.to_owned()),
            ..AuthConfig::default()
        },
        ..ServerConfig::unthrottled()
    })
    .await;
    let token = dynamowave_server::identity::mint_hs256(
        secret.as_bytes(),
        &dynamowave_core::UserName::parse("victim").unwrap(),
        None,
        std::time::Duration::from_secs(60),
        &AuthConfig::default(),
    )
    .unwrap();
    // A valid token (e.g. a cookie-like query a page got hold of) does not help a foreign page.
    let (status, body) = answer(
        server.addr,
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let own = format!("http://{}", server.addr);
    let (status, _) = answer(
        server.addr,
        &[
            ("Origin", &own),
            ("Authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(status, 101);
}

#[tokio::test]
async fn allowed_origins_replace_same_origin_and_match_exactly() {
    let server = TestServer::start_with(ServerConfig {
        access: AccessConfig {
            allowed_origins: vec![
                "https://chat.example.com".to_owned(),
                "http://localhost:3000".to_owned(),
            ],
            ..AccessConfig::default()
        },
        ..ServerConfig::unthrottled()
    })
    .await;
    connect_from(&server, "https://chat.example.com")
        .await
        .unwrap();
    connect_from(&server, "http://localhost:3000")
        .await
        .unwrap();
    server.v1("cli").await;
    refused(&server, "https://chat.example.com.evil.example").await;
    refused(&server, "http://chat.example.com").await;
    refused(&server, "http://localhost:3001").await;
    refused(&server, &format!("http://{}", server.addr)).await;
}

#[tokio::test]
async fn a_bad_allowed_origin_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        access: AccessConfig {
            allowed_origins: vec!["chat.example.com".to_owned()],
            ..AccessConfig::default()
        },
        ..ServerConfig::unthrottled()
    };
    let backend = common::backend(&config);
    let error = match dynamowave_server::Server::open(config, backend).await {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("allowed-origins entry \"chat.example.com\" is not an origin"),
        "{error}"
    );
}

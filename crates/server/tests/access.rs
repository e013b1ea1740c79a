//! Who may connect: IP allow/deny lists checked at accept, before any TLS or HTTP work, and the
//! handshake timeout that drops clients which connect and then send nothing (or too little).

mod common;

use std::time::Duration;

use common::{TestServer, WAIT, until};
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;
use dynamowave_server::config::AccessConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_access(allow: &[&str], deny: &[&str]) -> ServerConfig {
    let nets = |list: &[&str]| list.iter().map(|n| n.parse().unwrap()).collect();
    ServerConfig {
        access: AccessConfig {
            allow_ips: nets(allow),
            deny_ips: nets(deny),
            ..AccessConfig::default()
        },
        ..ServerConfig::unthrottled()
    }
}

/// Waits (up to [`WAIT`]) until the counter has grown by `by`.
async fn counted(reason: &str, before: u64, by: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while common::refused_connections(reason) < before + by {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{reason}: {} refusals counted, expected {}",
            common::refused_connections(reason),
            before + by
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a request and reads until the server closes: what came back (empty: no answer).
async fn request_and_read(server: &TestServer) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The write may fail if the server has already closed: that is an answer too.
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut response))
        .await
        .expect("closed within the wait");
    // A reset (the request was unread when the server closed) is fine: no HTTP either way.
    let _ = read;
    response
}

#[tokio::test]
async fn deny_list_closes_the_connection_without_an_answer() {
    let server = TestServer::start_with(with_access(&[], &["127.0.0.1/32"])).await;
    let before = common::refused_connections("deny_list");
    assert_eq!(request_and_read(&server).await, b"");
    assert!(
        dynamowave_client::Client::connect(&server.ws_url("alice"))
            .await
            .is_err()
    );
    counted("deny_list", before, 2).await;
    server.stop().await;
}

#[tokio::test]
async fn deny_wins_over_allow() {
    let server = TestServer::start_with(with_access(&["127.0.0.0/8"], &["127.0.0.1/32"])).await;
    let before = common::refused_connections("deny_list");
    assert_eq!(request_and_read(&server).await, b"");
    counted("deny_list", before, 1).await;
    server.stop().await;
}

#[tokio::test]
async fn an_allow_list_without_the_client_refuses_it() {
    let server = TestServer::start_with(with_access(&["10.0.0.0/8"], &[])).await;
    let before = common::refused_connections("not_allowed");
    assert_eq!(request_and_read(&server).await, b"");
    assert!(
        dynamowave_client::Client::connect(&server.ws_url("alice"))
            .await
            .is_err()
    );
    counted("not_allowed", before, 2).await;
    server.stop().await;
}

#[tokio::test]
async fn an_allow_list_with_the_client_lets_it_chat() {
    let server = TestServer::start_with(with_access(
        &["10.0.0.0/8", "127.0.0.0/8"],
        &["10.9.0.0/16"],
    ))
    .await;
    let response = String::from_utf8(request_and_read(&server).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut alice = server.v1("alice").await;
    alice.join("general", None).await.unwrap();
    until(&mut alice, |f| matches!(f, ServerFrame::Joined { .. })).await;
    alice.send_message("general", "let in", "a1").await.unwrap();
    until(&mut alice, |f| matches!(f, ServerFrame::Ack { .. })).await;
    server.stop().await;
}

#[tokio::test]
async fn handshake_timeout_drops_silent_and_slow_clients_only() {
    let server = TestServer::start_with(ServerConfig {
        limits: dynamowave_server::config::LimitsConfig {
            handshake_timeout_ms: 1_000,
            ..ServerConfig::unthrottled().limits
        },
        ..ServerConfig::unthrottled()
    })
    .await;
    let before = common::refused_connections("handshake_timeout");

    // Connected before the silent ones: an upgraded WebSocket is past its handshake and stays.
    let mut chatting = server.v1("chatting").await;
    chatting.join("general", None).await.unwrap();
    until(&mut chatting, |f| matches!(f, ServerFrame::Joined { .. })).await;

    // Sends nothing at all.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Sends half a request and stops (slowloris).
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    for (name, tcp) in [("silent", &mut silent), ("slow", &mut slow)] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {name} client is closed well within {WAIT:?}"));
        assert!(
            read.is_err() || buf.is_empty(),
            "{name}: no answer, {buf:?}"
        );
    }
    counted("handshake_timeout", before, 2).await;

    // Longer than the handshake timeout later, the WebSocket still works.
    chatting
        .send_message("general", "after the timeout", "c1")
        .await
        .unwrap();
    until(&mut chatting, |f| matches!(f, ServerFrame::Ack { .. })).await;
    // And a prompt client is served.
    let response = String::from_utf8(request_and_read(&server).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    server.stop().await;
}

//! Idle connections: the server pings after a quiet spell, closes peers that answer nothing for
//! the idle timeout, keeps live idle clients (their pongs count), and can cap how long any
//! connection lasts.

mod common;

use std::time::Duration;

use common::{TestServer, closed};
use dynamowave_client::ClientError;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;

fn quick_timeouts() -> ServerConfig {
    ServerConfig {
        ping_interval_ms: 100,
        idle_timeout_ms: 600,
        ..ServerConfig::unthrottled()
    }
}

#[tokio::test]
async fn a_live_idle_client_stays_connected() {
    let server = TestServer::start_with(quick_timeouts()).await;
    let mut c = server.v1("ann").await;
    // Reading answers the server's pings (tungstenite sends the pongs); nothing else is sent.
    match c.next_within(Duration::from_millis(1500)).await {
        Err(ClientError::Timeout(_)) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    c.join("r", None).await.unwrap();
    assert!(matches!(
        c.next_within(common::WAIT).await.unwrap(),
        ServerFrame::Joined { .. }
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_answers_nothing_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(quick_timeouts()).await;
    let mut c = server.v1("ann").await;
    // Not reading means not answering pings.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, reason) = closed(&mut c).await;
    assert_eq!(code, 1001);
    assert!(reason.starts_with("idle timeout"), "{reason}");
    server.stop().await;
}

#[tokio::test]
async fn the_maximum_connection_duration_closes_even_busy_connections() {
    let config = ServerConfig {
        max_connection_ms: 300,
        ..ServerConfig::unthrottled()
    };
    let server = TestServer::start_with(config).await;
    let mut c = server.v1("ann").await;
    c.join("r", None).await.unwrap();
    let started = std::time::Instant::now();
    let code = loop {
        c.send_message("r", "still here", &format!("{:?}", started.elapsed()))
            .await
            .ok();
        match c.next_within(Duration::from_millis(100)).await {
            Err(ClientError::Closed { code, reason }) => {
                assert!(reason.contains("maximum connection duration"), "{reason}");
                break code;
            }
            _ => assert!(started.elapsed() < Duration::from_secs(10), "never closed"),
        }
    };
    assert_eq!(code, 1001);
    server.stop().await;
}

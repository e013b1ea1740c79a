//! `[limits]` against a real server: the per-connection frame rate (`rate_limited`, then close
//! 1008 for a flood), the per-IP connection rate and cap (429 / 503 before the upgrade), the
//! global cap (503), the rooms cap (an `error` frame), and the rejection counters on /metrics.
//!
//! The metrics recorder is process-global and the tests of this file run in parallel, so the
//! counters are compared as deltas that may only be larger than this test's own share.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{TestServer, WAIT, until};
use dynamowave_client::{Client, ClientError};
use dynamowave_core::ErrorCode;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;
use dynamowave_server::config::LimitsConfig;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

fn config(limits: LimitsConfig) -> ServerConfig {
    ServerConfig {
        limits,
        ..ServerConfig::unthrottled()
    }
}

fn unthrottled_limits() -> LimitsConfig {
    ServerConfig::unthrottled().limits
}

/// A counter's value on /metrics (0 when it has not been registered yet).
async fn counter(server: &TestServer, series: &str) -> f64 {
    let text = reqwest::get(server.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

fn rate_limited(scope: &str) -> String {
    format!("dynamowave_rate_limited_total{{scope=\"{scope}\"}}")
}

/// An upgrade request the server refuses before upgrading: its status, `Retry-After` and body.
async fn refused(server: &TestServer) -> (u16, Option<String>, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(server.http("/ws?name=refused"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "dynamowave.v1")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_ne!(status, 101, "the upgrade should have been refused");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap();
    (status, retry_after, body)
}

/// Connects, retrying while the server still counts connections that just ended (their
/// `$disconnect` runs after the client sees the close).
async fn connect_once_released(server: &TestServer, name: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect(&server.ws_url(name)).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the count was not released within {WAIT:?}: {e}"),
        }
    }
}

async fn joined(client: &mut Client, room: &str) {
    client.join(room, None).await.unwrap();
    until(client, |f| matches!(f, ServerFrame::Joined { .. })).await;
}

fn sendmessage(room: &str, id: &str) -> String {
    serde_json::json!({"action": "sendmessage", "room": room, "data": id, "id": id}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acked_then_frames_are_rate_limited_until_the_client_waits() {
    let server = TestServer::start_with(config(LimitsConfig {
        messages_per_second: 10,
        message_burst: 20,
        abuse_close_after: 1000,
        ..unthrottled_limits()
    }))
    .await;
    let limited_before = counter(&server, &rate_limited("message")).await;
    let mut client = server.v1("bursty").await;
    // The join takes one of the 20 tokens.
    joined(&mut client, "burst").await;

    // 50 frames in one write.
    let socket = client.socket_mut();
    for i in 0..50 {
        socket
            .feed(Message::text(sendmessage("burst", &format!("m{i}"))))
            .await
            .unwrap();
    }
    socket.flush().await.unwrap();

    let mut acked = Vec::new();
    let mut limited = Vec::new();
    while acked.len() + limited.len() < 50 {
        match client.next_within(WAIT).await.unwrap() {
            ServerFrame::Ack { id, .. } => acked.push(id),
            ServerFrame::Error {
                id,
                code,
                message,
                retry_after_ms,
            } => {
                assert_eq!(code, ErrorCode::RateLimited, "{message}");
                assert!(message.contains("messages-per-second"), "{message}");
                let retry_after_ms = retry_after_ms.expect("rate_limited carries retryAfterMs");
                assert!(
                    (1..=100).contains(&retry_after_ms),
                    "at 10/s a token is at most 100 ms away, got {retry_after_ms}"
                );
                limited.push((id.expect("the frame's id is echoed"), retry_after_ms));
            }
            _ => {}
        }
    }
    println!(
        "50 frames at once (rate 10/s, burst 20, one token spent on join): {} acked, {} rate_limited",
        acked.len(),
        limited.len()
    );
    for i in 0..19 {
        assert!(
            acked.contains(&format!("m{i}")),
            "the burst (19 tokens left) is acked: m{i} in {acked:?}"
        );
    }
    assert!(!limited.is_empty(), "frames over the burst are refused");
    let answered: HashSet<&str> = acked
        .iter()
        .map(String::as_str)
        .chain(limited.iter().map(|(id, _)| id.as_str()))
        .collect();
    assert_eq!(answered.len(), 50, "every frame got exactly one answer");

    // Waiting as told is enough to be served again.
    let (_, wait) = *limited.last().unwrap();
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let (ack, _) = client
        .send_and_ack("burst", "again", "again")
        .await
        .unwrap();
    assert!(matches!(
        ack,
        ServerFrame::Ack {
            duplicate: false,
            ..
        }
    ));

    let limited_after = counter(&server, &rate_limited("message")).await;
    assert!(
        limited_after - limited_before >= limited.len() as f64,
        "dynamowave_rate_limited_total{{scope=\"message\"}} went from {limited_before} to {limited_after}"
    );
}

/// What the flooding client saw.
#[derive(Default, Debug)]
struct Flood {
    acked: Vec<String>,
    limited: usize,
    close: Option<(u16, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_closed_with_1008_while_the_room_gets_everything() {
    const FLOOD: usize = 5000;
    let server = TestServer::start_with(config(LimitsConfig {
        messages_per_second: 10,
        message_burst: 20,
        abuse_close_after: 100,
        ..unthrottled_limits()
    }))
    .await;
    let closes_before = counter(&server, "dynamowave_abuse_closes_total").await;

    let mut watcher = server.v1("watcher").await;
    joined(&mut watcher, "busy").await;
    let mut calm = server.v1("calm").await;
    joined(&mut calm, "busy").await;
    let mut flooder = server.v1("flooder").await;
    joined(&mut flooder, "busy").await;

    // The flooder writes as fast as it can from one task and reads from another.
    let (mut tx, mut rx) = flooder.split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for i in 0..FLOOD {
            if tx
                .send_text(sendmessage("busy", &format!("f{i}")))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    let reader = tokio::spawn(async move {
        let mut flood = Flood::default();
        loop {
            match tokio::time::timeout(WAIT, rx.next_text()).await {
                Ok(Ok(text)) => match serde_json::from_str(&text).unwrap() {
                    ServerFrame::Ack { id, .. } => flood.acked.push(id),
                    ServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    } => flood.limited += 1,
                    _ => {}
                },
                Ok(Err(ClientError::Closed { code, reason })) => {
                    flood.close = Some((code, reason));
                    return flood;
                }
                Ok(Err(e)) => panic!("the flooder's connection failed instead of closing: {e}"),
                Err(_) => panic!("the flooder was not closed within {WAIT:?}: {flood:?}"),
            }
        }
    });

    // Meanwhile a well-behaved client sends 10 messages at 5 per second, all acked.
    let mut calm_acked = Vec::new();
    for i in 0..10 {
        let id = format!("c{i}");
        calm.send_and_ack("busy", "calm", &id).await.unwrap();
        calm_acked.push(id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let flood = reader.await.unwrap();
    writer.abort();
    let (code, reason) = flood.close.clone().unwrap();
    println!(
        "flooder: {} acked, {} rate_limited, closed {code} {reason:?}",
        flood.acked.len(),
        flood.limited
    );
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("rate limit"), "{reason}");
    assert!(flood.acked.len() >= 19, "the burst went through: {flood:?}");
    assert_eq!(flood.limited, 99, "99 errors, and the 100th strike closes");

    // The watcher gets every acked message of both senders.
    let mut expected: HashSet<(String, String)> = flood
        .acked
        .iter()
        .map(|id| ("flooder".to_owned(), id.clone()))
        .chain(calm_acked.iter().map(|id| ("calm".to_owned(), id.clone())))
        .collect();
    let total = expected.len();
    while !expected.is_empty() {
        match watcher.next_within(WAIT).await {
            Ok(ServerFrame::Message(m)) => {
                expected.remove(&(m.user.as_str().to_owned(), m.id.clone()));
            }
            Ok(_) => {}
            Err(e) => panic!("{} of {total} acked messages missing ({e})", expected.len()),
        }
    }
    println!("watcher: delivery ratio 1.0 ({total} of {total} acked messages)");

    let closes_after = counter(&server, "dynamowave_abuse_closes_total").await;
    assert!(closes_after - closes_before >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_ip_are_rate_limited_with_429_and_retry_after() {
    let server = TestServer::start_with(config(LimitsConfig {
        connections_per_ip_per_second: 1,
        connection_burst_per_ip: 3,
        per_ip_exempt: vec![],
        ..unthrottled_limits()
    }))
    .await;
    let before = counter(&server, &rate_limited("connection_rate")).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(server.v1(&format!("c{i}")).await);
    }
    let (status, retry_after, body) = refused(&server).await;
    println!("4th connection in the burst: {status} Retry-After {retry_after:?} {body}");
    assert_eq!(status, 429);
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["limit"], "connections-per-ip-per-second");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("connections-per-ip-per-second") && message.contains("127.0.0.1"),
        "{message}"
    );
    assert_eq!(
        retry_after.as_deref(),
        Some("1"),
        "1/s: the next token within a second"
    );
    let retry_after_ms = body["retryAfterMs"].as_u64().unwrap();
    assert!((1..=1000).contains(&retry_after_ms));

    // Waiting as told lets one more in; the open connections did not matter.
    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
    held.push(server.v1("later").await);
    let after = counter(&server, &rate_limited("connection_rate")).await;
    assert!(after - before >= 1.0, "{before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_per_ip_are_capped_with_503_and_released_on_disconnect() {
    let server = TestServer::start_with(config(LimitsConfig {
        max_connections_per_ip: 3,
        per_ip_exempt: vec![],
        ..unthrottled_limits()
    }))
    .await;
    let before = counter(&server, &rate_limited("connections_per_ip")).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(server.v1(&format!("c{i}")).await);
    }
    let (status, retry_after, body) = refused(&server).await;
    println!("4th open connection: {status} {body}");
    assert_eq!(status, 503);
    assert_eq!(retry_after, None);
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["limit"], "max-connections-per-ip");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("at most 3 per address (max-connections-per-ip)"),
        "{body}"
    );

    // A client that leaves gives its place back, however it leaves: a clean close...
    held.pop().unwrap().close().await.unwrap();
    held.push(connect_once_released(&server, "after-close").await);
    // ...or a dropped socket.
    drop(held.pop());
    held.push(connect_once_released(&server, "after-drop").await);
    assert_eq!(refused(&server).await.0, 503, "still 3 at most");

    let after = counter(&server, &rate_limited("connections_per_ip")).await;
    assert!(after - before >= 2.0, "{before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_maximum_answers_503_before_the_upgrade() {
    // Loopback is exempt from the per-IP limits (the default), not from the global one.
    let server = TestServer::start_with(config(LimitsConfig {
        max_connections: 2,
        ..unthrottled_limits()
    }))
    .await;
    let before = counter(&server, &rate_limited("max_connections")).await;
    let first = server.v1("one").await;
    let _second = server.compat().await;
    let (status, _, body) = refused(&server).await;
    println!("3rd connection: {status} {body}");
    assert_eq!(status, 503);
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["limit"], "max-connections");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("limit of 2 open connections (max-connections)"),
        "{body}"
    );
    first.close().await.unwrap();
    let _third = connect_once_released(&server, "three").await;
    let after = counter(&server, &rate_limited("max_connections")).await;
    assert!(after - before >= 1.0, "{before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_beyond_max_rooms_is_refused_and_the_connection_goes_on() {
    let server = TestServer::start_with(config(LimitsConfig {
        max_rooms_per_connection: 3,
        ..unthrottled_limits()
    }))
    .await;
    let before = counter(&server, &rate_limited("rooms")).await;
    let mut client = server.v1("roomy").await;
    match &client.connected {
        ServerFrame::Connected { limits, .. } => assert_eq!(limits.max_rooms_per_connection, 3),
        other => panic!("{other:?}"),
    }
    for room in ["a", "b", "c"] {
        joined(&mut client, room).await;
    }
    client.join("d", None).await.unwrap();
    let (frame, _) = until(&mut client, |f| {
        matches!(f, ServerFrame::Error { .. } | ServerFrame::Joined { .. })
    })
    .await;
    let ServerFrame::Error { code, message, .. } = frame else {
        panic!("expected an error, got {frame:?}");
    };
    println!("4th room: {code} {message}");
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("max-rooms-per-connection"), "{message}");

    // Joining a room it is in already is fine; after a leave there is room for d.
    joined(&mut client, "a").await;
    client.leave("a").await.unwrap();
    until(&mut client, |f| matches!(f, ServerFrame::Left { .. })).await;
    joined(&mut client, "d").await;
    client.send_and_ack("d", "made it", "m1").await.unwrap();

    let after = counter(&server, &rate_limited("rooms")).await;
    assert!(after - before >= 1.0, "{before} -> {after}");
}

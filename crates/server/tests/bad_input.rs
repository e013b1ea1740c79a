//! Bad input: every case gets a clear `error` frame or close code, and the connection (or the
//! server) keeps working after the ones that do not close.

mod common;

use common::{TestServer, WAIT, closed, until};
use dynamowave_client::{Client, ClientError};
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

async fn expect_error(c: &mut Client, frame: &str, code: &str, needle: &str) {
    c.send_raw(frame).await.unwrap();
    match c.next_within(WAIT).await.unwrap() {
        ServerFrame::Error {
            code: got, message, ..
        } => {
            assert_eq!(got.as_str(), code, "{frame} -> {message}");
            assert!(
                message.contains(needle),
                "{frame}: {message:?} lacks {needle:?}"
            );
        }
        other => panic!("{frame}: expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn each_bad_frame_gets_an_error_and_the_connection_survives() {
    let server = TestServer::start().await;
    let mut c = server.v1("ann").await;
    c.join("ok", None).await.unwrap();
    until(&mut c, |f| matches!(f, ServerFrame::Joined { .. })).await;

    let cases = [
        ("{not json", "bad_request", "frames must be JSON objects"),
        (
            "\"just a string\"",
            "bad_request",
            "frames must be JSON objects",
        ),
        (
            r#"{"room":"ok","data":"x"}"#,
            "bad_request",
            "missing `action`",
        ),
        (
            r#"{"action":42}"#,
            "bad_request",
            "field `action` must be a string",
        ),
        (
            r#"{"action":"sendmessage","room":"ok"}"#,
            "bad_request",
            "needs a `data` string",
        ),
        (
            r#"{"action":"sendmessage","room":"ok","data":{"nested":1}}"#,
            "bad_request",
            "field `data` must be a string",
        ),
        (
            r#"{"action":"sendmessage","room":"ok","data":7}"#,
            "bad_request",
            "field `data` must be a string",
        ),
        (
            r#"{"action":"sendmessage","data":"x"}"#,
            "bad_request",
            "missing `room`",
        ),
        (
            r#"{"action":"sendmessage","room":["ok"],"data":"x"}"#,
            "bad_request",
            "field `room` must be a string",
        ),
        (
            r#"{"action":"sendmessage","room":"ok","data":"x","id":5}"#,
            "bad_request",
            "field `id` must be a string",
        ),
        (
            r#"{"action":"sendmessage","room":"ok","data":"x","id":""}"#,
            "bad_request",
            "`id` must be 1 to 128",
        ),
        (
            r#"{"action":"sendmessage","room":"no/slash","data":"x"}"#,
            "bad_request",
            "invalid room name",
        ),
        (
            r#"{"action":"join","room":""}"#,
            "bad_request",
            "invalid room name",
        ),
        (r#"{"action":"join"}"#, "bad_request", "missing `room`"),
        (
            r#"{"action":"join","room":"ok","after":"3"}"#,
            "bad_request",
            "field `after` must be a non-negative integer",
        ),
        (
            r#"{"action":"join","room":"ok","after":-3}"#,
            "bad_request",
            "field `after`",
        ),
        (
            r#"{"action":"history","room":"ok","limit":501}"#,
            "bad_request",
            "limit 501 is out of range",
        ),
        (
            r#"{"action":"history","room":"ok","before":2,"after":1}"#,
            "bad_request",
            "not both",
        ),
        (
            r#"{"action":"history","room":"never-made"}"#,
            "not_found",
            "does not exist",
        ),
        (
            r#"{"action":"members","room":"never-made"}"#,
            "not_found",
            "does not exist",
        ),
        (
            r#"{"action":"sendmessage","room":"elsewhere","data":"x"}"#,
            "not_joined",
            "join room elsewhere",
        ),
        (
            r#"{"action":"leave","room":"elsewhere"}"#,
            "not_joined",
            "not in room elsewhere",
        ),
    ];
    let long_room = format!(r#"{{"action":"join","room":"{}"}}"#, "r".repeat(65));
    for (frame, code, needle) in cases {
        expect_error(&mut c, frame, code, needle).await;
    }
    expect_error(&mut c, &long_room, "bad_request", "1 to 64 characters").await;

    // An error about a message names the message's id when it could be read.
    c.send_raw(r#"{"action":"sendmessage","room":"ok","data":false,"id":"m-9"}"#)
        .await
        .unwrap();
    match c.next_within(WAIT).await.unwrap() {
        ServerFrame::Error { id, code, .. } => {
            assert_eq!((id.as_deref(), code.as_str()), (Some("m-9"), "bad_request"));
        }
        other => panic!("{other:?}"),
    }

    // Binary frames are refused with an explanation.
    c.send_binary(vec![1, 2, 3]).await.unwrap();
    match c.next_within(WAIT).await.unwrap() {
        ServerFrame::Error { code, message, .. } => {
            assert_eq!(code.as_str(), "bad_request");
            assert!(message.contains("binary frames are not supported"));
        }
        other => panic!("{other:?}"),
    }

    // Still connected, still in the room, nothing stored by the bad frames.
    let (ack, _) = c
        .send_and_ack("ok", "still here", "after-errors")
        .await
        .unwrap();
    assert!(matches!(ack, ServerFrame::Ack { seq, .. } if seq.0 == 1));
    server.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let server = TestServer::start().await;
    let mut c = server.v1("ann").await;
    let big = format!(
        r#"{{"action":"sendmessage","room":"r","data":"{}"}}"#,
        "x".repeat(40 * 1024)
    );
    c.send_raw(big).await.unwrap();
    match c.next_within(WAIT).await {
        Err(ClientError::Closed { code, reason }) => {
            assert_eq!(code, 1009);
            assert!(reason.contains("32768"), "{reason}");
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
    // The server is fine.
    let mut other = server.v1("bob").await;
    other.join("r", None).await.unwrap();
    assert!(matches!(
        other.next_within(WAIT).await.unwrap(),
        ServerFrame::Joined { .. }
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009_even_in_small_frames() {
    let server = TestServer::start().await;
    let mut c = server.v1("ann").await;
    // 5 fragments of 30 KiB: each frame is under 32 KiB, the message is over 128 KiB.
    let chunk = vec![b'x'; 30 * 1024];
    let socket = c.socket_mut();
    socket
        .send(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
    for i in 0..4 {
        let last = i == 3;
        let frame = Frame::message(chunk.clone(), OpCode::Data(Data::Continue), last);
        if socket.send(Message::Frame(frame)).await.is_err() {
            break;
        }
    }
    match c.next_within(WAIT).await {
        Err(ClientError::Closed { code, reason }) => {
            assert_eq!(code, 1009);
            assert!(reason.contains("131072"), "{reason}");
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn limits_are_configurable() {
    let config = ServerConfig {
        max_frame_bytes: 2048,
        max_message_bytes: 4096,
        ..ServerConfig::unthrottled()
    };
    let server = TestServer::start_with(config).await;
    let mut c = server.v1("ann").await;
    match &c.connected {
        ServerFrame::Connected { limits, .. } => assert_eq!(limits.max_frame_bytes, 2048),
        other => panic!("{other:?}"),
    }
    c.join("r", None).await.unwrap();
    until(&mut c, |f| matches!(f, ServerFrame::Joined { .. })).await;
    c.send_and_ack("r", &"y".repeat(1500), "fits")
        .await
        .unwrap();
    c.send_raw(format!(
        r#"{{"action":"sendmessage","room":"r","data":"{}"}}"#,
        "y".repeat(3000)
    ))
    .await
    .unwrap();
    assert_eq!(closed(&mut c).await.0, 1009);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_name_is_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    let err = Client::connect(&server.ws_url("evil%07name"))
        .await
        .err()
        .expect("refused");
    match err {
        ClientError::WebSocket(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("invalid user name"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    // Plain HTTP to /ws is told to upgrade.
    let r = reqwest::get(server.http("/ws")).await.unwrap();
    assert!(r.status().is_client_error());
    server.stop().await;
}

//! Numbers at the top of the u64 range from clients. Every `after`, `before` and dead-letter id
//! a client may send is a u64 (docs/protocol.md, docs/openapi.yaml), and SQLite keeps i64: a
//! bound past i64::MAX used to wrap to a negative number, so `after=2^64-1` returned the whole
//! log instead of nothing, `before=2^64-1` nothing instead of the newest messages, and a `join`
//! with such an `after` replayed every message. Found by schemathesis (scripts/schemathesis.sh).

mod common;

use common::{TestServer, WAIT, until};
use dynamowave_core::protocol::ServerFrame;
use reqwest::StatusCode;
use serde_json::{Value, json};

const U64_MAX: u64 = u64::MAX;
const PAST_I64_MAX: u64 = i64::MAX as u64 + 1;

async fn post(http: &reqwest::Client, server: &TestServer, data: &str) {
    let r = http
        .post(server.http("/rooms/big/messages"))
        .json(&json!({ "data": data }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn history_bounds_past_i64_max_are_not_wrapped() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    post(&http, &server, "one").await;
    post(&http, &server, "two").await;
    let cases: [(String, &[u64]); 6] = [
        (format!("after={U64_MAX}"), &[]),
        (format!("after={PAST_I64_MAX}"), &[]),
        (format!("after={}", i64::MAX), &[]),
        (format!("before={U64_MAX}"), &[1, 2]),
        (format!("before={PAST_I64_MAX}"), &[1, 2]),
        (format!("before={}", i64::MAX), &[1, 2]),
    ];
    for (query, expected) in cases {
        let r = http
            .get(server.http(&format!("/rooms/big/messages?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{query}");
        let page: Value = r.json().await.unwrap();
        assert_eq!(seqs(&page["messages"]), expected, "{query}");
        assert_eq!(page["more"], false, "{query}");
    }
}

#[tokio::test]
async fn websocket_history_and_join_after_past_i64_max() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    post(&http, &server, "one").await;
    post(&http, &server, "two").await;
    let mut c = server.v1("ann").await;

    for (before, after, expected) in [
        (None, Some(U64_MAX), &[][..]),
        (None, Some(PAST_I64_MAX), &[]),
        (Some(U64_MAX), None, &[1, 2]),
        (Some(PAST_I64_MAX), None, &[1, 2]),
    ] {
        c.history("big", before, after, None).await.unwrap();
        let (frame, _) = until(&mut c, |f| matches!(f, ServerFrame::History { .. })).await;
        let ServerFrame::History { messages, more, .. } = frame else {
            unreachable!()
        };
        let got: Vec<u64> = messages.iter().map(|m| m.seq.0).collect();
        assert_eq!(got, expected, "before {before:?} after {after:?}");
        assert!(!more);
    }

    // `after` at or past the head replays nothing: the next message is the live one.
    c.join("big", Some(U64_MAX)).await.unwrap();
    let frame = c.next_within(WAIT).await.unwrap();
    assert!(
        matches!(&frame, ServerFrame::Joined { seq, .. } if seq.0 == 2),
        "{frame:?}"
    );
    post(&http, &server, "three").await;
    match c.next_within(WAIT).await.unwrap() {
        ServerFrame::Message(m) => assert_eq!(m.seq.0, 3, "replayed {m:?}"),
        other => panic!("expected the live message 3, got {other:?}"),
    }
}

#[tokio::test]
async fn dead_letters_after_past_i64_max() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let r = http
        .post(server.http("/@connections/NotConnected0000"))
        .body("kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    for (after, entries) in [(0, 1), (U64_MAX, 0), (PAST_I64_MAX, 0)] {
        let page: Value =
            common::get_json(&http, server.http(&format!("/dlq?after={after}"))).await;
        assert_eq!(
            page["entries"].as_array().unwrap().len(),
            entries,
            "after={after}: {page}"
        );
    }
}

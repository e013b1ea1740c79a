//! The dead-letter queue (issue 5 item 4): posts the server accepted or could not deliver are
//! kept durably, listed, shown, replayed idempotently and purged. (The depth metric is checked
//! against the real binary in crates/cli/tests/dlq.rs: the metrics recorder is per process.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestServer, WAIT};
use dynamowave_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn get_json(http: &reqwest::Client, url: String) -> Value {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_post_to_a_gone_connection_is_kept_replayed_once_and_purged() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();

    // A connection that existed and left: its id is well-formed and no longer connected.
    let gone = server.v1("ann").await;
    let gone_id = gone.connection_id().to_owned();
    gone.close().await.unwrap();
    let r = loop {
        let r = http
            .post(server.http(&format!("/@connections/{gone_id}")))
            .body("you have a new invoice")
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::OK {
            break r;
        }
        // The server is still running ann's $disconnect; that post was delivered or will be
        // dead-lettered by the connection's task. Wait for the connection to be gone.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status(), StatusCode::GONE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "gone");
    let id = body["deadLetterId"]
        .as_u64()
        .expect("the 410 names the dead letter");
    assert!(body["message"].as_str().unwrap().contains("dead letter"));

    let list = get_json(&http, server.http("/dlq?state=pending")).await;
    let entry = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .expect("listed")
        .clone();
    assert_eq!(entry["kind"], "post_to_connection");
    assert_eq!(entry["target"], gone_id.as_str());
    assert_eq!(entry["payload"], "you have a new invoice");
    assert!(entry["reason"].as_str().unwrap().starts_with("gone"));
    assert_eq!(entry["attempts"], 1);
    assert!(entry["createdAt"].as_u64().unwrap() > 0);
    let depth = list["depth"].as_u64().unwrap();
    assert!(depth >= 1);
    let shown = get_json(&http, server.http(&format!("/dlq/{id}"))).await;
    assert_eq!(shown, entry);

    // Replaying to the original target fails (it is gone) and counts the attempt.
    let r = http
        .post(server.http(&format!("/dlq/{id}/replay")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let shown = get_json(&http, server.http(&format!("/dlq/{id}"))).await;
    assert_eq!(shown["attempts"], 2);
    assert!(
        shown["lastError"]
            .as_str()
            .unwrap()
            .contains("not connected")
    );
    assert!(shown["replayedAt"].is_null());

    // Replaying to ann's new connection delivers it, once.
    let mut again = server.v1("ann").await;
    let to = again.connection_id().to_owned();
    let replay = || {
        http.post(server.http(&format!("/dlq/{id}/replay")))
            .json(&json!({ "connectionId": to }))
            .send()
    };
    let r = replay().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["replayed"].as_bool(), body["to"].as_str()),
        (Some(true), Some(to.as_str()))
    );
    assert_eq!(again.next_raw().await.unwrap(), "you have a new invoice");
    let r = replay().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["replayed"], false, "a second replay delivers nothing");
    assert!(body["alreadyReplayedAt"].as_u64().is_some());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), again.next_raw())
            .await
            .is_err(),
        "nothing more arrives"
    );
    let shown = get_json(&http, server.http(&format!("/dlq/{id}"))).await;
    assert_eq!(shown["replayedTo"], to.as_str());
    let pending = get_json(&http, server.http("/dlq?state=pending")).await;
    assert!(
        pending["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != id)
    );
    assert_eq!(pending["depth"].as_u64().unwrap(), depth - 1);

    // Purge: the state is required; replayed entries go, then one by id.
    let r = http.delete(server.http("/dlq")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http
        .delete(server.http("/dlq?state=replayed"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["purged"], 1);
    let r = http
        .get(server.http(&format!("/dlq/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .post(server.http(&format!("/dlq/{id}/replay")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http.delete(server.http("/dlq/abc")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn dead_letters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), ServerConfig::unthrottled()).await;
    let http = reqwest::Client::new();
    let r = http
        .post(server.http("/@connections/0123456789abcdef0123"))
        .body("kept")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::GONE, "{body}");
    let id = body["deadLetterId"].as_u64().unwrap();
    server.stop().await;

    let server = TestServer::start_in(dir.path(), ServerConfig::unthrottled()).await;
    let shown = get_json(&http, server.http(&format!("/dlq/{id}"))).await;
    assert_eq!(shown["payload"], "kept");
    server.stop().await;
}

/// A client that stops reading while the backend posts to it: every accepted post is either
/// received or dead-lettered; none is lost.
#[tokio::test]
async fn accepted_posts_to_a_connection_that_dies_are_dead_lettered() {
    let server = TestServer::start_with(ServerConfig {
        outbound_queue: 8,
        write_timeout_ms: 300,
        ..ServerConfig::unthrottled()
    })
    .await;
    let http = reqwest::Client::new();
    let mut stalled = server.v1("bob").await;
    let target = stalled.connection_id().to_owned();
    let url = server.http(&format!("/@connections/{target}"));

    // 96 KiB posts, each tagged with its number, until the connection is gone: the kernel
    // buffers fill, the write times out, the connection ends.
    let filler = "x".repeat(96 * 1024);
    let mut accepted = BTreeSet::new();
    let mut dead_lettered_at_post = BTreeSet::new();
    let mut n = 0u32;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled connection never ended"
        );
        n += 1;
        let r = http
            .post(&url)
            .body(format!("{n:06} {filler}"))
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => {
                accepted.insert(n);
            }
            // Queue full: not accepted, the caller keeps it (and retries later).
            StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            StatusCode::GONE => {
                let body: Value = r.json().await.unwrap();
                assert!(body["deadLetterId"].as_u64().is_some());
                dead_lettered_at_post.insert(n);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }

    // What the client got before the server gave up on it.
    let mut received = BTreeSet::new();
    // Until the close (or the reset after a write timed out).
    while let Ok(text) = stalled.next_raw().await {
        received.insert(text[..6].parse::<u32>().unwrap());
    }

    // What the server kept.
    let mut kept = BTreeSet::new();
    let mut after = 0;
    loop {
        let page = get_json(&http, server.http(&format!("/dlq?after={after}&limit=50"))).await;
        for e in page["entries"].as_array().unwrap() {
            assert_eq!(e["target"], target.as_str());
            kept.insert(e["payload"].as_str().unwrap()[..6].parse::<u32>().unwrap());
            after = e["id"].as_u64().unwrap();
        }
        if page["more"] != true {
            break;
        }
    }
    let lost: Vec<_> = accepted
        .iter()
        .filter(|n| !received.contains(n) && !kept.contains(n))
        .collect();
    println!(
        "accepted {}, received {}, dead-lettered {} (+{} at post)",
        accepted.len(),
        received.len(),
        kept.len(),
        dead_lettered_at_post.len()
    );
    assert!(
        lost.is_empty(),
        "accepted and neither delivered nor kept: {lost:?}"
    );
    assert!(
        kept.iter().any(|n| accepted.contains(n)),
        "some accepted posts were dead-lettered (the test exercised that path)"
    );
    assert!(dead_lettered_at_post.iter().all(|n| kept.contains(n)));
    server.stop().await;
}

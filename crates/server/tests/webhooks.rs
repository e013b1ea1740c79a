//! Webhooks against a real local HTTP receiver that fails, stalls and recovers: every event
//! arrives (at least once), in order per room, signed; a batch that keeps failing goes to the
//! dead-letter queue and replays once; events queued while the backend was down survive a
//! restart.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{TestServer, until};
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;
use dynamowave_server::config::HooksConfig;
use dynamowave_server::hooks::{SIGNATURE_HEADER, signature};
use serde_json::Value;

const SECRET: &str = "a-webhook-secret-of-some-length";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ok,
    Fail,
    /// Answers after the server's webhook timeout.
    Stall,
}

#[derive(Default)]
struct Receiver {
    mode: Mutex<Option<Mode>>,
    /// Batches answered 2xx, as received.
    taken: Mutex<Vec<Value>>,
    attempts: Mutex<u64>,
    bad_signatures: Mutex<u64>,
}

impl Receiver {
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = Some(mode);
    }

    /// Every event taken, once each (by `id`), in the order first received.
    fn events(&self) -> Vec<Value> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for batch in self.taken.lock().unwrap().iter() {
            for e in batch["events"].as_array().unwrap() {
                if seen.insert(e["id"].as_u64().unwrap()) {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "{what}: got {events:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receiver() -> (String, Arc<Receiver>) {
    let state = Arc::new(Receiver::default());
    state.set(Mode::Ok);
    let shared = state.clone();
    let app = Router::new().route(
        "/events",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = shared.clone();
            async move {
                *state.attempts.lock().unwrap() += 1;
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
                if headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok())
                    != Some(signature(&key, &body).as_str())
                {
                    *state.bad_signatures.lock().unwrap() += 1;
                }
                let mode = state.mode.lock().unwrap().unwrap_or(Mode::Ok);
                match mode {
                    Mode::Fail => return StatusCode::SERVICE_UNAVAILABLE,
                    Mode::Stall => tokio::time::sleep(Duration::from_millis(800)).await,
                    Mode::Ok => {}
                }
                state
                    .taken
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

fn config(url: &str, max_attempts: u32) -> ServerConfig {
    ServerConfig {
        hooks: HooksConfig {
            webhook_url: Some(url.to_owned()),
            webhook_secret: Some(SECRET.into()),
            webhook_timeout_ms: 300,
            webhook_batch_max: 10,
            webhook_max_attempts: max_attempts,
            ..HooksConfig::default()
        },
        ..ServerConfig::unthrottled()
    }
}

async fn acked(c: &mut dynamowave_client::Client, id: &str) -> u64 {
    let (frame, _) = until(
        c,
        |f| matches!(f, ServerFrame::Ack { id: got, .. } if got == id),
    )
    .await;
    match frame {
        ServerFrame::Ack { seq, .. } => seq.0,
        _ => unreachable!(),
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn every_event_arrives_in_order_while_the_backend_fails_stalls_and_recovers() {
    let (url, backend) = receiver().await;
    backend.set(Mode::Fail);
    let server = TestServer::start_with(config(&url, 1000)).await;
    let mut ann = server.v1("ann").await;
    ann.join("r", None).await.unwrap();
    until(&mut ann, |f| matches!(f, ServerFrame::Joined { .. })).await;
    ann.join("s", None).await.unwrap();
    until(&mut ann, |f| matches!(f, ServerFrame::Joined { .. })).await;
    // Chat goes on while the backend is down: every send is acked.
    for i in 1..=30 {
        let room = if i % 3 == 0 { "s" } else { "r" };
        ann.send_message(room, &format!("m{i}"), &format!("m{i}"))
            .await
            .unwrap();
        acked(&mut ann, &format!("m{i}")).await;
    }
    backend.set(Mode::Stall);
    ann.edit("r", 1, "m1 (edited)", "e1").await.unwrap();
    acked(&mut ann, "e1").await;
    ann.react("r", 2, "👍", true, "x1").await.unwrap();
    acked(&mut ann, "x1").await;
    ann.delete("r", 4, "d1").await.unwrap();
    acked(&mut ann, "d1").await;
    ann.leave("s").await.unwrap();
    until(&mut ann, |f| matches!(f, ServerFrame::Left { .. })).await;
    ann.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        backend.events().is_empty(),
        "nothing was taken while failing or stalling"
    );
    backend.set(Mode::Ok);

    let events = backend
        .wait_for("every event once the backend is back", |e| {
            e.iter().any(|e| e["event"] == "disconnect")
        })
        .await;
    assert_eq!(*backend.bad_signatures.lock().unwrap(), 0);
    assert!(
        *backend.attempts.lock().unwrap() > 3,
        "failed attempts were retried"
    );
    // Ids increase: the commit order.
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let k = kinds(&events);
    assert_eq!(k[0], "connect");
    assert_eq!(&k[1..3], ["join", "join"]);
    assert_eq!(k.iter().filter(|k| **k == "message").count(), 30);
    assert_eq!(
        &k[33..],
        ["edit", "reaction", "delete", "leave", "disconnect"]
    );
    // Per room, the log's seqs in order, none missing.
    let mut per_room: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &events {
        let seq = match e["event"].as_str().unwrap() {
            "message" => e["seq"].as_u64(),
            "edit" | "reaction" | "delete" => e["eventSeq"].as_u64(),
            _ => None,
        };
        if let Some(seq) = seq {
            per_room
                .entry(e["room"].as_str().unwrap())
                .or_default()
                .push(seq);
        }
    }
    assert_eq!(per_room["r"], (1..=23).collect::<Vec<_>>());
    assert_eq!(per_room["s"], (1..=10).collect::<Vec<_>>());
    let edit = &events[33];
    assert_eq!(
        (edit["seq"].as_u64(), edit["data"].as_str()),
        (Some(1), Some("m1 (edited)"))
    );
    assert_eq!(events[34]["counts"]["👍"], 1);
    assert_eq!(events[0]["user"], "ann");
    assert_eq!(events[0]["mode"], "v1");
    server.stop().await;
}

#[tokio::test]
async fn a_batch_that_keeps_failing_is_dead_lettered_and_replays_once() {
    let (url, backend) = receiver().await;
    backend.set(Mode::Fail);
    let server = TestServer::start_with(config(&url, 2)).await;
    let mut ann = server.v1("ann").await;
    ann.join("r", None).await.unwrap();
    until(&mut ann, |f| matches!(f, ServerFrame::Joined { .. })).await;
    ann.send_message("r", "hello", "m1").await.unwrap();
    acked(&mut ann, "m1").await;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let list: Value = http
            .get(server.http("/dlq"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = list["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["kind"] == "webhook" && e["payload"].as_str().unwrap().contains("hello"))
            .cloned();
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no webhook dead letter: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry["target"], url.as_str());
    assert!(
        entry["reason"].as_str().unwrap().contains("2 attempts"),
        "{entry}"
    );
    let id = entry["id"].as_u64().unwrap();
    // Chat went on meanwhile, and the next events were not held up behind the dead batch.
    backend.set(Mode::Ok);
    ann.send_message("r", "after", "m2").await.unwrap();
    acked(&mut ann, "m2").await;
    backend
        .wait_for("the events after the dead-lettered batch", |e| {
            e.iter().any(|e| e["data"] == "after")
        })
        .await;
    assert!(!backend.events().iter().any(|e| e["data"] == "hello"));
    let replay = |path: String| {
        let http = http.clone();
        async move {
            http.post(path)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let first = replay(server.http(&format!("/dlq/{id}/replay"))).await;
    assert_eq!(first["replayed"], true, "{first}");
    let again = replay(server.http(&format!("/dlq/{id}/replay"))).await;
    assert_eq!(again["replayed"], false, "{again}");
    let hellos = backend
        .taken
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b.to_string().contains("\"hello\""))
        .count();
    assert_eq!(hellos, 1, "the replayed batch arrived once");
    server.stop().await;
}

#[tokio::test]
async fn events_queued_while_the_backend_is_down_survive_a_restart() {
    let (url, backend) = receiver().await;
    backend.set(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), config(&url, 1000)).await;
    let mut ann = server.v1("ann").await;
    ann.join("r", None).await.unwrap();
    until(&mut ann, |f| matches!(f, ServerFrame::Joined { .. })).await;
    for i in 1..=5 {
        ann.send_message("r", &format!("m{i}"), &format!("m{i}"))
            .await
            .unwrap();
        acked(&mut ann, &format!("m{i}")).await;
    }
    drop(ann);
    server.stop().await;
    backend.set(Mode::Ok);
    let server = TestServer::start_in(dir.path(), config(&url, 1000)).await;
    let events = backend
        .wait_for("the messages sent before the restart", |e| {
            e.iter().filter(|e| e["event"] == "message").count() == 5
        })
        .await;
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    server.stop().await;
}

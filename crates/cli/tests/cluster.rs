//! The cluster shape end to end: real `dynamowave serve --cluster` processes on real
//! `nats-server` processes (started here on free ports, never the machine's 4222).

mod common;
#[path = "../../store-nats/tests/common/mod.rs"]
mod nats;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ServerProcess;
use dynamowave_client::Client;
use dynamowave_core::ErrorCode;
use dynamowave_core::protocol::{PresenceEvent, ServerFrame};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A DynamoWave node on `url` (a short node TTL, so that a dead node leaves within seconds).
fn node(dir: &tempfile::TempDir, url: &str, id: &str, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--cluster",
        url,
        "--node-id",
        id,
        "--cluster-node-ttl-s",
        "3",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(&dir.path().join(id), &args, &[])
}

async fn joined(server: &ServerProcess, name: &str, room: &str, after: Option<u64>) -> Client {
    // `connect` has read the `connected` frame.
    let mut c = Client::connect(&server.ws_url(name)).await.unwrap();
    c.join(room, after).await.unwrap();
    loop {
        match c.next_within(WAIT).await.unwrap() {
            ServerFrame::Joined { .. } => return c,
            ServerFrame::Presence { .. } => {}
            other => panic!("expected joined, got {other:?}"),
        }
    }
}

/// Reads until `n` messages of `room` came; returns their (seq, data), skipping other frames.
async fn messages(c: &mut Client, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        if let ServerFrame::Message(m) = c.next_within(WAIT).await.unwrap() {
            got.push((m.seq.0, m.data.clone()));
        }
    }
    got
}

/// The next ack or error frame, skipping presence and messages.
async fn ack_or_error(c: &mut Client) -> ServerFrame {
    loop {
        let f = c.next_within(Duration::from_secs(30)).await.unwrap();
        if matches!(f, ServerFrame::Error { .. } | ServerFrame::Ack { .. }) {
            return f;
        }
    }
}

/// Polls `/readyz` on `server` until it answers `status`, for at most 10 s.
async fn wait_ready(server: &ServerProcess, status: u16, otherwise: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = reqwest::get(format!("http://{}/readyz", server.addr)).await;
        if r.unwrap().status().as_u16() == status {
            return;
        }
        assert!(Instant::now() < deadline, "{otherwise}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn member_names(body: &Value) -> BTreeSet<String> {
    body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls until `members` of room on `server` is `want` (membership travels through the KV
/// bucket, so a moment may pass).
async fn wait_members(server: &ServerProcess, room: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) =
            get_json(&format!("http://{}/rooms/{room}/members", server.addr)).await;
        if status == 200 && member_names(&body) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members of {room} on {}: {body} (want {want:?})",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn three_nodes_are_one_chat() {
    let Some(nats) = nats::NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let (a, b, c) = (
        node(&dir, &url, "a", &[]),
        node(&dir, &url, "b", &[]),
        node(&dir, &url, "c", &[]),
    );
    let mut alice = joined(&a, "alice", "general", None).await;
    let mut bob = joined(&b, "bob", "general", None).await;
    wait_members(&c, "general", &["alice", "bob"]).await;
    let mut carol = joined(&c, "carol", "general", None).await;
    // Presence crosses nodes: alice (on a) hears that carol (on c) joined.
    loop {
        match alice.next_within(WAIT).await.unwrap() {
            ServerFrame::Presence {
                event: PresenceEvent::Joined,
                user,
                ..
            } if user.as_str() == "carol" => break,
            _ => {}
        }
    }

    // Everyone sends at once from three nodes; everyone sees the same order.
    for i in 0..10 {
        alice
            .send_message("general", &format!("a{i}"), &format!("a{i}"))
            .await
            .unwrap();
        bob.send_message("general", &format!("b{i}"), &format!("b{i}"))
            .await
            .unwrap();
        carol
            .send_message("general", &format!("c{i}"), &format!("c{i}"))
            .await
            .unwrap();
    }
    let (seen_a, seen_b, seen_c) = (
        messages(&mut alice, 30).await,
        messages(&mut bob, 30).await,
        messages(&mut carol, 30).await,
    );
    assert_eq!(seen_a, seen_b, "a and b see the same order");
    assert_eq!(seen_a, seen_c, "a and c see the same order");
    let seqs: Vec<u64> = seen_a.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "seqs 1..30, no gap");

    // A retry on another node is a duplicate with the original seq.
    let mut alice_on_c = joined(&c, "alice", "general", None).await;
    let (ack, _) = alice_on_c
        .send_and_ack("general", "a0", "a0")
        .await
        .unwrap();
    let ServerFrame::Ack { seq, duplicate, .. } = ack else {
        unreachable!()
    };
    let first = seen_a.iter().find(|(_, d)| d == "a0").unwrap().0;
    assert!(duplicate, "a retry on node c of a message sent on node a");
    assert_eq!(seq.0, first);

    // History on c holds what a and b committed.
    let (status, body) = get_json(&format!(
        "http://{}/rooms/general/messages?after=0&limit=100",
        c.addr
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let history: Vec<(u64, String)> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(history, seen_a);

    // Members are cluster-wide, on every node and through the `members` action.
    for server in [&a, &b, &c] {
        wait_members(server, "general", &["alice", "bob", "carol"]).await;
    }
    bob.members("general").await.unwrap();
    loop {
        if let ServerFrame::Members { members, .. } = bob.next_within(WAIT).await.unwrap() {
            assert_eq!(
                members.len(),
                4,
                "alice twice (a and c), bob, carol: {members:?}"
            );
            break;
        }
    }

    // @connections on node b reaches alice's connection on node a.
    let http = reqwest::Client::new();
    let alice_id = alice.connection_id().to_owned();
    let r = http
        .post(format!("http://{}/@connections/{alice_id}", b.addr))
        .body("a note through node b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let raw = tokio::time::timeout(WAIT, alice.next_raw())
            .await
            .unwrap()
            .unwrap();
        if raw == "a note through node b" {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let (status, body) = get_json(&format!("http://{}/@connections/{alice_id}", c.addr)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "alice");
    assert_eq!(
        body["connectionID"]
            .as_str()
            .or(body["connectionId"].as_str()),
        Some(alice_id.as_str())
    );
    // 410 only when no node has it.
    let r = http
        .post(format!("http://{}/@connections/NoSuchConnection", b.addr))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 410);
    // DELETE on node c closes alice's socket on node a.
    let r = http
        .delete(format!("http://{}/@connections/{alice_id}", c.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if alice.next().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "alice's socket closed");
    wait_members(&b, "general", &["alice", "bob", "carol"]).await; // alice is still in on c
    drop(alice_on_c);
    wait_members(&b, "general", &["bob", "carol"]).await;

    // The store metrics the alerts use are recorded on a cluster node too: a's ten messages.
    let page = common::metrics_page(&http, &a).await;
    let acked: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("dynamowave_messages_acked_total "))
        .unwrap_or_else(|| panic!("no acked counter in {page}"))
        .parse()
        .unwrap();
    assert_eq!(acked, 10.0, "{page}");
    assert!(
        page.contains("dynamowave_store_commit_seconds_count"),
        "{page}"
    );
}

#[tokio::test]
async fn a_killed_node_s_clients_resume_on_another_and_it_leaves_the_members() {
    let Some(nats) = nats::NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let a = node(&dir, &url, "a", &[]);
    let b = node(&dir, &url, "b", &[]);
    let mut reader = joined(&b, "reader", "room", None).await;
    let mut writer = joined(&a, "writer", "room", None).await;
    let mut watcher = joined(&a, "watcher", "room", None).await;
    wait_members(&b, "room", &["reader", "writer", "watcher"]).await;

    let mut acked = Vec::new();
    for i in 0..20 {
        let (ack, _) = writer
            .send_and_ack("room", &format!("m{i}"), &format!("m{i}"))
            .await
            .unwrap();
        let ServerFrame::Ack { seq, .. } = ack else {
            unreachable!()
        };
        acked.push(seq.0);
    }
    // The watcher on a read part of it when a dies, and a dies while the writer sends.
    let seen = messages(&mut watcher, 7).await;
    let last_seen = seen.last().unwrap().0;
    for i in 20..30 {
        writer
            .send_message("room", &format!("m{i}"), &format!("m{i}"))
            .await
            .unwrap();
    }
    a.kill_9();
    let mut unacked: BTreeSet<String> = (20..30).map(|i| format!("m{i}")).collect();
    while let Ok(frame) = writer.next_within(WAIT).await {
        if let ServerFrame::Ack { id, seq, .. } = frame {
            unacked.remove(id.as_str());
            acked.push(seq.0);
        }
    }

    // The writer reconnects to b and sends again what it has no ack for (same ids: a message
    // a committed before dying comes back as a duplicate), then more.
    let mut watcher = joined(&b, "watcher", "room", Some(last_seen)).await;
    let mut writer = joined(&b, "writer", "room", acked.iter().max().copied()).await;
    let again: Vec<String> = unacked
        .into_iter()
        .chain((30..35).map(|i| format!("m{i}")))
        .collect();
    for id in &again {
        let (ack, _) = writer.send_and_ack("room", id, id).await.unwrap();
        let ServerFrame::Ack { seq, .. } = ack else {
            unreachable!()
        };
        // A duplicate's seq is new to the writer when a died before sending its ack.
        if !acked.contains(&seq.0) {
            acked.push(seq.0);
        }
    }
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=35).collect::<Vec<_>>(),
        "35 messages, seqs 1..35"
    );
    let rest = messages(&mut watcher, acked.len() - seen.len()).await;
    let all: Vec<u64> = seen.iter().chain(rest.iter()).map(|(s, _)| *s).collect();
    assert_eq!(all, acked, "every acked message exactly once, in order");
    let got = messages(&mut reader, acked.len()).await;
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), acked);
    // The dead node's connections leave the members list (node TTL 3 s): only b's remain.
    let on_b: BTreeSet<String> = [&reader, &watcher, &writer]
        .iter()
        .map(|c| c.connection_id().to_owned())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get_json(&format!("http://{}/rooms/room/members", b.addr)).await;
        let ids: BTreeSet<String> = body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["connectionId"].as_str().unwrap().to_owned())
            .collect();
        if ids == on_b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's connections are still members 15 s after it died: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn nats_down_means_unavailable_and_the_same_ids_commit_once_when_it_is_back() {
    let Some(mut nats) = nats::NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = node(&dir, &nats.url(), "a", &[]);
    let mut alice = joined(&a, "alice", "room", None).await;
    alice.send_and_ack("room", "before", "m1").await.unwrap();
    let (status, _) = get_json(&format!("http://{}/readyz", a.addr)).await;
    assert_eq!(status, 200);

    nats.kill();
    alice
        .send_message("room", "while down", "m2")
        .await
        .unwrap();
    let frame = ack_or_error(&mut alice).await;
    let ServerFrame::Error {
        code,
        retry_after_ms,
        ..
    } = frame
    else {
        panic!("an ack for a message NATS never saw: {frame:?}");
    };
    assert_eq!(code, ErrorCode::Unavailable);
    assert!(retry_after_ms.is_some());
    wait_ready(&a, 503, "/readyz stays 200 with NATS down").await;

    nats.restart();
    // The node reconnects by itself; the client retries with the same id until it is acked.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seq = loop {
        alice
            .send_message("room", "while down", "m2")
            .await
            .unwrap();
        let f = ack_or_error(&mut alice).await;
        if let ServerFrame::Ack { seq, .. } = f {
            break seq.0;
        }
        assert!(
            Instant::now() < deadline,
            "never committed after NATS came back: {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(seq, 2);
    let (_, body) = get_json(&format!(
        "http://{}/rooms/room/messages?after=0&limit=10",
        a.addr
    ))
    .await;
    let data: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, vec!["before", "while down"], "committed once");
    wait_ready(&a, 200, "/readyz does not recover").await;
}

#[tokio::test]
async fn an_r3_stream_loses_nothing_when_a_nats_server_dies() {
    let Some(mut cluster) = nats::NatsCluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let a = node(&dir, &url, "a", &["--cluster-replicas", "3"]);
    let mut writer = joined(&a, "writer", "r3", None).await;
    let mut acked = Vec::new();
    let mut sent = 0;
    let mut killed = false;
    let started = Instant::now();
    while acked.len() < 60 {
        let id = format!("m{sent}");
        writer.send_message("r3", &id, &id).await.unwrap();
        loop {
            match writer.next_within(Duration::from_secs(30)).await.unwrap() {
                ServerFrame::Ack { id: got, .. } if got == id => {
                    acked.push(id);
                    sent += 1;
                    break;
                }
                // Refused while the stream elects a new leader: sent again, same id.
                ServerFrame::Error {
                    code: ErrorCode::Unavailable,
                    ..
                } => break,
                _ => {}
            }
        }
        if acked.len() == 20 && !killed {
            // Kill one of the three under load.
            cluster.servers[0].kill();
            killed = true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "writes did not continue"
        );
    }
    cluster.servers[0].restart();
    let (status, body) = get_json(&format!(
        "http://{}/rooms/r3/messages?after=0&limit=200",
        a.addr
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let messages = body["messages"].as_array().unwrap();
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let ids: Vec<String> = messages
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, acked, "every acked message, once, in order");
    assert_eq!(seqs, (1..=acked.len() as u64).collect::<Vec<_>>());
}

/// Runs `dynamowave ARGS` with `env`; its exit success and stderr.
fn dynamowave(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_sqlite_tools_refuse_a_cluster_node_and_say_what_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cluster = [("DYNAMOWAVE_CLUSTER", "nats://127.0.0.1:4222")];
    let backup = dir.path().join("b.db");
    for args in [
        vec!["backup", backup.to_str().unwrap(), "--data-dir", data],
        vec![
            "restore",
            "--from",
            data,
            "--to",
            "2026-01-01T00:00:00Z",
            "--into",
            data,
        ],
        vec!["rekey", "--data-dir", data],
    ] {
        let (ok, err) = dynamowave(&args, &cluster);
        assert!(!ok, "{args:?} ran on a cluster node");
        assert!(
            err.contains("embedded SQLite store") && err.contains("nats stream backup"),
            "{args:?}: {err}"
        );
    }
    // The embedded store's encryption keys would silently not apply: the start is refused.
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (ok, err) = dynamowave(
        &["serve", "--data-dir", data, "--encryption-key", key],
        &cluster,
    );
    assert!(!ok);
    assert!(err.contains("cipher: aes"), "{err}");
    // A bad node id is named, before any connection is tried.
    let (ok, err) = dynamowave(&["serve", "--data-dir", data, "--node-id", "a.b"], &cluster);
    assert!(!ok);
    assert!(err.contains("invalid --node-id \"a.b\""), "{err}");
}

/// `dynamowave bench` spread over two nodes (the figures in docs/benchmarks.md#cluster): every
/// message sent on one node is delivered to every member on both.
#[tokio::test]
async fn bench_spreads_its_clients_over_the_nodes_and_every_message_arrives() {
    let Some(nats) = nats::NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let (a, b) = (node(&dir, &url, "a", &[]), node(&dir, &url, "b", &[]));
    let urls = format!("{},{}", a.ws_url("x"), b.ws_url("x"));
    for scenario in [
        &[
            "fanout",
            "--members",
            "20",
            "--senders",
            "4",
            "--rate",
            "10",
        ][..],
        &["ack", "--senders", "4", "--rate", "10"][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynamowave"))
            .arg("bench")
            .args(scenario)
            .args(["--duration", "1", "--json", "--url", &urls])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["delivery_ratio"], 1.0, "{report}");
        assert_eq!(report["delivered"], report["expected"], "{report}");
    }
}

#[tokio::test]
async fn typing_edits_reactions_and_read_marks_cross_nodes() {
    let Some(nats) = nats::NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let (a, b) = (node(&dir, &url, "a", &[]), node(&dir, &url, "b", &[]));
    let mut alice = joined(&a, "alice", "general", None).await;
    let mut bob = joined(&b, "bob", "general", None).await;
    wait_members(&a, "general", &["alice", "bob"]).await;
    alice.typing("general").await.unwrap();
    let typing = next_of(&mut bob, |f| matches!(f, ServerFrame::Typing { .. })).await;
    assert!(
        matches!(&typing, ServerFrame::Typing { user, room } if user.as_str() == "alice" && room.as_str() == "general"),
        "{typing:?}"
    );
    alice.send_message("general", "hi", "m1").await.unwrap();
    assert!(matches!(
        ack_or_error(&mut alice).await,
        ServerFrame::Ack { .. }
    ));
    // An edit on node a reaches bob on node b.
    alice.edit("general", 1, "hello", "e1").await.unwrap();
    let ack = ack_or_error(&mut alice).await;
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    let edited = next_of(&mut bob, |f| matches!(f, ServerFrame::Edited { .. })).await;
    assert!(
        matches!(&edited, ServerFrame::Edited { seq, data, event_seq, .. } if seq.0 == 1 && data == "hello" && event_seq.0 == 2),
        "{edited:?}"
    );
    // A reaction on node b reaches alice on node a, with the counts.
    bob.react("general", 1, "👍", true, "r1").await.unwrap();
    assert!(matches!(
        ack_or_error(&mut bob).await,
        ServerFrame::Ack { .. }
    ));
    let reaction = next_of(&mut alice, |f| matches!(f, ServerFrame::Reaction { .. })).await;
    assert!(
        matches!(&reaction, ServerFrame::Reaction { user, counts, event_seq, .. } if user.as_str() == "bob" && counts.get("👍") == Some(&1) && event_seq.0 == 3),
        "{reaction:?}"
    );
    // So does bob's read mark, and it is kept for his next join on the other node.
    bob.read("general", 3).await.unwrap();
    let read = next_of(&mut alice, |f| matches!(f, ServerFrame::Read { .. })).await;
    assert!(
        matches!(&read, ServerFrame::Read { user, seq, .. } if user.as_str() == "bob" && seq.0 == 3),
        "{read:?}"
    );
    alice.delete("general", 1, "d1").await.unwrap();
    assert!(matches!(
        ack_or_error(&mut alice).await,
        ServerFrame::Ack { .. }
    ));
    let deleted = next_of(&mut bob, |f| matches!(f, ServerFrame::Deleted { .. })).await;
    assert!(
        matches!(&deleted, ServerFrame::Deleted { seq, event_seq, .. } if seq.0 == 1 && event_seq.0 == 4),
        "{deleted:?}"
    );
    let mut bob_again = Client::connect(&a.ws_url("bob")).await.unwrap();
    bob_again.join("general", Some(1)).await.unwrap();
    let mut replayed = Vec::new();
    let last_read = loop {
        match bob_again.next_within(WAIT).await.unwrap() {
            ServerFrame::Joined { last_read, .. } => break last_read,
            ServerFrame::Presence { .. } | ServerFrame::Message { .. } => {}
            other => replayed.push(other),
        }
    };
    assert_eq!(last_read.0, 3, "the read mark made on node b");
    // Resume on node a replays what was missed after seq 1: the edit, the reaction and the
    // deletion, in order (frames may follow `joined`).
    while replayed.len() < 3 {
        match bob_again.next_within(WAIT).await.unwrap() {
            ServerFrame::Presence { .. } | ServerFrame::Message { .. } => {}
            other => replayed.push(other),
        }
    }
    assert!(
        matches!(
            replayed.as_slice(),
            [
                ServerFrame::Edited { .. },
                ServerFrame::Reaction { .. },
                ServerFrame::Deleted { .. }
            ]
        ),
        "{replayed:?}"
    );
    // History on either node shows the room as it is now: message 1 is gone.
    let (status, body) = get_json(&format!("http://{}/rooms/general/messages", b.addr)).await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"].as_array().unwrap().len(), 0, "{body}");
    let _ = (a, b);
}

/// The next frame of the kind `want` picks (others, such as presence and the user's own
/// echoes, are passed over).
async fn next_of(c: &mut Client, want: fn(&ServerFrame) -> bool) -> ServerFrame {
    loop {
        let frame = c.next_within(WAIT).await.unwrap();
        if want(&frame) {
            return frame;
        }
    }
}

/// A webhook receiver that answers 503 to its first `fail_first` POSTs, then 204; it keeps
/// every event it took.
async fn webhook_receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>) {
    use axum::http::StatusCode;
    let taken: Arc<Mutex<Vec<Value>>> = Arc::default();
    let posts = Arc::new(AtomicUsize::new(0));
    let (t, p) = (taken.clone(), posts.clone());
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (taken, posts) = (t.clone(), p.clone());
            async move {
                if posts.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let batch: Value = serde_json::from_slice(&body).unwrap();
                taken
                    .lock()
                    .unwrap()
                    .extend(batch["events"].as_array().unwrap().iter().cloned());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, taken, posts)
}

/// Webhooks in a cluster: entries written on two nodes reach the backend once each by id (the
/// outbox is in the stream, each entry's event in the entry's batch), in commit order, with the
/// room's seqs gap-free, though the backend refused the first POSTs; connections' events too.
#[tokio::test]
async fn webhooks_deliver_both_nodes_events_in_commit_order() {
    let Some(nats) = nats::NatsServer::start() else {
        return;
    };
    let (hook_url, taken, posts) = webhook_receiver(3).await;
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let extra = ["--webhook-url", hook_url.as_str()];
    let (a, b) = (node(&dir, &url, "a", &extra), node(&dir, &url, "b", &extra));
    let mut alice = joined(&a, "alice", "general", None).await;
    let mut bob = joined(&b, "bob", "general", None).await;
    for i in 0..5 {
        alice
            .send_message("general", &format!("a{i}"), &format!("a{i}"))
            .await
            .unwrap();
        assert!(matches!(
            ack_or_error(&mut alice).await,
            ServerFrame::Ack { .. }
        ));
        bob.send_message("general", &format!("b{i}"), &format!("b{i}"))
            .await
            .unwrap();
        assert!(matches!(
            ack_or_error(&mut bob).await,
            ServerFrame::Ack { .. }
        ));
    }
    alice.edit("general", 1, "a0 (edited)", "e1").await.unwrap();
    assert!(matches!(
        ack_or_error(&mut alice).await,
        ServerFrame::Ack { .. }
    ));
    bob.react("general", 1, "👍", true, "r1").await.unwrap();
    assert!(matches!(
        ack_or_error(&mut bob).await,
        ServerFrame::Ack { .. }
    ));
    bob.close().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        // Once each by id, in the order first taken.
        let mut seen = BTreeSet::new();
        let events: Vec<Value> = taken
            .lock()
            .unwrap()
            .iter()
            .filter(|e| seen.insert(e["id"].as_u64().unwrap()))
            .cloned()
            .collect();
        if events.iter().any(|e| e["event"] == "disconnect") {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "webhook events so far: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        posts.load(Ordering::SeqCst) > 3,
        "refused POSTs were retried"
    );
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "commit order: {ids:?}");
    let entry_seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| match e["event"].as_str().unwrap() {
            "message" => e["seq"].as_u64(),
            "edit" | "reaction" | "delete" => e["eventSeq"].as_u64(),
            _ => None,
        })
        .collect();
    assert_eq!(entry_seqs, (1..=12).collect::<Vec<_>>(), "{events:#?}");
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(
        (count("connect"), count("join"), count("disconnect")),
        (2, 2, 1),
        "{events:#?}"
    );
    let reaction = events.iter().find(|e| e["event"] == "reaction").unwrap();
    assert_eq!(reaction["counts"]["👍"], 1);
    let _ = (a, b, alice);
}

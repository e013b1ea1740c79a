//! Reserved capacity (the original's reserved concurrency): a message flood cannot hold up
//! logins. `$connect`/`$disconnect` have their own budget (`connect-concurrency`) apart from
//! frame handling (`message-concurrency`), and the SQLite writer takes connection-table
//! commands from a priority lane before queued appends.
//!
//! No assertion here is about time, beyond the usual generous timeouts: the latencies are
//! printed (`--nocapture`) for docs/security.md.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, WAIT, until};
use dynamowave_client::Client;
use dynamowave_core::ports::{ConnectionRecord, ConnectionStore, MessageLog, NewMessage};
use dynamowave_core::protocol::{Mode, ServerFrame};
use dynamowave_core::{ConnectionId, RoomId, UserName};
use dynamowave_server::ServerConfig;
use dynamowave_server::config::LimitsConfig;
use dynamowave_server::hub::Hub;
use dynamowave_store_sqlite::SqliteStore;

const NEW_CLIENTS: usize = 20;
const FLOODERS: usize = 16;
/// Bounds each flooder's loop, whatever happens to the stop flag.
const MAX_FLOOD_FRAMES: usize = 200_000;

fn summary(label: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "{label}: n={} min {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms.len(),
        ms[0],
        p(0.5),
        p(0.9),
        ms[ms.len() - 1]
    )
}

/// Connects `NEW_CLIENTS` clients at once; each joins `lobby`. Returns the times to
/// `connected` (`$connect` done) and from then to `joined`, in ms.
async fn connect_and_join(server: &TestServer, tag: &str) -> (Vec<f64>, Vec<f64>) {
    let tasks: Vec<_> = (0..NEW_CLIENTS)
        .map(|i| {
            let url = server.ws_url(&format!("{tag}-{i}"));
            tokio::spawn(async move {
                let start = Instant::now();
                let mut client = tokio::time::timeout(WAIT, Client::connect(&url))
                    .await
                    .expect("$connect completes within the timeout")
                    .expect("the connection is accepted");
                let connected = start.elapsed();
                client.join("lobby", None).await.unwrap();
                until(&mut client, |f| matches!(f, ServerFrame::Joined { .. })).await;
                let joined = start.elapsed() - connected;
                (client, connected, joined)
            })
        })
        .collect();
    let mut connect_ms = Vec::new();
    let mut join_ms = Vec::new();
    let mut clients = Vec::new();
    for task in tasks {
        let (client, connected, joined) = task.await.unwrap();
        connect_ms.push(connected.as_secs_f64() * 1000.0);
        join_ms.push(joined.as_secs_f64() * 1000.0);
        clients.push(client);
    }
    for client in clients {
        let _ = client.close().await;
    }
    (connect_ms, join_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_complete_while_a_message_flood_saturates_sendmessage() {
    // No per-connection rate, so the flood reaches the store; a small frame budget, so the
    // flooders hold all of it all the time.
    let server = TestServer::start_with(ServerConfig {
        limits: LimitsConfig {
            message_concurrency: 8,
            ..ServerConfig::unthrottled().limits
        },
        ..ServerConfig::unthrottled()
    })
    .await;

    // A first round opens the store's reader connections and creates the room.
    connect_and_join(&server, "warm").await;
    let (connect_idle, join_idle) = connect_and_join(&server, "idle").await;

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for f in 0..FLOODERS {
        let mut client = server.v1(&format!("flooder-{f}")).await;
        let room = format!("flood-{f}");
        client.join(&room, None).await.unwrap();
        until(&mut client, |fr| matches!(fr, ServerFrame::Joined { .. })).await;
        let (mut tx, mut rx) = client.split();
        let stop_writing = stop.clone();
        flood.push(tokio::spawn(async move {
            for i in 0..MAX_FLOOD_FRAMES {
                if stop_writing.load(Ordering::Relaxed) {
                    break;
                }
                let frame = serde_json::json!({"action": "sendmessage", "room": room, "data": "flood", "id": format!("m{i}")});
                if tx.send_text(frame.to_string()).await.is_err() {
                    break;
                }
            }
        }));
        let acked = acks.clone();
        flood.push(tokio::spawn(async move {
            while let Ok(text) = rx.next_text().await {
                if text.starts_with(r#"{"type":"ack""#) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The flood is on once acks flow.
    let deadline = Instant::now() + WAIT;
    while acks.load(Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "the flood did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let acks_before = acks.load(Ordering::Relaxed);
    let flood_start = Instant::now();
    let (connect_flood, join_flood) = connect_and_join(&server, "busy").await;
    let flood_rate =
        (acks.load(Ordering::Relaxed) - acks_before) as f64 / flood_start.elapsed().as_secs_f64();

    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.abort();
    }

    println!("{}", summary("$connect, no flood        ", connect_idle));
    println!("{}", summary("join after it, no flood   ", join_idle));
    println!(
        "{}",
        summary(&format!("$connect, {FLOODERS} flooders    "), connect_flood)
    );
    println!(
        "{}",
        summary(&format!("join after it, {FLOODERS} flooders"), join_flood)
    );
    println!("the flood meanwhile: {flood_rate:.0} acked messages/s (message-concurrency 8)");
}

/// The SQLite writer's priority lane: with thousands of appends queued, a connection record is
/// committed in one of the next batches, not after the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_overtake_a_deep_queue_of_appends() {
    const APPENDS: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path(), Arc::new(Hub::default())).unwrap());
    let room = RoomId::parse("deep").unwrap();
    store.create_room(&room).await.unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let appends: Vec<_> = (0..APPENDS)
        .map(|i| {
            let (store, done, room) = (store.clone(), done.clone(), room.clone());
            tokio::spawn(async move {
                store
                    .append(NewMessage {
                        room,
                        id: format!("m{i}"),
                        user: UserName::parse("flood").unwrap(),
                        data: "x".repeat(100),
                        event: None,
                    })
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    // The writer is busy and the queue is deep once the first appends come back.
    while done.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let done_at_send = done.load(Ordering::Relaxed);
    let start = Instant::now();
    let record = ConnectionRecord {
        id: ConnectionId::generate(),
        user: UserName::parse("login").unwrap(),
        mode: Mode::V1,
        source_ip: "127.0.0.1".into(),
        user_agent: "test".into(),
        connected_at: 0,
    };
    store.insert(&record).await.unwrap();
    let latency = start.elapsed();
    let done_at_commit = done.load(Ordering::Relaxed);

    for task in appends {
        task.await.unwrap();
    }
    let total = start.elapsed();
    println!(
        "login commit with {APPENDS} appends queued: {:.1} ms ({done_at_send} appends done when it \
         was sent, {done_at_commit} when it was committed); all appends done after {:.1} ms",
        latency.as_secs_f64() * 1000.0,
        total.as_secs_f64() * 1000.0
    );
    assert!(
        APPENDS - done_at_commit >= APPENDS / 2,
        "the login waited behind the queue: {done_at_commit} of {APPENDS} appends were done first"
    );
    let listed = store.list().await.unwrap();
    assert!(listed.iter().any(|(r, _)| r.id == record.id));
    store.shutdown().await;
}

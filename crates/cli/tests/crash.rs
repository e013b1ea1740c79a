//! The durability contract under crashes: writers send with ids and record every ack, readers
//! follow the room with `join {after}`, and the server is killed with SIGKILL at random moments
//! and restarted on the same data directory, again and again. Afterwards:
//! - every acked message is in the history exactly once, with the seq its ack named;
//! - seqs run 1, 2, 3, ... with no gap and none reused;
//! - every message a writer retried (same id after a failure) is stored once;
//! - every reader saw every message once, in order.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ServerProcess, free_listen_addr};
use dynamowave_client::Client;
use dynamowave_core::protocol::ServerFrame;
use rand::Rng;

const WRITERS: usize = 4;
const READERS: usize = 2;
const KILLS: usize = 6;
const ROOM: &str = "crash";

/// Connects and joins, retrying while the server is down.
async fn connect(url: &str, after: Option<u64>) -> Client {
    loop {
        if let Ok(mut c) = Client::connect(url).await
            && c.join(ROOM, after).await.is_ok()
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Sends messages one after another until `stop`; a message counts only once acked, and an
/// unacked one is sent again with the same id after reconnecting. Returns id → acked seq and
/// how many sends had to be retried.
async fn writer(url: String, w: usize, stop: Arc<AtomicBool>) -> (BTreeMap<String, u64>, usize) {
    let mut acked = BTreeMap::new();
    let mut retries = 0;
    let mut client = connect(&url, None).await;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{w}-{n}");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), client.send_and_ack(ROOM, &id, &id))
                .await
            {
                Ok(Ok((ServerFrame::Ack { seq, .. }, _))) => {
                    acked.insert(id.clone(), seq.0);
                    break;
                }
                _ => {
                    retries += 1;
                    client = connect(&url, None).await;
                }
            }
        }
        n += 1;
        // Writers are chatty, not a flood: the run spans every kill.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (acked, retries)
}

/// Follows the room, resuming after the last seq it saw whenever the connection drops, until it
/// has seen `until` messages. Returns what it saw, in order.
async fn reader(url: String, seen: Arc<Mutex<Vec<(u64, String)>>>, until: Arc<AtomicUsize>) {
    let mut client = connect(&url, Some(0)).await;
    loop {
        if seen.lock().unwrap().len() >= until.load(Ordering::Relaxed) {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
            Ok(Ok(ServerFrame::Message(m))) => seen.lock().unwrap().push((m.seq.0, m.id.clone())),
            Ok(Ok(_)) => {}
            _ => {
                let last = seen.lock().unwrap().last().map_or(0, |(seq, _)| *seq);
                client = connect(&url, Some(last)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_repeated_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_listen_addr();
    let url = format!("ws://{listen}/ws?name=crash-test");
    let mut server = Some(ServerProcess::start(
        dir.path(),
        &["--listen", &listen],
        &[],
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicUsize::new(usize::MAX));
    let views: Vec<_> = (0..READERS)
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    let readers: Vec<_> = views
        .iter()
        .map(|v| tokio::spawn(reader(url.clone(), v.clone(), until.clone())))
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(url.clone(), w, stop.clone())))
        .collect();

    // Kill at random moments while the writers are busy.
    for _ in 0..KILLS {
        let pause = rand::rng().random_range(150..500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.take().unwrap().kill_9();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dir = dir.path().to_owned();
        let listen = listen.clone();
        server = Some(
            tokio::task::spawn_blocking(move || {
                ServerProcess::start(&dir, &["--listen", &listen], &[])
            })
            .await
            .unwrap(),
        );
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut retries = 0;
    for w in writers {
        let (mine, r) = tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .unwrap()
            .unwrap();
        acked.extend(mine);
        retries += r;
    }
    let total = acked.len();
    until.store(total, Ordering::Relaxed);
    assert!(
        total > 100,
        "the writers got work done between the kills ({total} acked)"
    );
    eprintln!("crash test: {total} messages acked, {retries} sends retried across {KILLS} kills");
    assert!(
        retries > 0,
        "the kills interrupted some sends (else the test proved nothing)"
    );

    // The stored history, read through the management API.
    let http = reqwest_like_get(&listen).await;
    let seqs: Vec<u64> = http.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "seqs 1..n, no gap, none reused"
    );
    let mut ids: Vec<&str> = http.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        total,
        "every id stored exactly once, retries included"
    );
    for (seq, id) in &http {
        assert_eq!(
            acked.get(id),
            Some(seq),
            "{id} is stored with the seq its ack named"
        );
    }

    for r in readers {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .unwrap()
            .unwrap();
    }
    for view in &views {
        assert_eq!(
            *view.lock().unwrap(),
            http,
            "a resuming reader saw every message once, in order"
        );
    }
    drop(server);
}

/// The whole room's history as (seq, id), paging `GET /rooms/{room}/messages?after=`.
async fn reqwest_like_get(listen: &str) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let body = http_get(
            listen,
            &format!("/rooms/{ROOM}/messages?after={after}&limit=500"),
        )
        .await;
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        for m in page["messages"].as_array().unwrap() {
            all.push((
                m["seq"].as_u64().unwrap(),
                m["id"].as_str().unwrap().to_owned(),
            ));
        }
        after = all.last().map_or(0, |(seq, _)| *seq);
        if page["more"] != true {
            return all;
        }
    }
}

/// A minimal HTTP/1.1 GET over a plain TCP socket (the management API answers loopback).
async fn http_get(listen: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

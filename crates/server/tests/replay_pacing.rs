//! A long `join {after}` replay into a busy room: the live messages committed while the replay
//! runs would overflow the connection's queue (and close it with 1013); instead the replay
//! takes them from the log, and the client gets every message once, in order, still open.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestServer, WAIT};
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;

/// History before the join: 20 pages of replay.
const BEFORE: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_into_a_busy_room_is_not_closed_and_has_no_gap() {
    let config = ServerConfig {
        // Small, so that the commits made during the replay would overflow it many times.
        outbound_queue: 16,
        ..ServerConfig::unthrottled()
    };
    let server = TestServer::start_with(config).await;
    let mut writer = server.v1("writer").await;
    writer.join("busy", None).await.unwrap();
    for i in 1..=BEFORE {
        writer
            .send_message("busy", &format!("m{i}"), &format!("w{i}"))
            .await
            .unwrap();
    }
    // Until every one is acked (the writer reads ahead: they commit in batches).
    let mut acked = 0;
    while acked < BEFORE {
        if let ServerFrame::Ack { .. } = writer.next_within(WAIT).await.unwrap() {
            acked += 1;
        }
    }

    // The writer keeps committing, one message per commit, while the reader replays.
    let stop = Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = BEFORE;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                writer
                    .send_and_ack("busy", &format!("m{i}"), &format!("w{i}"))
                    .await
                    .unwrap();
            }
            i
        })
    };

    let mut reader = server.v1("reader").await;
    reader.join("busy", Some(0)).await.unwrap();
    let mut next = 1;
    let mut joined = false;
    // Every message from 1 on, once and in order, well past the end of the replay.
    while next <= BEFORE + 500 {
        match reader.next_within(WAIT).await {
            Ok(ServerFrame::Message(m)) => {
                assert!(joined, "joined comes first");
                assert_eq!(m.seq.0, next, "no gap, no duplicate");
                assert_eq!(m.data, format!("m{next}"));
                next += 1;
            }
            Ok(ServerFrame::Joined { .. }) => joined = true,
            Ok(ServerFrame::Presence { .. }) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("the reader was closed at seq {next}: {e:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let last = sending.await.unwrap();
    while next <= last {
        match reader.next_within(WAIT).await.unwrap() {
            ServerFrame::Message(m) => {
                assert_eq!(m.seq.0, next);
                next += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

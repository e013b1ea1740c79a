//! Issue 5 item 5: one reader that stops reading cannot hurt the others or the server, with the
//! real `dynamowave` binary.
//!
//! One v1 client joins a room and then never reads its socket again (it is held, never polled:
//! the client library has no background reader). 50 other readers in the room read everything,
//! and one writer sends [`MESSAGES`] messages of [`MESSAGE_BYTES`] with ids, pipelined as fast
//! as the server acks them. The test shows that:
//!
//! - the stalled reader is closed by the server with 1013 ("too slow") once its bounded outbound
//!   queue (`--outbound-queue 64`) is full: when it reads again it finds what the socket buffers
//!   held (messages 1..=k, in order, k < [`MESSAGES`]) and then the 1013 close frame;
//! - every live reader received every message exactly once, in seq order (delivery ratio 1.0);
//! - the server's memory stays flat: its peak RSS (`VmHWM` in `/proc/<pid>/status`) grows by
//!   well under half of the stalled reader's backlog ([`MESSAGES`] × [`MESSAGE_BYTES`]), which
//!   is what buffering that backlog would have taken;
//! - the stalled reader can resume: it reconnects, joins with `after` = the last seq it
//!   processed, and gets the rest exactly once (protocol §9).
//!
//! Sizes: 1500 messages of 16 KiB make a 24 MiB backlog, several times what the loopback socket
//! buffers of the stalled connection hold (the kernel grows the send buffer to at most 4 MiB, and
//! a receiver that never reads keeps its small initial receive buffer) plus the 64-frame queue
//! (~1 MiB), so the stalled reader is certainly cut off (after ~240 messages here). 24 MiB is
//! also large against what the server legitimately uses for 52 busy connections (a write buffer
//! of up to ~150 KiB each, the SQLite page cache: ~6 MiB measured), so the memory assertion tells
//! "bounded" apart from "buffers the backlog" (with an unbounded queue the peak grows by ~40
//! MiB). And it is small enough that the 51 fan-out copies (~1.2 GiB of frames) take about ten
//! seconds in a debug build on two cores.
//!
//! No timing is asserted; the timeouts only turn a hang into a failure. Two choices keep the
//! test deterministic:
//! - The writer never runs more than [`LEAD`] messages ahead of the slowest *live* reader (the
//!   stalled one is not counted), and [`LEAD`] is below the queue size, so a live reader that
//!   is briefly starved of CPU in a loaded debug build can never be taken for a slow consumer.
//!   The stalled reader is cut off by the server alone.
//! - `--write-timeout-ms` is raised: once the stalled connection's socket is full, the server's
//!   write to it blocks, and with the default 10 s timeout the connection would be dropped
//!   without a close frame (1006) if the rest of the run took longer than that; with a long
//!   timeout the 1013 close frame is written as soon as the reader reads again, and can be
//!   asserted exactly.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::ServerProcess;
use dynamowave_client::{Client, ClientError};
use dynamowave_core::protocol::ServerFrame;
use tokio::sync::Notify;

/// Live readers that read at full rate (besides the writer, which reads its own echo).
const LIVE_READERS: usize = 50;
/// Messages the writer sends.
const MESSAGES: u64 = 1500;
/// Size of each message's `data`.
const MESSAGE_BYTES: usize = 16 * 1024;
/// The server's `--outbound-queue`.
const OUTBOUND_QUEUE: u64 = 64;
/// How far the writer may run ahead of the slowest live reader; below [`OUTBOUND_QUEUE`].
const LEAD: u64 = 32;
/// Unacked messages the writer may have in flight.
const ACK_WINDOW: u64 = 16;
const ROOM: &str = "slow-readers";
/// Only against hangs: nothing here should take more than a fraction of it.
const WAIT: Duration = Duration::from_secs(60);

fn message_id(seq: u64) -> String {
    format!("msg-{seq}")
}

/// The writer's pacing: what every live member has read, and what was acked.
struct Progress {
    /// Messages read by each live reader, and by the writer's own connection (last slot).
    read: Vec<AtomicU64>,
    acked: AtomicU64,
    changed: Notify,
}

impl Progress {
    fn record_read(&self, member: usize, count: u64) {
        self.read[member].store(count, Ordering::Release);
        self.changed.notify_one();
    }

    fn slowest(&self) -> u64 {
        self.read
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
#[derive(Clone, Copy, Debug)]
struct Memory {
    rss: u64,
    hwm: u64,
}

fn memory_of(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cannot read {line:?}"));
        kib * 1024
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Connects as `name`, joins the room from now on, and waits for `joined`.
async fn joined_client(server: &ServerProcess, name: &str) -> Client {
    let mut client = Client::connect(&server.ws_url(name)).await.unwrap();
    client.join(ROOM, None).await.unwrap();
    loop {
        match client.next_within(WAIT).await.unwrap() {
            ServerFrame::Joined { seq, .. } => {
                assert_eq!(seq.0, 0, "the room is empty when {name} joins");
                return client;
            }
            ServerFrame::Presence { .. } => {}
            other => panic!("{name}: unexpected {other:?} before joined"),
        }
    }
}

/// Checks one message frame against what the writer sent as `seq`.
fn check_message(who: &str, m: &dynamowave_core::protocol::ChatMessage, seq: u64) {
    assert_eq!(
        m.seq.0, seq,
        "{who}: messages arrive once each, in seq order"
    );
    assert_eq!(
        m.id,
        message_id(seq),
        "{who}: seq {seq} is the writer's message"
    );
    assert_eq!(m.data.len(), MESSAGE_BYTES, "{who}: seq {seq} is complete");
}

/// Reads until it has every message; returns how many it got (all of them, in order, once each,
/// or it panics).
async fn live_reader(mut client: Client, member: usize, progress: Arc<Progress>) -> u64 {
    let who = format!("live reader {member}");
    let mut count = 0;
    while count < MESSAGES {
        match client.next_within(WAIT).await {
            Ok(ServerFrame::Message(m)) => {
                count += 1;
                check_message(&who, &m, count);
                progress.record_read(member, count);
            }
            Ok(ServerFrame::Presence { .. }) => {}
            Ok(other) => panic!("{who}: unexpected {other:?}"),
            Err(e) => panic!("{who} lost the connection after {count} messages: {e}"),
        }
    }
    let _ = client.close().await;
    count
}

/// Sends every message with an id, keeping at most [`ACK_WINDOW`] unacked and at most [`LEAD`]
/// ahead of the slowest live reader. Its own connection is a member too and reads its echo.
async fn writer(client: Client, member: usize, progress: Arc<Progress>) {
    let (mut tx, mut rx) = client.split();
    let reading = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let (mut acked, mut echoed) = (0, 0);
            while acked < MESSAGES || echoed < MESSAGES {
                let text = tokio::time::timeout(WAIT, rx.next_text())
                    .await
                    .expect("the writer hears from the server")
                    .expect("the writer stays connected");
                match serde_json::from_str::<ServerFrame>(&text).unwrap() {
                    ServerFrame::Ack {
                        id, seq, duplicate, ..
                    } => {
                        acked += 1;
                        assert_eq!(id, message_id(acked), "acks come in send order");
                        assert_eq!(seq.0, acked, "message {acked} is seq {acked}");
                        assert!(!duplicate, "{id} was sent once");
                        progress.acked.store(acked, Ordering::Release);
                        progress.changed.notify_one();
                    }
                    ServerFrame::Message(m) => {
                        echoed += 1;
                        check_message("the writer's echo", &m, echoed);
                        progress.record_read(member, echoed);
                    }
                    ServerFrame::Presence { .. } => {}
                    other => panic!("writer: unexpected {other:?}"),
                }
            }
        })
    };
    let padding = "x".repeat(MESSAGE_BYTES);
    for seq in 1..=MESSAGES {
        loop {
            let changed = progress.changed.notified();
            let acked = progress.acked.load(Ordering::Acquire);
            if seq <= acked + ACK_WINDOW && seq <= progress.slowest() + LEAD {
                break;
            }
            tokio::time::timeout(WAIT, changed)
                .await
                .unwrap_or_else(|_| panic!("no progress while waiting to send {seq}"));
        }
        let frame = serde_json::json!({
            "action": "sendmessage",
            "room": ROOM,
            "id": message_id(seq),
            "data": padding,
        });
        tx.send_text(frame.to_string()).await.unwrap();
    }
    reading.await.unwrap();
    let _ = tx.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_closed_with_1013_the_others_get_everything_and_memory_stays_flat() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let queue = OUTBOUND_QUEUE.to_string();
    let server = ServerProcess::start(
        dir.path(),
        &["--outbound-queue", &queue, "--write-timeout-ms", "600000"],
        &[],
    );
    let pid = server.pid();

    // The stalled reader joins first, then is held and never polled until the end.
    let mut stalled = joined_client(&server, "stalled").await;
    let mut live = Vec::new();
    for r in 0..LIVE_READERS {
        live.push(joined_client(&server, &format!("live-{r}")).await);
    }
    let writer_client = joined_client(&server, "writer").await;
    // A moment for the presence frames of the last joins to be written out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = memory_of(pid);
    println!(
        "slow readers: {} connections joined; server baseline VmRSS {:.1} MiB (VmHWM {:.1} MiB)",
        LIVE_READERS + 2,
        mib(baseline.rss),
        mib(baseline.hwm)
    );

    let progress = Arc::new(Progress {
        read: (0..=LIVE_READERS).map(|_| AtomicU64::new(0)).collect(),
        acked: AtomicU64::new(0),
        changed: Notify::new(),
    });
    let readers: Vec<_> = live
        .into_iter()
        .enumerate()
        .map(|(r, client)| tokio::spawn(live_reader(client, r, progress.clone())))
        .collect();
    let sending = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(300),
        writer(writer_client, LIVE_READERS, progress.clone()),
    )
    .await
    .expect("the writer finishes");
    for (r, reader) in readers.into_iter().enumerate() {
        let count = tokio::time::timeout(WAIT, reader)
            .await
            .unwrap_or_else(|_| panic!("live reader {r} finishes"))
            .unwrap();
        assert_eq!(count, MESSAGES, "live reader {r}: delivery ratio 1.0");
    }
    let send_time = sending.elapsed();

    let end = memory_of(pid);
    let backlog = MESSAGES * MESSAGE_BYTES as u64;
    let growth = end.hwm.saturating_sub(baseline.rss);
    println!(
        "slow readers: {MESSAGES} messages of {} KiB sent and read by {LIVE_READERS} live readers \
         in {:.1} s; server VmRSS now {:.1} MiB, VmHWM {:.1} MiB: peak growth {:.1} MiB over the \
         baseline, against a stalled backlog of {:.1} MiB (limit: half, {:.1} MiB)",
        MESSAGE_BYTES / 1024,
        send_time.as_secs_f64(),
        mib(end.rss),
        mib(end.hwm),
        mib(growth),
        mib(backlog),
        mib(backlog / 2)
    );
    assert!(
        growth < backlog / 2,
        "the server's memory grew by {:.1} MiB: it buffers the stalled reader's backlog \
         ({:.1} MiB) instead of bounding it",
        mib(growth),
        mib(backlog)
    );

    // The stalled reader reads again: what the socket buffers held, in order, then the 1013.
    let mut last = 0;
    let (code, reason) = loop {
        match stalled.next_within(WAIT).await {
            Ok(ServerFrame::Message(m)) => {
                last += 1;
                check_message("the stalled reader", &m, last);
            }
            Ok(ServerFrame::Presence { .. }) => {}
            Ok(other) => panic!("stalled reader: unexpected {other:?}"),
            Err(ClientError::Closed { code, reason }) => break (code, reason),
            Err(e) => panic!("stalled reader: {e}"),
        }
    };
    println!(
        "slow readers: the stalled reader got messages 1..={last} of {MESSAGES}, then close \
         {code} {reason:?}"
    );
    assert_eq!(
        code, 1013,
        "the stalled reader is closed as a slow consumer"
    );
    assert!(reason.contains("too slow"), "{reason}");
    assert!(
        last < MESSAGES,
        "the stalled reader was cut off ({last} delivered)"
    );
    drop(stalled);
    // Counted once (issue 7), however many fan-outs found its queue full.
    let page = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.lines()
            .any(|l| l == "dynamowave_slow_consumer_closes_total 1"),
        "dynamowave_slow_consumer_closes_total is not 1:\n{page}"
    );

    // And resumes: join after the last seq it processed, get the rest once each.
    let mut resumed = Client::connect(&server.ws_url("stalled")).await.unwrap();
    resumed.join(ROOM, Some(last)).await.unwrap();
    match resumed.next_within(WAIT).await.unwrap() {
        ServerFrame::Joined { seq, .. } => {
            assert_eq!(seq.0, MESSAGES, "the head is the last message")
        }
        other => panic!("resumed reader: unexpected {other:?} before joined"),
    }
    for seq in last + 1..=MESSAGES {
        match resumed.next_within(WAIT).await.unwrap() {
            ServerFrame::Message(m) => check_message("the resumed reader", &m, seq),
            other => panic!("resumed reader: unexpected {other:?} in the replay"),
        }
    }
    // Nothing more: a reply written after the replay comes next, no message in between.
    resumed.members(ROOM).await.unwrap();
    loop {
        match resumed.next_within(WAIT).await.unwrap() {
            ServerFrame::Members { .. } => break,
            ServerFrame::Presence { .. } => {}
            other => panic!("resumed reader: unexpected {other:?} after the replay"),
        }
    }
    // Not asserted: the replay reads the log in pages of 500 messages (~8 MiB here), a cost of
    // the resume, bounded by the page size and not by the backlog.
    let after_resume = memory_of(pid);
    println!(
        "slow readers: resumed after seq {last} and got {} more messages, each once; server \
         VmHWM after the replay {:.1} MiB; whole test {:.1} s",
        MESSAGES - last,
        mib(after_resume.hwm),
        started.elapsed().as_secs_f64()
    );
    let _ = resumed.close().await;
    drop(server);
}

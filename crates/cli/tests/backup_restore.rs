//! `dynamowave backup` and `dynamowave restore` with the real binary:
//! - backups taken while writers keep sending are consistent (integrity ok, seqs 1..k per room,
//!   every message acked before the backup began is in it), and a restore of each to the instant
//!   it was taken serves exactly what it held, continuing seqs after the old heads;
//! - a point-in-time restore around a deletion brings the deleted message back or not, as the
//!   instant says, seen through the history API of a server started on the restored directory;
//! - bad input fails with a message that says what to fix, and creates nothing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ServerProcess;
use dynamowave_client::Client;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_core::types::{now_ms, rfc3339_ms};

const WAIT: Duration = Duration::from_secs(10);

/// Runs `dynamowave ARGS...` to completion.
fn dynamowave(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(args)
        .env("RUST_LOG", "warn")
        // Errors as users see them, without anyhow's backtrace.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("the dynamowave binary runs")
}

/// Runs `dynamowave ARGS...` and returns its stdout; panics with its stderr if it failed.
fn dynamowave_ok(args: &[&str]) -> String {
    let out = dynamowave(args);
    assert!(
        out.status.success(),
        "dynamowave {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `dynamowave ARGS...`, which must fail, and returns its stderr.
fn dynamowave_fails(args: &[&str]) -> String {
    let out = dynamowave(args);
    assert!(
        !out.status.success(),
        "dynamowave {args:?} should have failed; printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One HTTP/1.1 request over a plain TCP socket (the management API answers loopback clients
/// without a token). Returns the status and the body.
async fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// A message as the history API shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Stored {
    seq: u64,
    id: String,
    data: String,
    ts: u64,
}

/// The room's whole history through `GET /rooms/{room}/messages?after=`, oldest first.
async fn history(addr: &str, room: &str) -> Vec<Stored> {
    let mut all: Vec<Stored> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m.seq);
        let (status, body) = http(
            addr,
            "GET",
            &format!("/rooms/{room}/messages?after={after}&limit=500"),
            None,
        )
        .await;
        assert_eq!(status, 200, "history of {room}: {body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        for m in page["messages"].as_array().unwrap() {
            all.push(Stored {
                seq: m["seq"].as_u64().unwrap(),
                id: m["id"].as_str().unwrap().to_owned(),
                data: m["data"].as_str().unwrap().to_owned(),
                ts: m["ts"].as_u64().unwrap(),
            });
        }
        if page["more"] != true {
            return all;
        }
    }
}

fn open_read_only(file: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

async fn joined(url: &str, room: &str) -> (Client, u64) {
    let mut c = Client::connect(url).await.unwrap();
    c.join(room, None).await.unwrap();
    loop {
        if let ServerFrame::Joined { seq, .. } = c.next_within(WAIT).await.unwrap() {
            return (c, seq.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// a. Backups under write load

const ROOMS: [&str; 2] = ["load-a", "load-b"];
const WRITERS: usize = 4;
const BACKUPS: usize = 4;

/// An ack a writer got: the message's room, id, seq and ts.
#[derive(Debug, Clone)]
struct Acked {
    room: &'static str,
    id: String,
    seq: u64,
    ts: u64,
}

/// Sends to its room until `stop`, recording every ack as soon as it arrives.
async fn writer(url: String, w: usize, acked: Arc<Mutex<Vec<Acked>>>, stop: Arc<AtomicBool>) {
    let room = ROOMS[w % ROOMS.len()];
    let (mut client, _) = joined(&url, room).await;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{w}-{n}");
        let (ack, _) = tokio::time::timeout(WAIT, client.send_and_ack(room, &id, &id))
            .await
            .expect("an ack within 10 s")
            .expect("the server acks while a backup runs");
        let ServerFrame::Ack { seq, ts, .. } = ack else {
            unreachable!()
        };
        acked.lock().unwrap().push(Acked {
            room,
            id,
            seq: seq.0,
            ts,
        });
        n += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A backup file's rows per room as (seq, id, ts), and its `rooms.last_seq` per room.
type BackupRows = BTreeMap<String, Vec<(u64, String, u64)>>;

fn read_backup(file: &Path) -> (u64, BackupRows, BTreeMap<String, u64>) {
    let conn = open_read_only(file);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "{}", file.display());
    let taken_at: i64 = conn
        .query_row("SELECT taken_at FROM snapshot_info", [], |r| r.get(0))
        .unwrap();
    let mut rows = BackupRows::new();
    let mut stmt = conn
        .prepare("SELECT room, seq, id, ts FROM messages ORDER BY room, seq")
        .unwrap();
    let all = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)? as u64,
            ))
        })
        .unwrap();
    for row in all {
        let (room, seq, id, ts) = row.unwrap();
        rows.entry(room).or_default().push((seq, id, ts));
    }
    let mut stmt = conn.prepare("SELECT room, last_seq FROM rooms").unwrap();
    let heads = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    (taken_at as u64, rows, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_under_write_load_are_consistent_and_restore_to_their_instant() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[], &[]);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                server.ws_url(&format!("writer{w}")),
                w,
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Each backup with the acks received before it started.
    let mut backups = Vec::new();
    for b in 0..BACKUPS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let file = out.path().join(format!("backup-{b}.sqlite3"));
        let acked_before = acked.lock().unwrap().clone();
        let started = now_ms();
        let args = [
            "backup".to_owned(),
            path(&file).to_owned(),
            "--data-dir".to_owned(),
            path(data.path()).to_owned(),
        ];
        let summary = tokio::task::spawn_blocking(move || {
            dynamowave_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        assert!(
            summary.starts_with(&format!("backup {}: taken at ", file.display())),
            "{summary}"
        );
        backups.push((file, acked_before, started));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let total = acked.lock().unwrap().len();
    eprintln!("backup test: {total} messages acked while {BACKUPS} backups were taken");

    let mut previous = 0;
    for (i, (file, acked_before, started)) in backups.iter().enumerate() {
        let (taken_at, rows, heads) = read_backup(file);
        assert!(
            taken_at >= *started,
            "taken_at is measured after the command began"
        );
        let in_backup: usize = rows.values().map(Vec::len).sum();
        assert!(
            in_backup > previous,
            "backup {i} holds more than the one before: the writers kept writing"
        );
        previous = in_backup;
        for (room, messages) in &rows {
            let seqs: Vec<u64> = messages.iter().map(|(seq, _, _)| *seq).collect();
            assert_eq!(
                seqs,
                (1..=seqs.len() as u64).collect::<Vec<_>>(),
                "backup {i}: {room} holds seqs 1..k with no gap"
            );
            assert_eq!(heads[room], seqs.len() as u64, "backup {i}: head of {room}");
        }
        for a in acked_before {
            let stored = rows
                .get(a.room)
                .and_then(|m| m.get(a.seq as usize - 1))
                .map(|(seq, id, ts)| (*seq, id.as_str(), *ts));
            assert_eq!(
                stored,
                Some((a.seq, a.id.as_str(), a.ts)),
                "backup {i} holds {} (acked before it began) as acked",
                a.id
            );
            assert!(a.ts <= taken_at);
        }

        // Restore to the instant the backup was taken, serve it, and read it back.
        let into = out.path().join(format!("restored-{i}"));
        let summary = dynamowave_ok(&[
            "restore",
            "--from",
            path(file),
            "--to",
            &rfc3339_ms(taken_at),
            "--into",
            path(&into),
        ]);
        assert!(summary.starts_with("restored "), "{summary}");
        let restored = ServerProcess::start(&into, &[], &[]);
        for (room, messages) in &rows {
            let expected: Vec<(u64, String)> = messages
                .iter()
                .filter(|(_, _, ts)| *ts <= taken_at)
                .map(|(seq, id, _)| (*seq, id.clone()))
                .collect();
            let served: Vec<(u64, String)> = history(&restored.addr, room)
                .await
                .into_iter()
                .map(|m| (m.seq, m.id))
                .collect();
            assert_eq!(
                served, expected,
                "restore {i}: {room} serves what the backup held up to its instant"
            );
            let must_have = acked_before.iter().filter(|a| a.room == room).count();
            assert!(
                served.len() >= must_have,
                "restore {i}: {room} lost acked messages"
            );

            // The restored server takes new messages after the backup's head: no seq reused.
            let url = restored.ws_url("after-restore");
            let (mut client, head) = joined(&url, room).await;
            assert_eq!(head, heads[room], "restore {i}: {room} keeps its head");
            let (ack, _) = client
                .send_and_ack(room, "after the restore", "after-restore")
                .await
                .unwrap();
            let ServerFrame::Ack { seq, .. } = ack else {
                unreachable!()
            };
            assert_eq!(
                seq.0,
                heads[room] + 1,
                "restore {i}: {room} continues its seqs"
            );
        }
        drop(restored);
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// b. Deletion and point-in-time restore

const ROOM: &str = "pitr";
/// Between events, so their ms timestamps are well apart.
const PAUSE: Duration = Duration::from_millis(1100);

/// Restores `from` to `to_ms` into a new directory under `out`, starts a server on it and
/// returns the room's history there as (id, data).
async fn restored_history(
    from: &Path,
    to_ms: u64,
    out: &Path,
    name: &str,
) -> Vec<(String, String)> {
    let into = out.join(name);
    let summary = dynamowave_ok(&[
        "restore",
        "--from",
        path(from),
        "--to",
        &rfc3339_ms(to_ms),
        "--into",
        path(&into),
    ]);
    eprintln!("{summary}");
    let server = ServerProcess::start(&into, &[], &[]);
    history(&server.addr, ROOM)
        .await
        .into_iter()
        .map(|m| (m.id, m.data))
        .collect()
}

fn ids(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(id, data)| (id.to_string(), data.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_restore_brings_back_what_was_deleted_later() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[], &[]);
    let (mut client, _) = joined(&server.ws_url("alice"), ROOM).await;
    let mut send = async |id: &str| {
        let (ack, _) = client.send_and_ack(ROOM, id, id).await.unwrap();
        let ServerFrame::Ack { seq, ts, .. } = ack else {
            unreachable!()
        };
        (seq.0, ts)
    };

    let (_, ts_a) = send("A").await;
    tokio::time::sleep(PAUSE).await;
    let (seq_b, ts_b) = send("B").await;
    tokio::time::sleep(PAUSE).await;
    let (status, body) = http(
        &server.addr,
        "DELETE",
        &format!("/rooms/{ROOM}/messages/{seq_b}"),
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "DELETE /rooms/{ROOM}/messages/{seq_b} answered {status}: {body}"
    );
    let deleted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(deleted["seq"], seq_b);
    let deleted_at = deleted["deletedAt"].as_u64().unwrap();
    let (status, _) = http(
        &server.addr,
        "DELETE",
        &format!("/rooms/{ROOM}/messages/999"),
        None,
    )
    .await;
    assert_eq!(status, 404, "no such message");
    tokio::time::sleep(PAUSE).await;
    let (_, ts_c) = send("C").await;
    assert!(ts_a < ts_b && ts_b < deleted_at && deleted_at < ts_c);
    let live: Vec<String> = history(&server.addr, ROOM)
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(live, ["A", "C"], "the live server hides the deleted B");

    // Each restore from the live data directory, with the server still serving on it.
    let before_deletion = ts_b + (deleted_at - ts_b) / 2;
    assert_eq!(
        restored_history(data.path(), before_deletion, out.path(), "before-deletion").await,
        ids(&[("A", "A"), ("B", "B")]),
        "restored to before the deletion: B is back, C not yet sent"
    );
    let after_deletion = deleted_at + (ts_c - deleted_at) / 2;
    assert_eq!(
        restored_history(data.path(), after_deletion, out.path(), "after-deletion").await,
        ids(&[("A", "A")]),
        "restored to after the deletion: B stays deleted, C not yet sent"
    );
    assert_eq!(
        restored_history(data.path(), now_ms(), out.path(), "now").await,
        ids(&[("A", "A"), ("C", "C")]),
        "restored to now: everything but the deleted B"
    );

    // A backup keeps the tombstone too: restoring it to before the deletion brings B back.
    let file = out.path().join("backup.sqlite3");
    dynamowave_ok(&["backup", path(&file), "--data-dir", path(data.path())]);
    assert_eq!(
        restored_history(&file, before_deletion, out.path(), "backup-before-deletion").await,
        ids(&[("A", "A"), ("B", "B")]),
    );
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// c. Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_a_message_that_says_what_to_fix() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[], &[]);
    let (mut client, _) = joined(&server.ws_url("bob"), "r").await;
    client.send_and_ack("r", "hello", "m1").await.unwrap();
    let file = out.path().join("backup.sqlite3");
    dynamowave_ok(&["backup", path(&file), "--data-dir", path(data.path())]);
    let (taken_at, _, _) = read_backup(&file);
    let into = out.path().join("into");
    let into_arg = path(&into);
    let assert_says = |stderr: &str, hint: &str| {
        assert!(
            stderr.contains(hint),
            "the error should say {hint:?}; it was: {stderr}"
        );
    };

    // A backup never overwrites a file.
    let err = dynamowave_fails(&["backup", path(&file), "--data-dir", path(data.path())]);
    assert_says(
        &err,
        "already exists; a backup never overwrites a file, choose a new name",
    );
    // A data directory without a store.
    let err = dynamowave_fails(&[
        "backup",
        path(&out.path().join("other.sqlite3")),
        "--data-dir",
        path(out.path()),
    ]);
    assert_says(&err, "no DynamoWave store in");
    assert_says(&err, "check --data-dir");

    // Restoring into a directory that holds something.
    let err = dynamowave_fails(&[
        "restore",
        "--from",
        path(&file),
        "--to",
        &rfc3339_ms(taken_at),
        "--into",
        path(data.path()),
    ]);
    assert_says(&err, "is not empty; restore into a new or empty directory");

    // An instant after the backup was taken: its state is not in the backup.
    let err = dynamowave_fails(&[
        "restore",
        "--from",
        path(&file),
        "--to",
        &rfc3339_ms(taken_at + 1),
        "--into",
        into_arg,
    ]);
    assert_says(
        &err,
        &format!("holds the state only up to {}", rfc3339_ms(taken_at)),
    );
    assert_says(&err, "choose a time at or before that, or a newer backup");
    // Likewise the future of a live data directory.
    let err = dynamowave_fails(&[
        "restore",
        "--from",
        path(data.path()),
        "--to",
        &rfc3339_ms(now_ms() + 3_600_000),
        "--into",
        into_arg,
    ]);
    assert_says(&err, "choose a time at or before that");

    // Times that are not RFC 3339.
    for bad in [
        "yesterday",
        "2026-01-31 14:05:00",
        "1764253158123",
        "2026-01-31",
    ] {
        let err = dynamowave_fails(&[
            "restore",
            "--from",
            path(&file),
            "--to",
            bad,
            "--into",
            into_arg,
        ]);
        assert_says(&err, "is not an RFC 3339 time");
        assert_says(&err, "write it like 2026-01-31T14:05:00Z");
    }

    // A source that does not exist, or is not a store.
    let err = dynamowave_fails(&[
        "restore",
        "--from",
        path(&out.path().join("missing.sqlite3")),
        "--to",
        "2026-01-31T14:05:00Z",
        "--into",
        into_arg,
    ]);
    assert_says(
        &err,
        "does not exist; --from takes a backup file or a data directory",
    );
    let junk = out.path().join("notes.txt");
    std::fs::write(
        &junk,
        "these are notes, not a SQLite database, but long enough to look like one",
    )
    .unwrap();
    let err = dynamowave_fails(&[
        "restore",
        "--from",
        path(&junk),
        "--to",
        &rfc3339_ms(taken_at),
        "--into",
        into_arg,
    ]);
    assert_says(&err, "is not a DynamoWave backup or store");

    assert!(!into.exists(), "no failed restore left a directory behind");
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "no partial files: {leftovers:?}");
    drop(server);
}

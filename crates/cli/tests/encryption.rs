//! Encryption at rest with the real binary (docs/security.md):
//! - with a key, the database file and its WAL hold no byte of any message body or dead-letter
//!   payload while history and the DLQ through the server return them intact, every row records
//!   its key id, a restart with the same key reads everything, and a backup and its restore
//!   carry the store as it is;
//! - rotation: key A, then A and B (B encrypts), `dynamowave rekey` while the server serves and
//!   takes writes moves every row to B, then B alone reads everything, and A alone is refused
//!   at start with the key id and its row counts;
//! - a store written without a key says so in the log, stays readable once a key is added, and
//!   `rekey` encrypts its plaintext rows;
//! - bad key input stops `serve` (and `rekey`) with a message that says how to make a key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::ServerProcess;
use dynamowave_client::Client;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_store_sqlite::cipher::{encode_key, key_id};
use serde_json::Value;

const KEY_A: [u8; 32] = [0x11; 32];
const KEY_B: [u8; 32] = [0x22; 32];
const STORE: &str = "dynamowave.sqlite3";
const STOP: Duration = Duration::from_secs(15);

fn key_file(dir: &Path, name: &str, key: &[u8; 32]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", encode_key(key))).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn body(i: usize) -> String {
    format!("top-secret-{i:03}-body")
}

/// Runs `dynamowave ARGS...` to completion, with `env` added.
fn dynamowave(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(args)
        .env_remove("DYNAMOWAVE_ENCRYPTION_KEY")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("the dynamowave binary runs")
}

fn stdout_ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stderr_failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed; printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// `dynamowave serve` on `data` with `args`, expected to fail at start: its stderr.
fn serve_fails(data: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["serve", "--data-dir", s(data), "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    stderr_failed(dynamowave(&all, env))
}

/// Sends `range` through a v1 WebSocket client, each acked.
async fn send_ws(server: &ServerProcess, room: &str, range: std::ops::Range<usize>) {
    let mut c = Client::connect(&server.ws_url("alice")).await.unwrap();
    c.join(room, None).await.unwrap();
    for i in range {
        let (ack, _) = tokio::time::timeout(
            Duration::from_secs(10),
            c.send_and_ack(room, &body(i), &format!("m{i}")),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(matches!(ack, ServerFrame::Ack { .. }));
    }
    c.close().await.unwrap();
}

/// Sends `range` through `POST /rooms/{room}/messages`.
async fn send_api(
    http: &reqwest::Client,
    server: &ServerProcess,
    room: &str,
    range: std::ops::Range<usize>,
) {
    for i in range {
        let r = http
            .post(format!("http://{}/rooms/{room}/messages", server.addr))
            .json(&serde_json::json!({"data": body(i), "id": format!("m{i}")}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

/// The room's bodies through the history API, oldest first.
async fn history(http: &reqwest::Client, server: &ServerProcess, room: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let r = http
            .get(format!(
                "http://{}/rooms/{room}/messages?after={after}&limit=100",
                server.addr
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "history of {room}: {}", r.status());
        let page: Value = r.json().await.unwrap();
        for m in page["messages"].as_array().unwrap() {
            all.push(m["data"].as_str().unwrap().to_owned());
            after = m["seq"].as_u64().unwrap();
        }
        if page["more"] != true {
            return all;
        }
    }
}

async fn dlq_payload(http: &reqwest::Client, server: &ServerProcess, id: u64) -> String {
    let r = http
        .get(format!("http://{}/dlq/{id}", server.addr))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "dlq {id}: {}", r.status());
    r.json::<Value>().await.unwrap()["payload"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// (key id, rows) of a table, read straight from the file (a server may be running).
fn key_ids(data: &Path, table: &str) -> Vec<(Option<String>, i64)> {
    let conn = rusqlite::Connection::open_with_flags(
        data.join(STORE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT key_id, count(*) FROM {table} GROUP BY key_id ORDER BY key_id"
        ))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Panics if `file` (when it exists) holds any of `needles`.
fn assert_not_in(file: &Path, needles: &[String]) {
    let Ok(bytes) = std::fs::read(file) else {
        return;
    };
    for needle in needles {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} holds the plaintext {needle:?}",
            file.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_on_disk_is_plaintext_and_everything_reads_back_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = key_file(dir.path(), "a.key", &KEY_A);
    let args = ["--encryption-key-file", s(&key)];
    let http = reqwest::Client::new();

    let server = ServerProcess::start(&data, &args, &[]);
    send_ws(&server, "general", 0..30).await;
    send_api(&http, &server, "general", 30..40).await;
    let payload = "top-secret-dead-letter-payload".to_owned();
    let dl = common::dead_letter(&http, &server, "aaaaaaaaaaaaaaaa", &payload).await;

    // While the server runs, its commits are in the WAL: neither file may hold a body.
    let mut needles: Vec<String> = (0..40).map(body).collect();
    needles.push(payload.clone());
    let wal = data.join(format!("{STORE}-wal"));
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the WAL holds the commits"
    );
    assert_not_in(&data.join(STORE), &needles);
    assert_not_in(&wal, &needles);
    let id_a = Some(key_id(&KEY_A));
    assert_eq!(key_ids(&data, "messages"), [(id_a.clone(), 40)]);
    assert_eq!(key_ids(&data, "dead_letters"), [(id_a.clone(), 1)]);

    assert_eq!(history(&http, &server, "general").await, needles[..40]);
    assert_eq!(dlq_payload(&http, &server, dl).await, payload);

    // A backup of the running server holds ciphertext only.
    let backup = dir.path().join("backup.sqlite3");
    stdout_ok(dynamowave(
        &["backup", s(&backup), "--data-dir", s(&data)],
        &[],
    ));
    assert_not_in(&backup, &needles);
    assert!(server.terminate(STOP).success());
    assert_not_in(&data.join(STORE), &needles);
    assert_not_in(&wal, &needles);

    // Restarted with the key: everything reads.
    let server = ServerProcess::start(&data, &args, &[]);
    assert_eq!(history(&http, &server, "general").await, needles[..40]);
    assert_eq!(dlq_payload(&http, &server, dl).await, payload);
    assert!(server.terminate(STOP).success());

    // Restored from the backup, served with the key: the same.
    let restored = dir.path().join("restored");
    let taken: String = rusqlite::Connection::open(&backup)
        .unwrap()
        .query_row("SELECT taken_at FROM snapshot_info", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|t| dynamowave_core::types::rfc3339_ms(t as u64))
        .unwrap();
    stdout_ok(dynamowave(
        &[
            "restore",
            "--from",
            s(&backup),
            "--to",
            &taken,
            "--into",
            s(&restored),
        ],
        &[],
    ));
    let server = ServerProcess::start(&restored, &args, &[]);
    assert_eq!(history(&http, &server, "general").await, needles[..40]);
    assert!(server.terminate(STOP).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_needs_no_downtime_and_rekey_moves_every_row_to_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, b) = (
        key_file(dir.path(), "a.key", &KEY_A),
        key_file(dir.path(), "b.key", &KEY_B),
    );
    let (id_a, id_b) = (key_id(&KEY_A), key_id(&KEY_B));
    let http = reqwest::Client::new();

    let server = ServerProcess::start(&data, &["--encryption-key-file", s(&a)], &[]);
    send_api(&http, &server, "general", 0..20).await;
    let dl = common::dead_letter(&http, &server, "aaaaaaaaaaaaaaaa", "payload-under-a").await;
    assert!(server.terminate(STOP).success());

    // The new key last: it encrypts, the old one still decrypts.
    let both = [
        "--encryption-key-file",
        s(&a),
        "--encryption-key-file",
        s(&b),
    ];
    let server = ServerProcess::start(&data, &both, &[]);
    send_ws(&server, "general", 20..40).await;
    let mut under = vec![(Some(id_a.clone()), 20), (Some(id_b.clone()), 20)];
    under.sort();
    assert_eq!(key_ids(&data, "messages"), under);
    let expected: Vec<String> = (0..40).map(body).collect();
    assert_eq!(history(&http, &server, "general").await, expected);

    // Rekey while the server serves and takes writes.
    let writer = {
        let (http, addr) = (http.clone(), server.addr.clone());
        tokio::spawn(async move {
            for i in 40..100 {
                let r = http
                    .post(format!("http://{addr}/rooms/general/messages"))
                    .json(&serde_json::json!({"data": body(i), "id": format!("m{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "a write failed during the rekey");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let rekey_args: Vec<String> = [
        "rekey",
        "--data-dir",
        s(&data),
        "--batch",
        "7",
        "--encryption-key-file",
        s(&a),
        "--encryption-key-file",
        s(&b),
    ]
    .map(str::to_owned)
    .to_vec();
    let summary = tokio::task::spawn_blocking(move || {
        stdout_ok(dynamowave(
            &rekey_args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
        ))
    })
    .await
    .unwrap();
    writer.await.unwrap();
    assert!(
        summary.contains(&format!("messages: 20 rewritten (20 from key id {id_a})"))
            && summary.contains(&format!("dead letters: 1 rewritten (1 from key id {id_a})"))
            && summary.contains(&format!("every row is under key id {id_b}")),
        "{summary}"
    );
    assert_eq!(key_ids(&data, "messages"), [(Some(id_b.clone()), 100)]);
    assert_eq!(key_ids(&data, "dead_letters"), [(Some(id_b.clone()), 1)]);
    let expected: Vec<String> = (0..100).map(body).collect();
    assert_eq!(history(&http, &server, "general").await, expected);
    assert!(server.terminate(STOP).success());

    // The old key alone is refused: the rows are under B now.
    let err = serve_fails(&data, &["--encryption-key-file", s(&a)], &[]);
    assert!(
        err.contains(&format!("key id {id_b} (100 messages, 1 dead letters)"))
            && err.contains("Refusing to start"),
        "{err}"
    );
    // Without any key, likewise (the server would otherwise write plaintext next to them).
    let err = serve_fails(&data, &[], &[]);
    assert!(err.contains(&id_b), "{err}");

    // The new key alone reads everything (given through the environment this time).
    let server = ServerProcess::start(
        &data,
        &[],
        &[("DYNAMOWAVE_ENCRYPTION_KEY", &encode_key(&KEY_B))],
    );
    assert_eq!(history(&http, &server, "general").await, expected);
    assert_eq!(dlq_payload(&http, &server, dl).await, "payload-under-a");
    assert!(server.terminate(STOP).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_store_says_so_stays_readable_and_rekey_encrypts_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();

    // Without a key: a warning in the log, once.
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(["serve", "--data-dir", s(&data), "--listen", "127.0.0.1:0"])
        .args(["--messages-per-second", "0"])
        .env_remove("DYNAMOWAVE_ENCRYPTION_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .split("ws://")
        .nth(1)
        .and_then(|r| r.split("/ws").next())
        .unwrap()
        .to_owned();
    for i in 0..10 {
        let r = http
            .post(format!("http://{addr}/rooms/general/messages"))
            .json(&serde_json::json!({"data": body(i), "id": format!("m{i}")}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged.matches("encryption at rest is off").count(),
        1,
        "{logged}"
    );
    assert!(logged.contains("--encryption-key-file"), "{logged}");
    assert_eq!(key_ids(&data, "messages"), [(None, 10)]);

    // A key added: the old rows read as they are, new ones are encrypted.
    let key = encode_key(&KEY_A);
    let env = [("DYNAMOWAVE_ENCRYPTION_KEY", key.as_str())];
    let server = ServerProcess::start(&data, &[], &env);
    send_api(&http, &server, "general", 10..15).await;
    let expected: Vec<String> = (0..15).map(body).collect();
    assert_eq!(history(&http, &server, "general").await, expected);
    assert_eq!(
        key_ids(&data, "messages"),
        [(None, 10), (Some(key_id(&KEY_A)), 5)]
    );

    // Rekey (key from the environment, as serve) while it serves: the plaintext rows too.
    let summary = stdout_ok(dynamowave(&["rekey", "--data-dir", s(&data)], &env));
    assert!(
        summary.contains("messages: 10 rewritten (10 from plaintext)"),
        "{summary}"
    );
    assert_eq!(key_ids(&data, "messages"), [(Some(key_id(&KEY_A)), 15)]);
    assert_eq!(history(&http, &server, "general").await, expected);
    assert!(server.terminate(STOP).success());

    // --vacuum, with the server stopped, leaves no fragment of the old plaintext in the file.
    let summary = stdout_ok(dynamowave(
        &["rekey", "--data-dir", s(&data), "--vacuum"],
        &env,
    ));
    assert!(summary.contains("rebuilt"), "{summary}");
    let needles: Vec<String> = (0..15).map(body).collect();
    assert_not_in(&data.join(STORE), &needles);
    assert_not_in(&data.join(format!("{STORE}-wal")), &needles);
}

#[test]
fn bad_key_input_stops_serve_and_rekey_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    const HOWTO: &str = "head -c 32 /dev/urandom | base64";

    let err = serve_fails(&data, &["--encryption-key", "not base64 at all!"], &[]);
    assert!(
        err.contains("is not base64") && err.contains(HOWTO),
        "{err}"
    );
    let short = encode_key(&KEY_A)[..24].to_owned(); // 18 bytes
    let err = serve_fails(&data, &[], &[("DYNAMOWAVE_ENCRYPTION_KEY", &short)]);
    assert!(
        err.contains("is 18 bytes long") && err.contains("exactly 32 bytes") && err.contains(HOWTO),
        "{err}"
    );
    assert!(!err.contains(&short), "the key is not echoed: {err}");
    let missing = dir.path().join("missing.key");
    let err = serve_fails(&data, &["--encryption-key-file", s(&missing)], &[]);
    assert!(
        err.contains("cannot read the encryption key file") && err.contains(s(&missing)),
        "{err}"
    );
    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let err = serve_fails(&data, &["--encryption-key-file", s(&junk)], &[]);
    assert!(
        err.contains(&format!("in {}", junk.display())) && err.contains(HOWTO),
        "{err}"
    );
    // In the config file too.
    let config = dir.path().join("dw.toml");
    std::fs::write(&config, "[encryption]\nkeys = [\"c2hvcnQ=\"]\n").unwrap();
    let err = serve_fails(&data, &["--config", s(&config)], &[]);
    assert!(err.contains("is 5 bytes long"), "{err}");
    assert!(
        !data.join(STORE).exists(),
        "nothing is created when the keys are bad"
    );

    // rekey needs a key, and says so.
    std::fs::create_dir_all(&data).unwrap();
    let err = stderr_failed(dynamowave(&["rekey", "--data-dir", s(&data)], &[]));
    assert!(
        err.contains("no encryption key is configured") && err.contains(HOWTO),
        "{err}"
    );
    let key = key_file(dir.path(), "a.key", &KEY_A);
    let err = stderr_failed(dynamowave(
        &[
            "rekey",
            "--data-dir",
            s(&data),
            "--encryption-key-file",
            s(&key),
        ],
        &[],
    ));
    assert!(err.contains("no DynamoWave store"), "{err}");
}

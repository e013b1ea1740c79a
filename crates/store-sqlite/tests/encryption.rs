//! Encryption at rest in the SQLite store (src/cipher.rs, src/rekey.rs):
//! - the conformance suite passes with encryption on;
//! - rows hold ciphertext and their key id, and neither the database file nor its WAL holds a
//!   byte of plaintext; a restarted store with the same key reads everything;
//! - a row under a key that is not configured, or one moved or altered, reads as `unavailable`
//!   with the row named, never as garbage, and the backend refuses to open such a store (the
//!   server's own test is `crates/server/tests/encryption.rs`);
//! - plaintext rows from before encryption stay readable, and `rekey` moves every row to the
//!   newest key, also while the store is open and writing;
//! - backup and restore carry an encrypted store as it is.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dynamowave_core::conformance;
use dynamowave_core::ports::{
    DeadLetterKind, DeadLetters, MessageLog, NewDeadLetter, NewEvent, NewMessage, NoListener,
    StoreError,
};
use dynamowave_core::protocol::HistoryQuery;
use dynamowave_core::{RoomId, Seq, UserName};
use dynamowave_store_sqlite::SqliteBackend;
use dynamowave_store_sqlite::cipher::{self, Keyring};
use dynamowave_store_sqlite::rekey::{self, PLAINTEXT, RekeyOptions};
use dynamowave_store_sqlite::snapshot::{self, STORE_FILE};
use dynamowave_store_sqlite::sqlite::{SqliteStore, UnknownKey};

const KEY_A: [u8; 32] = [0xa1; 32];
const KEY_B: [u8; 32] = [0xb2; 32];

fn keys(list: &[[u8; 32]]) -> Option<Arc<Keyring>> {
    Some(Arc::new(Keyring::from_keys(list)))
}

fn open(dir: &Path, list: &[[u8; 32]]) -> SqliteStore {
    let keys = if list.is_empty() { None } else { keys(list) };
    SqliteStore::open_with_keys(dir, Arc::new(NoListener), keys).unwrap()
}

fn body(i: usize) -> String {
    format!("secret-body-{i:04}-plaintext")
}

fn new_message(room: &str, id: &str, data: &str) -> NewMessage {
    NewMessage::message(
        RoomId::parse(room).unwrap(),
        id.into(),
        UserName::parse("ann").unwrap(),
        data.into(),
    )
}

async fn write(store: &SqliteStore, room: &str, range: std::ops::Range<usize>) {
    for i in range {
        store
            .append(new_message(room, &format!("m{i}"), &body(i)))
            .await
            .unwrap();
    }
}

async fn dead_letter(store: &SqliteStore, payload: &str) -> u64 {
    store
        .add(NewDeadLetter {
            kind: DeadLetterKind::PostToConnection,
            target: "aaaaaaaaaaaaaaaa".into(),
            user: None,
            reason: "gone".into(),
            payload: payload.into(),
        })
        .await
        .unwrap()
}

/// The room's whole history, oldest first.
async fn bodies(store: &SqliteStore, room: &str) -> Result<Vec<String>, StoreError> {
    let room = RoomId::parse(room).unwrap();
    let (mut all, mut after) = (Vec::new(), 0);
    loop {
        let page = store
            .read(
                &room,
                HistoryQuery::After {
                    seq: dynamowave_core::Seq(after),
                    limit: 500,
                },
            )
            .await?;
        all.extend(page.messages.iter().map(|m| m.data.clone()));
        after = page.messages.last().map_or(after, |m| m.seq.0);
        if !page.more {
            return Ok(all);
        }
    }
}

/// (key id, count) of each table's rows, read straight from the file.
fn key_ids(dir: &Path, table: &str) -> Vec<(Option<String>, i64)> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join(STORE_FILE),
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

/// Every file of the store (database, WAL, shared memory), as bytes.
fn store_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(STORE_FILE)
        })
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn assert_no_plaintext(dir: &Path, needles: &[String]) {
    let files = store_bytes(dir);
    assert!(files.iter().any(|(n, _)| n.ends_with(STORE_FILE)));
    for (name, bytes) in &files {
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{name} holds the plaintext {needle:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_log_passes_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::message_log(|listener| {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open_with_keys(dir.path(), listener, keys(&[KEY_A, KEY_B])).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { Arc::new(store) as Arc<dyn MessageLog> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_log_passes_the_event_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::events(|listener| {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open_with_keys(dir.path(), listener, keys(&[KEY_A, KEY_B])).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { Arc::new(store) as Arc<dyn MessageLog> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_hold_ciphertext_and_their_key_id_and_no_file_holds_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &[KEY_A]);
    write(&store, "general", 0..50).await;
    let dl = dead_letter(&store, "secret-payload-of-a-post").await;
    // Idempotent retries answer with the stored (decrypted) original.
    let dup = store
        .append(new_message("general", "m7", "another body"))
        .await
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.message.data, body(7));

    let mut needles: Vec<String> = (0..50).map(body).collect();
    needles.push("secret-payload-of-a-post".into());
    // While open: the WAL holds every commit so far.
    assert_no_plaintext(dir.path(), &needles);
    let id_a = cipher::key_id(&KEY_A);
    assert_eq!(key_ids(dir.path(), "messages"), [(Some(id_a.clone()), 50)]);
    assert_eq!(
        key_ids(dir.path(), "dead_letters"),
        [(Some(id_a.clone()), 1)]
    );

    assert_eq!(bodies(&store, "general").await.unwrap(), needles[..50]);
    assert_eq!(
        store.get(dl).await.unwrap().unwrap().payload,
        "secret-payload-of-a-post"
    );
    assert_eq!(store.unknown_keys().await.unwrap(), []);
    store.shutdown().await;
    drop(store);
    assert_no_plaintext(dir.path(), &needles);

    // Restarted with the same key (named twice, in another order: ids, not order, decide).
    let store = open(dir.path(), &[KEY_A, KEY_A]);
    assert_eq!(bodies(&store, "general").await.unwrap(), needles[..50]);
    assert_eq!(store.list(0, 10, false).await.unwrap().len(), 1);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_is_encrypted_like_a_message_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &[KEY_A]);
    let original = "secret-original-text-of-the-message";
    let edited = "secret-edited-text-of-the-message";
    store
        .append(new_message("general", "m1", original))
        .await
        .unwrap();
    let edit = NewMessage {
        event: Some(NewEvent::Edit { target: Seq(1) }),
        ..new_message("general", "e1", edited)
    };
    let committed = store.append(edit.clone()).await.unwrap();
    assert_eq!(committed.message.data, edited);
    let retried = store.append(edit).await.unwrap();
    assert!(
        retried.duplicate && retried.message.data == edited,
        "decrypted for a retry"
    );

    let needles = [original.to_owned(), edited.to_owned()];
    assert_no_plaintext(dir.path(), &needles);
    let id_a = cipher::key_id(&KEY_A);
    assert_eq!(
        key_ids(dir.path(), "messages"),
        [(Some(id_a.clone()), 2)],
        "the event row is sealed too"
    );
    assert_eq!(bodies(&store, "general").await.unwrap(), [edited]);
    let entries = store
        .read_entries(&RoomId::parse("general").unwrap(), Seq(0), 10)
        .await
        .unwrap();
    assert_eq!(entries.messages[1].data, edited);
    store.shutdown().await;
    drop(store);
    assert_no_plaintext(dir.path(), &needles);

    // Rekey moves the event row to the new key like any other (its own row binds it).
    let report = rekey::rekey(
        dir.path(),
        &Keyring::from_keys(&[KEY_A, KEY_B]),
        &RekeyOptions::default(),
    )
    .unwrap();
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.messages[&id_a], 2);
    let store = open(dir.path(), &[KEY_B]);
    assert_eq!(bodies(&store, "general").await.unwrap(), [edited]);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_under_an_unconfigured_key_is_unavailable_never_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &[KEY_A]);
    write(&store, "general", 0..3).await;
    let dl = dead_letter(&store, "payload").await;
    store.shutdown().await;
    drop(store);
    let id_a = cipher::key_id(&KEY_A);

    for configured in [&[KEY_B][..], &[]] {
        let store = open(dir.path(), configured);
        let err = bodies(&store, "general").await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, StoreError::Backend(_))
                && text.contains("room general")
                && text.contains(&id_a),
            "{text}"
        );
        let err = store.get(dl).await.unwrap_err().to_string();
        assert!(err.contains(&format!("dead letter {dl}")), "{err}");
        let unknown = store.unknown_keys().await.unwrap();
        assert!(
            unknown.contains(&UnknownKey {
                key_id: id_a.clone(),
                messages: 3,
                dead_letters: 1,
                webhook_events: 0
            }),
            "{unknown:?}"
        );
        // A retried send is answered from the stored original, which cannot be read either.
        let err = store
            .append(new_message("general", "m1", "again"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&id_a), "{err}");
        // New messages are fine.
        store
            .append(new_message(
                &format!("other{}", configured.len()),
                "x",
                "new",
            ))
            .await
            .unwrap();
        store.shutdown().await;
    }

    // The backend refuses such a store, naming the key id and the rows under it.
    let backend = SqliteBackend::new(dir.path(), vec![], vec![cipher::encode_key(&KEY_B)]);
    let err = backend
        .open_store(Arc::new(NoListener))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&format!("key id {id_a} (3 messages, 1 dead letters)"))
            && err.contains("Refusing to start"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_or_altered_ciphertext_fails_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &[KEY_A]);
    write(&store, "general", 0..2).await;
    write(&store, "other", 5..6).await;
    store.shutdown().await;
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join(STORE_FILE)).unwrap();
    // Seq 1's ciphertext copied onto seq 2 of the same room.
    conn.execute(
        "UPDATE messages SET data = (SELECT data FROM messages WHERE room = 'general' AND seq = 1)
         WHERE room = 'general' AND seq = 2",
        [],
    )
    .unwrap();
    // A row re-attributed to another user.
    conn.execute("UPDATE messages SET user = 'eve' WHERE room = 'other'", [])
        .unwrap();
    drop(conn);
    let store = open(dir.path(), &[KEY_A]);
    let err = bodies(&store, "general").await.unwrap_err().to_string();
    assert!(
        err.contains("message 2 of room general") && err.contains("failed authentication"),
        "{err}"
    );
    let err = bodies(&store, "other").await.unwrap_err().to_string();
    assert!(err.contains("failed authentication"), "{err}");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_rows_stay_readable_and_rekey_encrypts_every_row() {
    let dir = tempfile::tempdir().unwrap();
    // Before encryption was turned on.
    let store = open(dir.path(), &[]);
    write(&store, "general", 0..40).await;
    dead_letter(&store, "plaintext-payload-1").await;
    store.shutdown().await;
    drop(store);
    // Under key A.
    let store = open(dir.path(), &[KEY_A]);
    write(&store, "general", 40..70).await;
    dead_letter(&store, "encrypted-payload-2").await;
    let expected: Vec<String> = (0..70).map(body).collect();
    assert_eq!(bodies(&store, "general").await.unwrap(), expected);
    store.shutdown().await;
    drop(store);

    let (id_a, id_b) = (cipher::key_id(&KEY_A), cipher::key_id(&KEY_B));
    let report = rekey::rekey(
        dir.path(),
        &Keyring::from_keys(&[KEY_A, KEY_B]),
        &RekeyOptions {
            batch: 16,
            vacuum: true,
            ..RekeyOptions::default()
        },
    )
    .unwrap();
    assert!(report.complete(), "{report:?}");
    assert!(report.wal_truncated && report.vacuumed);
    assert_eq!(report.newest, id_b);
    assert_eq!(
        report.messages.into_iter().collect::<Vec<_>>(),
        [(PLAINTEXT.to_owned(), 40), (id_a.clone(), 30)]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(report.dead_letters.len(), 2);
    assert_eq!(key_ids(dir.path(), "messages"), [(Some(id_b.clone()), 70)]);
    assert_eq!(
        key_ids(dir.path(), "dead_letters"),
        [(Some(id_b.clone()), 2)]
    );
    // The plaintext the rewrite replaced is gone from the files too (rebuilt, WAL cut).
    let mut needles = expected.clone();
    needles.push("plaintext-payload-1".into());
    assert_no_plaintext(dir.path(), &needles);

    // Only the new key now.
    let store = open(dir.path(), &[KEY_B]);
    assert_eq!(bodies(&store, "general").await.unwrap(), expected);
    let payloads: Vec<String> = store
        .list(0, 10, false)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.payload)
        .collect();
    assert_eq!(payloads, ["plaintext-payload-1", "encrypted-payload-2"]);
    store.shutdown().await;
    drop(store);

    // Nothing left to do: a second run rewrites nothing.
    let again = rekey::rekey(
        dir.path(),
        &Keyring::from_keys(&[KEY_B]),
        &RekeyOptions::default(),
    )
    .unwrap();
    assert!(again.complete() && again.messages.is_empty() && again.dead_letters.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_runs_while_the_store_is_open_and_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &[KEY_A]);
    write(&store, "busy", 0..600).await;
    store.shutdown().await;
    drop(store);

    let store = Arc::new(open(dir.path(), &[KEY_A, KEY_B]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 600;
            while !stop.load(Ordering::Relaxed) {
                // No retries here: a write the rekey kept out for longer than the busy timeout
                // would fail this test.
                store
                    .append(new_message("busy", &format!("m{i}"), &body(i)))
                    .await
                    .expect("writes go on during a rekey");
                i += 1;
            }
            i
        })
    };
    let dir_path = dir.path().to_owned();
    let report = tokio::task::spawn_blocking(move || {
        rekey::rekey(
            &dir_path,
            &Keyring::from_keys(&[KEY_A, KEY_B]),
            &RekeyOptions {
                batch: 100,
                ..RekeyOptions::default()
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 600, "the writer made progress meanwhile");
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.messages[&cipher::key_id(&KEY_A)], 600);
    let expected: Vec<String> = (0..written).map(body).collect();
    let stored = bodies(&store, "busy").await.unwrap();
    assert!(
        stored == expected,
        "{} stored, {} written",
        stored.len(),
        written
    );
    let err = rekey::rekey(
        dir.path(),
        &Keyring::from_keys(&[KEY_B]),
        &RekeyOptions {
            vacuum: true,
            ..RekeyOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("--vacuum needs it stopped"),
        "{err}"
    );
    store.shutdown().await;
    assert_eq!(
        key_ids(dir.path(), "messages"),
        [(Some(cipher::key_id(&KEY_B)), written as i64)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_leaves_rows_it_cannot_decrypt_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &[KEY_A]);
    write(&store, "general", 0..3).await;
    store.shutdown().await;
    drop(store);
    let report = rekey::rekey(
        dir.path(),
        &Keyring::from_keys(&[KEY_B]),
        &RekeyOptions::default(),
    )
    .unwrap();
    assert!(!report.complete());
    assert_eq!(report.unreadable.len(), 3);
    assert!(report.unreadable[0].contains("message 1 of room general"));
    assert_eq!(report.remaining[0].messages, 3);
    assert_eq!(
        key_ids(dir.path(), "messages"),
        [(Some(cipher::key_id(&KEY_A)), 3)],
        "left as they were"
    );
    let err = rekey::rekey(
        &dir.path().join("nope"),
        &Keyring::from_keys(&[KEY_B]),
        &RekeyOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no DynamoWave store"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_carry_an_encrypted_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &[KEY_A]);
    write(&store, "general", 0..20).await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("backup.sqlite3");
    let (d, f) = (dir.path().to_owned(), file.clone());
    let info = tokio::task::spawn_blocking(move || snapshot::backup(&d, &f))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.messages, 20);
    let backup_bytes = std::fs::read(&file).unwrap();
    assert!(
        !backup_bytes
            .windows(body(3).len())
            .any(|w| w == body(3).as_bytes())
    );
    store.shutdown().await;

    let into = out.path().join("restored");
    snapshot::restore(&file, info.taken_at, &into).unwrap();
    let restored = open(&into, &[KEY_A]);
    let expected: Vec<String> = (0..20).map(body).collect();
    assert_eq!(bodies(&restored, "general").await.unwrap(), expected);
    restored.shutdown().await;
}

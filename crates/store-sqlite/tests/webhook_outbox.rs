//! The SQLite store's webhook outbox (`WebhookOutbox`, `StoreOptions::webhooks`):
//! - every committed entry, connection, disconnection, join and leave queues its event, in
//!   commit order, with the JSON of `dynamowave_core::webhook`; what is not stored (a retried
//!   append, a refused event, a join of a room the connection is in) queues nothing, and a
//!   failed event insert fails its command, which then leaves nothing;
//! - with webhooks off nothing is queued; the backend returns the outbox only when on;
//! - `remove_through` removes exactly through the id; events survive a reopen, and a purge of a
//!   dead process's connections queues their disconnects;
//! - encrypted, no file holds an event's text, rekey moves events to the new key, and a
//!   restore drops the events queued after its instant.

use std::path::Path;
use std::sync::Arc;

use dynamowave_core::conformance::{self, NoHub, event, msg, react, room, user};
use dynamowave_core::ports::{
    Backend, CommitListener, ConnectionRecord, ConnectionStore, Fanout, MessageLog, NewEvent,
    NoListener, StoreError, WebhookOutbox,
};
use dynamowave_core::protocol::Mode;
use dynamowave_core::{ConnectionId, Seq, webhook};
use dynamowave_store_sqlite::SqliteBackend;
use dynamowave_store_sqlite::cipher::{self, Keyring};
use dynamowave_store_sqlite::rekey::{self, RekeyOptions};
use dynamowave_store_sqlite::snapshot::{self, STORE_FILE};
use dynamowave_store_sqlite::sqlite::{SqliteStore, StoreOptions, UnknownKey};

const KEY_A: [u8; 32] = [0xa1; 32];
const KEY_B: [u8; 32] = [0xb2; 32];

fn open(dir: &Path, webhooks: bool, keys: &[[u8; 32]]) -> SqliteStore {
    let keys = (!keys.is_empty()).then(|| Arc::new(Keyring::from_keys(keys)));
    SqliteStore::open_with(dir, Arc::new(NoListener), StoreOptions { keys, webhooks }).unwrap()
}

fn cid(s: &str) -> ConnectionId {
    ConnectionId::parse(s).unwrap()
}

fn record(id: &str, name: &str) -> ConnectionRecord {
    ConnectionRecord {
        id: cid(id),
        user: user(name),
        mode: Mode::V1,
        source_ip: "127.0.0.1".into(),
        user_agent: "webhook-test".into(),
        connected_at: 1_700_000_000_000,
    }
}

/// Every queued event, oldest first.
async fn queued(store: &SqliteStore) -> Vec<(u64, String)> {
    store
        .pending(10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.body))
        .collect()
}

/// `created_at` of each row of the outbox, by id, read from the file: the time the events of
/// joins, leaves and disconnects carry (their batch's commit time).
fn created_at(dir: &Path) -> Vec<(u64, u64)> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join(STORE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT id, created_at FROM webhook_outbox ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn outbox_rows(dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join(STORE_FILE)).unwrap();
    conn.query_row("SELECT count(*) FROM webhook_outbox", [], |r| r.get(0))
        .unwrap()
}

/// Does one of each thing that queues an event, and returns the expected bodies, in order, as
/// functions of the event's commit time (known only from the row).
async fn one_of_each(store: &SqliteStore) -> Vec<Box<dyn Fn(u64) -> String>> {
    let mut expected: Vec<Box<dyn Fn(u64) -> String>> = Vec::new();
    let (ann, lobby) = (record("conn-ann", "ann"), room("lobby"));
    store.insert(&ann).await.unwrap();
    let connect = webhook::connect(&ann);
    expected.push(Box::new(move |_| connect.clone()));
    store.add_membership(&ann.id, &lobby).await.unwrap();
    expected.push(Box::new(|ts| {
        webhook::join(&room("lobby"), &cid("conn-ann"), Some(&user("ann")), ts)
    }));
    for m in [
        msg("lobby", "ann", "m1", "hello"),
        event(
            "lobby",
            "ann",
            "e1",
            "hello again",
            NewEvent::Edit { target: Seq(1) },
        ),
        event("lobby", "bob", "r1", "", react(1, "👍", true)),
        event("lobby", "ann", "r2", "", react(1, "🎉", true)),
        event(
            "lobby",
            "ann",
            "d1",
            "",
            NewEvent::Delete { target: Seq(1) },
        ),
    ] {
        let committed = store.append(m).await.unwrap();
        assert!(!committed.duplicate);
        let body = webhook::entry(&committed.message);
        expected.push(Box::new(move |_| body.clone()));
    }
    store.remove_membership(&ann.id, &lobby).await.unwrap();
    expected.push(Box::new(|ts| {
        webhook::leave(&room("lobby"), &cid("conn-ann"), Some(&user("ann")), ts)
    }));
    // A membership without a connection row: the event has no user.
    store
        .add_membership(&cid("conn-ghost"), &lobby)
        .await
        .unwrap();
    expected.push(Box::new(|ts| {
        webhook::join(&room("lobby"), &cid("conn-ghost"), None, ts)
    }));
    store.remove(&ann.id).await.unwrap();
    expected.push(Box::new(|ts| {
        webhook::disconnect(&cid("conn-ann"), Some(&user("ann")), ts)
    }));
    expected
}

/// The queue holds exactly `expected`, in order, with increasing ids.
async fn assert_queued(store: &SqliteStore, dir: &Path, expected: &[Box<dyn Fn(u64) -> String>]) {
    let rows = queued(store).await;
    let times = created_at(dir);
    assert_eq!(rows.len(), expected.len(), "{rows:#?}");
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "{rows:?}");
    for (((id, body), (time_id, ts)), want) in rows.iter().zip(&times).zip(expected) {
        assert_eq!(id, time_id);
        assert_eq!(body, &want(*ts), "event {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_event_is_queued_in_commit_order_with_its_json() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, &[]);
    assert!(store.webhooks());
    let expected = one_of_each(&store).await;
    assert_queued(&store, dir.path(), &expected).await;
    assert_eq!(store.depth().await.unwrap(), expected.len() as u64);
    let bodies: Vec<String> = queued(&store).await.into_iter().map(|e| e.1).collect();
    // Spot checks of what the bodies say, beyond matching `webhook::*`.
    assert!(bodies[2].starts_with(r#"{"event":"message","room":"lobby","seq":1,"#));
    assert!(bodies[3].contains(r#""event":"edit""#) && bodies[3].contains("hello again"));
    assert!(
        bodies[5].contains(r#""counts":{"🎉":1,"👍":1}"#),
        "a reaction carries the counts just after it: {}",
        bodies[5]
    );
    assert!(bodies[6].starts_with(r#"{"event":"delete","room":"lobby","seq":1,"eventSeq":5,"#));
    assert!(!bodies[8].contains(r#""user""#), "{}", bodies[8]);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_stored_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, &[]);
    let ann = record("conn-ann", "ann");
    store.insert(&ann).await.unwrap();
    store.add_membership(&ann.id, &room("lobby")).await.unwrap();
    store
        .append(msg("lobby", "ann", "m1", "hello"))
        .await
        .unwrap();
    let before = queued(&store).await;
    assert_eq!(before.len(), 3);

    // A retried append.
    let again = store
        .append(msg("lobby", "ann", "m1", "hello"))
        .await
        .unwrap();
    assert!(again.duplicate);
    // Refused events: another user's edit, a reaction to no message.
    for refused in [
        event(
            "lobby",
            "bob",
            "e1",
            "mine now",
            NewEvent::Edit { target: Seq(1) },
        ),
        event("lobby", "ann", "r1", "", react(9, "👍", true)),
    ] {
        let err = store.append(refused).await.unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    }
    // A join of a room it is in, a leave of one it is not in, a disconnect of no connection.
    store.add_membership(&ann.id, &room("lobby")).await.unwrap();
    store
        .remove_membership(&ann.id, &room("other"))
        .await
        .unwrap();
    store.remove(&cid("conn-nobody")).await.unwrap();
    assert_eq!(queued(&store).await, before);

    // The refusals took no seq: the next entry is 2, and queued as such.
    let next = store
        .append(msg("lobby", "ann", "m2", "next"))
        .await
        .unwrap();
    assert_eq!(next.message.seq, Seq(2));
    let after = queued(&store).await;
    assert_eq!(after.len(), 4);
    assert_eq!(after[3].1, webhook::entry(&next.message));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_webhooks_off_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), false, &[]);
    assert!(!store.webhooks());
    one_of_each(&store).await;
    store.insert(&record("conn-bob", "bob")).await.unwrap();
    assert_eq!(store.purge_stale().await.unwrap(), 1);
    assert_eq!(store.depth().await.unwrap(), 0);
    assert!(store.pending(10).await.unwrap().is_empty());
    store.shutdown().await;
    drop(store);
    assert_eq!(outbox_rows(dir.path()), 0);

    // The constructors from before webhooks keep them off.
    let store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
    assert!(!store.webhooks());
    store.append(msg("lobby", "ann", "m9", "x")).await.unwrap();
    store.shutdown().await;
    drop(store);
    assert_eq!(outbox_rows(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_through_removes_exactly_through_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, &[]);
    for i in 0..5 {
        store
            .append(msg("lobby", "ann", &format!("m{i}"), "x"))
            .await
            .unwrap();
    }
    let ids: Vec<u64> = queued(&store).await.into_iter().map(|e| e.0).collect();
    assert_eq!(ids.len(), 5);
    let first_two: Vec<u64> = store
        .pending(2)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(first_two, ids[..2], "oldest first, at most `limit`");

    assert_eq!(store.remove_through(ids[2]).await.unwrap(), 3);
    let left: Vec<u64> = queued(&store).await.into_iter().map(|e| e.0).collect();
    assert_eq!(left, ids[3..]);
    assert_eq!(store.depth().await.unwrap(), 2);
    assert_eq!(
        store.remove_through(ids[2]).await.unwrap(),
        0,
        "already gone"
    );
    assert_eq!(store.remove_through(0).await.unwrap(), 0);
    assert_eq!(store.remove_through(u64::MAX).await.unwrap(), 2);
    assert_eq!(store.depth().await.unwrap(), 0);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_reopen_and_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, &[]);
    let expected = one_of_each(&store).await;
    let before = queued(&store).await;
    store.shutdown().await;
    drop(store);

    let store = open(dir.path(), true, &[]);
    assert_eq!(queued(&store).await, before);
    assert_queued(&store, dir.path(), &expected).await;
    let last = before.last().unwrap().0;
    assert_eq!(
        store.remove_through(last).await.unwrap(),
        before.len() as u64
    );
    store.shutdown().await;
    drop(store);

    // Emptied and reopened, the next id still follows the last one (AUTOINCREMENT).
    let store = open(dir.path(), true, &[]);
    store
        .append(msg("lobby", "ann", "later", "x"))
        .await
        .unwrap();
    let after = queued(&store).await;
    assert_eq!(after.len(), 1);
    assert!(after[0].0 > last, "{} after {last}", after[0].0);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_a_dead_process_queues_its_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, &[]);
    store.insert(&record("conn-bob", "bob")).await.unwrap();
    store.insert(&record("conn-ann", "ann")).await.unwrap();
    store
        .add_membership(&cid("conn-ann"), &room("lobby"))
        .await
        .unwrap();
    // The process dies: its connections are never removed.
    store.shutdown().await;
    drop(store);

    let store = open(dir.path(), true, &[]);
    let delivered = queued(&store).await.last().unwrap().0;
    store.remove_through(delivered).await.unwrap();
    assert_eq!(store.purge_stale().await.unwrap(), 2);
    let rows = queued(&store).await;
    let times = created_at(dir.path());
    assert_eq!(rows.len(), 2, "one disconnect per connection, no leaves");
    assert_eq!(
        rows[0].1,
        webhook::disconnect(&cid("conn-ann"), Some(&user("ann")), times[0].1)
    );
    assert_eq!(
        rows[1].1,
        webhook::disconnect(&cid("conn-bob"), Some(&user("bob")), times[1].1)
    );
    // Nothing left to purge, nothing more queued.
    assert_eq!(store.purge_stale().await.unwrap(), 0);
    assert_eq!(store.depth().await.unwrap(), 2);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_insert_fails_its_command_which_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, &[]);
    let ann = record("conn-ann", "ann");
    store.insert(&ann).await.unwrap();
    store
        .append(msg("lobby", "ann", "m1", "hello"))
        .await
        .unwrap();
    let before = queued(&store).await;

    // Every insert into the outbox fails from now on.
    let conn = rusqlite::Connection::open(dir.path().join(STORE_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER outbox_fails BEFORE INSERT ON webhook_outbox
         BEGIN SELECT RAISE(ABORT, 'the outbox is broken'); END;",
    )
    .unwrap();
    let err = store
        .append(msg("lobby", "ann", "m2", "lost"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the outbox is broken"), "{err}");
    store
        .append(event(
            "lobby",
            "ann",
            "e1",
            "lost",
            NewEvent::Edit { target: Seq(1) },
        ))
        .await
        .unwrap_err();
    let bob = record("conn-bob", "bob");
    store.insert(&bob).await.unwrap_err();
    store
        .add_membership(&ann.id, &room("lobby"))
        .await
        .unwrap_err();
    store.remove(&ann.id).await.unwrap_err();
    // None of them is stored.
    assert_eq!(store.head(&room("lobby")).await.unwrap(), Some(Seq(1)));
    let history = store
        .read_entries(&room("lobby"), Seq(0), 10)
        .await
        .unwrap();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(history.messages[0].data, "hello", "the edit is not stored");
    assert_eq!(store.list().await.unwrap(), [(ann.clone(), vec![])]);
    assert_eq!(queued(&store).await, before);

    // Fixed, the next append takes the seq the failed one did not.
    conn.execute_batch("DROP TRIGGER outbox_fails").unwrap();
    let next = store
        .append(msg("lobby", "ann", "m2", "kept"))
        .await
        .unwrap();
    assert_eq!(next.message.seq, Seq(2));
    assert_eq!(queued(&store).await.len(), before.len() + 1);
    store.shutdown().await;
}

/// Every file of the store (database, WAL), as bytes, holds none of `needles`.
fn assert_no_plaintext(dir: &Path, needles: &[&str]) {
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(STORE_FILE)
        {
            continue;
        }
        seen += 1;
        let bytes = std::fs::read(&path).unwrap();
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds the plaintext {needle:?}",
                path.display()
            );
        }
    }
    assert!(seen > 0);
}

fn key_ids(dir: &Path) -> Vec<(Option<String>, i64)> {
    let conn = rusqlite::Connection::open(dir.join(STORE_FILE)).unwrap();
    let mut stmt = conn
        .prepare("SELECT key_id, count(*) FROM webhook_outbox GROUP BY key_id ORDER BY key_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_events_hold_no_plaintext_and_survive_a_rekey() {
    let secret = "secret-text-only-in-the-message";
    let edited = "secret-text-only-in-the-edit";
    let dir = tempfile::tempdir().unwrap();

    // One event from before encryption was on: plaintext, and still read.
    let store = open(dir.path(), true, &[]);
    store
        .append(msg("lobby", "ann", "m0", "before-encryption"))
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);

    let store = open(dir.path(), true, &[KEY_A]);
    let mut expected = vec![queued(&store).await[0].1.clone()];
    for m in [
        msg("lobby", "ann", "m1", secret),
        event(
            "lobby",
            "ann",
            "e1",
            edited,
            NewEvent::Edit { target: Seq(2) },
        ),
    ] {
        expected.push(webhook::entry(&store.append(m).await.unwrap().message));
    }
    let bodies = |rows: Vec<(u64, String)>| rows.into_iter().map(|e| e.1).collect::<Vec<_>>();
    assert_eq!(bodies(queued(&store).await), expected);
    assert_no_plaintext(dir.path(), &[secret, edited]);
    let id_a = cipher::key_id(&KEY_A);
    assert_eq!(key_ids(dir.path()), [(None, 1), (Some(id_a.clone()), 2)]);
    store.shutdown().await;
    drop(store);
    assert_no_plaintext(dir.path(), &[secret, edited]);
    let store = open(dir.path(), true, &[KEY_A]);
    assert_eq!(bodies(queued(&store).await), expected, "after a reopen");
    store.shutdown().await;
    drop(store);

    // Without key A the events cannot be read, and count against starting.
    let store = open(dir.path(), true, &[KEY_B]);
    let err = store.pending(10).await.unwrap_err().to_string();
    assert!(
        err.contains("webhook event") && err.contains(&id_a),
        "{err}"
    );
    let unknown = store.unknown_keys().await.unwrap();
    assert_eq!(
        unknown,
        [UnknownKey {
            key_id: id_a.clone(),
            messages: 2,
            dead_letters: 0,
            webhook_events: 2,
        }]
    );
    store.shutdown().await;
    drop(store);
    let err = SqliteBackend::new(dir.path(), vec![], vec![cipher::encode_key(&KEY_B)])
        .open_store(Arc::new(NoListener))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&format!(
            "key id {id_a} (2 messages, 0 dead letters, 2 webhook events)"
        )),
        "{err}"
    );

    // Rekey moves them (the plaintext one too) to key B.
    let report = rekey::rekey(
        dir.path(),
        &Keyring::from_keys(&[KEY_A, KEY_B]),
        &RekeyOptions {
            vacuum: true,
            ..RekeyOptions::default()
        },
    )
    .unwrap();
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.webhook_events[&id_a], 2);
    assert_eq!(report.webhook_events[rekey::PLAINTEXT], 1);
    assert_eq!(key_ids(dir.path()), [(Some(cipher::key_id(&KEY_B)), 3)]);
    assert_no_plaintext(dir.path(), &[secret, edited, "before-encryption"]);
    let store = open(dir.path(), true, &[KEY_B]);
    assert_eq!(bodies(queued(&store).await), expected);
    store.shutdown().await;
    drop(store);

    // A ciphertext moved to another row fails to authenticate, never reads as garbage.
    let conn = rusqlite::Connection::open(dir.path().join(STORE_FILE)).unwrap();
    conn.execute(
        "UPDATE webhook_outbox SET body = (SELECT body FROM webhook_outbox ORDER BY id LIMIT 1)
         WHERE id = (SELECT max(id) FROM webhook_outbox)",
        [],
    )
    .unwrap();
    drop(conn);
    let store = open(dir.path(), true, &[KEY_B]);
    let err = store.pending(10).await.unwrap_err().to_string();
    assert!(err.contains("failed authentication"), "{err}");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_drops_the_events_queued_after_its_instant() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, &[]);
    for i in 0..3 {
        store
            .append(msg("lobby", "ann", &format!("m{i}"), "x"))
            .await
            .unwrap();
    }
    store.shutdown().await;
    drop(store);
    // Stamp the messages and their events 1000, 2000, 3000.
    let conn = rusqlite::Connection::open(dir.path().join(STORE_FILE)).unwrap();
    conn.execute_batch(
        "UPDATE messages SET ts = seq * 1000;
         UPDATE rooms SET created_at = 1000;
         UPDATE webhook_outbox SET created_at = (SELECT count(*) FROM webhook_outbox o
                                                  WHERE o.id <= webhook_outbox.id) * 1000;",
    )
    .unwrap();
    drop(conn);

    let into = dir.path().join("restored");
    let info = snapshot::restore(dir.path(), 2500, &into).unwrap();
    assert_eq!((info.kept, info.dropped), (2, 1), "{info:?}");
    assert_eq!(info.webhook_events_dropped, 1, "{info:?}");
    assert_eq!(
        created_at(&into)
            .into_iter()
            .map(|r| r.1)
            .collect::<Vec<_>>(),
        [1000, 2000]
    );
    let store = open(&into, true, &[]);
    assert_eq!(store.depth().await.unwrap(), 2);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_webhooks_on_the_store_still_passes_the_conformance_suites() {
    let dirs = std::sync::Mutex::new(Vec::new());
    let make = |listener: Arc<dyn CommitListener>| {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(
            dir.path(),
            listener,
            StoreOptions {
                keys: None,
                webhooks: true,
            },
        )
        .unwrap();
        dirs.lock().unwrap().push(dir);
        Arc::new(store)
    };
    conformance::message_log(|l| {
        let s = make(l);
        async move { s as Arc<dyn MessageLog> }
    })
    .await;
    conformance::events(|l| {
        let s = make(l);
        async move { s as Arc<dyn MessageLog> }
    })
    .await;
    conformance::connection_store(|| {
        let s = make(Arc::new(NoListener));
        async move { s as Arc<dyn ConnectionStore> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_returns_the_outbox_only_with_webhooks_on() {
    for on in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let fanout = Fanout {
            listener: Arc::new(NoListener),
            rooms: Arc::new(NoHub),
            local: Arc::new(NoHub),
        };
        let backend = SqliteBackend::new(dir.path(), vec![], vec![]).with_webhooks(on);
        let stores = Box::new(backend).open(fanout).await.unwrap();
        assert_eq!(stores.outbox.is_some(), on);
        stores
            .log
            .append(msg("lobby", "ann", "m1", "x"))
            .await
            .unwrap();
        if let Some(outbox) = &stores.outbox {
            assert_eq!(outbox.depth().await.unwrap(), 1);
        }
        stores.lifecycle.shutdown().await;
        drop(stores);
        assert_eq!(outbox_rows(dir.path()), i64::from(on));
    }
}

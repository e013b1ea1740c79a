//! Event entries (edits, deletions, reactions) and read positions in the SQLite store, beyond
//! the conformance suite (tests/sqlite_store.rs runs `conformance::events`):
//! - a store from before event entries is migrated when it opens;
//! - a point-in-time restore to between a message and its edit gives the original back;
//! - a refused event does not fail the other commands of its writer batch, and events of one
//!   batch see each other.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dynamowave_core::Seq;
use dynamowave_core::conformance::{RecordingListener, counts, event, msg, react, room, user};
use dynamowave_core::error::ErrorCode;
use dynamowave_core::ports::{Appended, MessageLog, NewEvent, NoListener, ReadMark, StoreError};
use dynamowave_core::protocol::{ChatMessage, EntryEvent, HistoryQuery};
use dynamowave_core::types::now_ms;
use dynamowave_store_sqlite::snapshot::{self, STORE_FILE};
use dynamowave_store_sqlite::sqlite::SqliteStore;

async fn history(store: &SqliteStore, r: &str) -> Vec<Arc<ChatMessage>> {
    store
        .read(&room(r), HistoryQuery::Latest { limit: 100 })
        .await
        .unwrap()
        .messages
}

fn seqs(messages: &[Arc<ChatMessage>]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.0).collect()
}

fn columns(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('messages') ORDER BY cid")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn refused(result: Result<Appended, StoreError>, code: ErrorCode) {
    match result {
        Err(StoreError::Refused(e)) => assert_eq!(e.code, code, "{e}"),
        other => panic!("expected a refusal with {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_events_is_migrated_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    {
        // The schema of the last version without event entries or read positions.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE rooms (
                 room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, created_at INTEGER NOT NULL);
             CREATE TABLE messages (
                 room TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,
                 user TEXT NOT NULL, data TEXT NOT NULL, ts INTEGER NOT NULL,
                 deleted_at INTEGER, key_id TEXT,
                 PRIMARY KEY (room, seq));
             CREATE UNIQUE INDEX messages_idempotency ON messages (room, user, id);
             INSERT INTO rooms VALUES ('old', 3, 1000);
             INSERT INTO messages (room, seq, id, user, data, ts, deleted_at) VALUES
                 ('old', 1, 'm1', 'ann', 'first', 1000, NULL),
                 ('old', 2, 'm2', 'bob', 'gone', 2000, 2500),
                 ('old', 3, 'm3', 'bob', 'third', 3000, NULL);",
        )
        .unwrap();
    }
    assert!(!columns(&path).contains(&"kind".to_owned()));

    let store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
    let cols = columns(&path);
    for c in ["kind", "target", "emoji", "reaction_on"] {
        assert!(cols.contains(&c.to_owned()), "{c} added: {cols:?}");
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let found: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master
                 WHERE name IN ('messages_target', 'read_positions') ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(found, ["messages_target", "read_positions"]);
    }

    // Old rows read as messages, and take events.
    let page = history(&store, "old").await;
    assert_eq!(seqs(&page), [1, 3]);
    assert!(page.iter().all(|m| m.is_message() && m.edited_at.is_none()));
    let edit = store
        .append(event(
            "old",
            "ann",
            "e1",
            "first, edited",
            NewEvent::Edit { target: Seq(1) },
        ))
        .await
        .unwrap();
    assert_eq!(edit.message.seq, Seq(4));
    store
        .append(event("old", "ann", "r1", "", react(3, "👍", true)))
        .await
        .unwrap();
    refused(
        store
            .append(event(
                "old",
                "bob",
                "e2",
                "x",
                NewEvent::Edit { target: Seq(2) },
            ))
            .await,
        ErrorCode::NotFound,
    );
    let page = history(&store, "old").await;
    assert_eq!(page[0].data, "first, edited");
    assert_eq!(page[0].edited_at, Some(edit.message.ts));
    assert_eq!(page[1].reactions, counts(&[("👍", 1)]));
    assert_eq!(
        store
            .mark_read(&room("old"), &user("bob"), Seq(5))
            .await
            .unwrap(),
        ReadMark {
            seq: Seq(5),
            moved: true
        }
    );
    store.shutdown().await;
    drop(store);

    // Opening again is a no-op on a current store.
    let store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
    assert_eq!(columns(&path), cols);
    assert_eq!(history(&store, "old").await[0].data, "first, edited");
    assert_eq!(
        store.read_positions(&room("old")).await.unwrap(),
        [(user("bob"), Seq(5))]
    );
    store.shutdown().await;
}

/// Sleeps past the current millisecond, so that what comes after is stamped later.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_between_a_message_and_its_edit_gives_the_original_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
    store
        .append(msg("r", "ann", "m1", "original"))
        .await
        .unwrap();
    store
        .append(msg("r", "ann", "m2", "to be deleted later"))
        .await
        .unwrap();
    store
        .append(event("r", "bob", "r1", "", react(1, "👍", true)))
        .await
        .unwrap();
    store
        .mark_read(&room("r"), &user("cy"), Seq(2))
        .await
        .unwrap();
    store
        .mark_read(&room("r"), &user("dan"), Seq(1))
        .await
        .unwrap();
    tick().await;
    let t = now_ms();
    tick().await;
    store
        .append(event(
            "r",
            "ann",
            "e1",
            "edited",
            NewEvent::Edit { target: Seq(1) },
        ))
        .await
        .unwrap();
    store
        .append(event("r", "bob", "r2", "", react(1, "👍", false)))
        .await
        .unwrap();
    store
        .append(event(
            "r",
            "ann",
            "d1",
            "",
            NewEvent::Delete { target: Seq(2) },
        ))
        .await
        .unwrap();
    store
        .mark_read(&room("r"), &user("bob"), Seq(6))
        .await
        .unwrap();
    store
        .mark_read(&room("r"), &user("dan"), Seq(6))
        .await
        .unwrap();
    let now = history(&store, "r").await;
    assert_eq!(seqs(&now), [1]);
    assert_eq!(
        (now[0].data.as_str(), now[0].reactions.len()),
        ("edited", 0)
    );
    store.shutdown().await;
    drop(store);

    let out = tempfile::tempdir().unwrap();
    let into = out.path().join("restored");
    let info = snapshot::restore(dir.path(), t, &into).unwrap();
    assert_eq!(
        (
            info.kept,
            info.dropped,
            info.events_dropped,
            info.tombstones_cleared
        ),
        (2, 0, 3, 1),
        "{info:?}"
    );
    assert_eq!(info.read_positions_dropped, 2, "{info:?}");

    let restored = SqliteStore::open(&into, Arc::new(NoListener)).unwrap();
    let page = history(&restored, "r").await;
    assert_eq!(seqs(&page), [1, 2], "the later deletion is undone");
    assert_eq!(page[0].data, "original");
    assert_eq!(page[0].edited_at, None);
    assert_eq!(
        page[0].reactions,
        counts(&[("👍", 1)]),
        "the later un-reaction is undone"
    );
    let entries = restored
        .read_entries(&room("r"), Seq(0), 100)
        .await
        .unwrap();
    assert_eq!(seqs(&entries.messages), [1, 2, 3]);
    assert_eq!(
        restored.read_positions(&room("r")).await.unwrap(),
        [(user("cy"), Seq(2))],
        "positions moved after the instant are gone (where dan's stood then is not kept)"
    );
    // The head is kept: the next entry takes a seq never handed out.
    let next = restored
        .append(event(
            "r",
            "ann",
            "e2",
            "again",
            NewEvent::Edit { target: Seq(1) },
        ))
        .await
        .unwrap();
    assert_eq!(next.message.seq, Seq(7));
    assert_eq!(history(&restored, "r").await[0].data, "again");
    restored.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_does_not_fail_the_rest_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let listener = Arc::new(RecordingListener::default());
    let store = SqliteStore::open(dir.path(), listener.clone()).unwrap();
    store.append(msg("r", "ann", "m1", "one")).await.unwrap();

    // Hold SQLite's write lock so the writer waits in BEGIN (its busy timeout is 5 s): a
    // first append takes it there, and everything queued meanwhile is the next batch.
    let blocker = rusqlite::Connection::open(dir.path().join(STORE_FILE)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let plug = store
        .queue_append(msg("plug", "ann", "p", "x"))
        .ok()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let batch = vec![
        msg("r", "ann", "m2", "two"), // 2
        event(
            "r",
            "bob",
            "e1",
            "not yours",
            NewEvent::Edit { target: Seq(1) },
        ), // refused
        event(
            "r",
            "ann",
            "e2",
            "one, fixed",
            NewEvent::Edit { target: Seq(1) },
        ), // 3
        event("r", "bob", "r1", "", react(2, "👍", true)), // 4: sees seq 2 of this batch
        event("r", "cy", "r2", "", react(2, "👍", true)), // 5: sees 4
        event("r", "ann", "d1", "", NewEvent::Delete { target: Seq(2) }), // 6
        event("r", "bob", "r3", "", react(2, "🎉", true)), // refused: sees the deletion
        event("r", "ann", "e3", "x", NewEvent::Edit { target: Seq(99) }), // refused
        msg("r", "ann", "m3", "three"), // 7
    ];
    let queued: Vec<_> = batch
        .into_iter()
        .map(|m| store.queue_append(m).expect("the queue has room"))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    blocker.execute_batch("COMMIT").unwrap();
    plug.await.unwrap();
    let mut results = Vec::new();
    for commit in queued {
        results.push(commit.await);
    }

    let ok: Vec<&Appended> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        ok.iter().map(|a| a.message.seq.0).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6, 7]
    );
    assert!(
        ok.iter()
            .all(|a| a.message.ts == ok[0].message.ts && !a.duplicate),
        "one batch (one commit time)"
    );
    let codes: Vec<Option<ErrorCode>> = results
        .iter()
        .map(|r| match r {
            Err(StoreError::Refused(e)) => Some(e.code),
            Err(e) => panic!("only refusals: {e}"),
            Ok(_) => None,
        })
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some(ErrorCode::Forbidden),
            None,
            None,
            None,
            None,
            Some(ErrorCode::NotFound),
            Some(ErrorCode::NotFound),
            None
        ]
    );
    assert_eq!(
        ok[3].message.event.as_deref(),
        Some(&EntryEvent::Reaction {
            target: Seq(2),
            emoji: "👍".into(),
            on: true,
            counts: counts(&[("👍", 2)]),
        })
    );

    // Delivered once each, in seq order; stored as answered.
    let delivered: Vec<u64> = listener
        .wait_for(8)
        .await
        .iter()
        .filter(|m| m.room.as_str() == "r")
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(delivered, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(store.head(&room("r")).await.unwrap(), Some(Seq(7)));
    let page = history(&store, "r").await;
    assert_eq!(seqs(&page), [1, 7]);
    assert_eq!(page[0].data, "one, fixed");
    let entries = store.read_entries(&room("r"), Seq(0), 100).await.unwrap();
    assert_eq!(seqs(&entries.messages), [1, 3, 4, 5, 6, 7]);
    // Replayed, a reaction carries the counts it committed with.
    assert!(matches!(
        entries.messages[2].event.as_deref(),
        Some(EntryEvent::Reaction { counts: c, .. }) if *c == counts(&[("👍", 1)])
    ));
    // So does a retried one.
    let again = store
        .append(event("r", "bob", "r1", "", react(2, "👍", true)))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.event, ok[2].message.event);
    store.shutdown().await;
}

//! The SQLite store: the conformance suite every store adapter passes, plus what only a durable
//! store can show (reopening, the directory lock, group commit under concurrency).

use std::sync::Arc;

use dynamowave_core::conformance::{self, RecordingListener};
use dynamowave_core::ports::{ConnectionStore, DeadLetters, MessageLog, NewMessage, NoListener};
use dynamowave_core::protocol::HistoryQuery;
use dynamowave_core::{RoomId, Seq, UserName};
use dynamowave_store_sqlite::sqlite::{OpenError, SqliteStore};

fn new_message(room: &str, id: &str, data: &str) -> NewMessage {
    NewMessage::message(
        RoomId::parse(room).unwrap(),
        id.into(),
        UserName::parse("ann").unwrap(),
        data.into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_log_passes_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::message_log(|listener| {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), listener).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { Arc::new(store) as Arc<dyn MessageLog> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_log_passes_the_event_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::events(|listener| {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), listener).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { Arc::new(store) as Arc<dyn MessageLog> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_connections_pass_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::connection_store(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { Arc::new(store) as Arc<dyn ConnectionStore> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dead_letters_pass_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::dead_letters(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { Arc::new(store) as Arc<dyn DeadLetters> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_messages_seqs_and_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
        for i in 1..=3 {
            store
                .append(new_message("r", &i.to_string(), &format!("m{i}")))
                .await
                .unwrap();
        }
        store.shutdown().await;
    }
    let listener = Arc::new(RecordingListener::default());
    let store = SqliteStore::open(dir.path(), listener.clone()).unwrap();
    let r = RoomId::parse("r").unwrap();
    assert_eq!(store.head(&r).await.unwrap(), Some(Seq(3)));
    let dup = store.append(new_message("r", "2", "again")).await.unwrap();
    assert!(dup.duplicate && dup.message.seq == Seq(2) && dup.message.data == "m2");
    let next = store.append(new_message("r", "4", "m4")).await.unwrap();
    assert_eq!(
        next.message.seq,
        Seq(4),
        "seqs continue after a restart, never reused"
    );
    let page = store
        .read(&r, HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.data.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m2", "m3", "m4"]
    );
    assert_eq!(
        listener.seen().len(),
        1,
        "only the new commit was announced"
    );
}

#[tokio::test]
async fn a_data_dir_serves_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
    match SqliteStore::open(dir.path(), Arc::new(NoListener)) {
        Err(e @ OpenError::Locked(_)) => assert!(
            e.to_string()
                .contains("in use by another dynamowave process")
        ),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second store opened the same directory"),
    }
    first.shutdown().await;
    drop(first);
    SqliteStore::open(dir.path(), Arc::new(NoListener)).expect("free again after the first closes");
}

#[tokio::test]
async fn writes_after_shutdown_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
    store.shutdown().await;
    let err = store
        .append(new_message("r", "1", "late"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[test]
fn the_database_file_is_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let _store = SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("dynamowave.sqlite3")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

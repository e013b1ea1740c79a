//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a commit is on
//! disk when it returns.
//!
//! All writes go through one writer thread that does group commit: it takes every command
//! waiting in its queue (up to [`MAX_BATCH`]), applies them in one transaction, commits once
//! (one fsync), and only then answers the callers and tells the commit listener. Reads run on a
//! small pool of reader connections on tokio's blocking threads; WAL lets them proceed while the
//! writer commits.
//!
//! The data directory is locked for the life of the store, so two servers never share it.
//!
//! Edits, deletions and reactions are rows of `messages` of their own (`kind`, `target`), so
//! the log stays append-only: a message's row is never rewritten for an edit or a reaction (a
//! deletion sets its `deleted_at`, as the management API's does), and reads fold the events
//! about a page's messages into them. A point-in-time restore, which drops the rows stamped
//! after its instant, therefore undoes them too.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use async_trait::async_trait;
use dynamowave_core::ports::{
    Appended, Claim, CommitListener, ConnectionRecord, ConnectionStore, DeadLetter, DeadLetterKind,
    DeadLetters, Deletion, EventTarget, MessageLog, NewDeadLetter, NewEvent, NewMessage,
    OutboxEntry, Purge, QueuedAppend, ReadMark, StoreError, StoreLifecycle, WebhookOutbox,
    check_event, refusal,
};
use dynamowave_core::protocol::{
    ChatMessage, EntryEvent, HistoryQuery, MAX_EMOJIS_PER_MESSAGE, Mode, Page, ReactionCounts,
};
use dynamowave_core::types::now_ms;
use dynamowave_core::{ConnectionId, RoomId, Seq, UserName, webhook};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use tokio::sync::{mpsc, oneshot};

use crate::cipher::{self, Keyring, Row};

/// Most commands applied in one transaction.
pub const MAX_BATCH: usize = 1024;
/// Commands that may wait for the writer before senders wait too (backpressure).
const QUEUE_DEPTH: usize = 8192;
/// The same for the priority lane (connection-table commands; see [`Command::is_priority`]).
const PRIORITY_QUEUE_DEPTH: usize = 4096;
/// Idle reader connections kept open.
const READER_POOL: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rooms (
    room       TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    id   TEXT NOT NULL,
    user TEXT NOT NULL,
    data TEXT NOT NULL,
    ts   INTEGER NOT NULL,
    -- Set by DELETE /rooms/{room}/messages/{seq}: the row stays as a tombstone, so a
    -- point-in-time restore to before the deletion brings the message back.
    deleted_at INTEGER,
    -- The key `data` is encrypted under (cipher.rs); NULL: `data` is plaintext.
    key_id TEXT,
    -- NULL: a message. 'edit', 'delete' or 'reaction': an event entry about message `target`
    -- of the room (`data` is an edit's new text). The target's row is never rewritten for an
    -- edit or reaction: its state is folded from these rows on read, so a point-in-time
    -- restore (which drops later rows) undoes them.
    kind        TEXT,
    target      INTEGER,
    -- A reaction's emoji and whether it sets (1) or takes back (0) the user's reaction.
    emoji       TEXT,
    reaction_on INTEGER,
    PRIMARY KEY (room, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (room, user, id);
-- How far each user has read each room (`mark_read`); positions only move forward.
CREATE TABLE IF NOT EXISTS read_positions (
    room       TEXT NOT NULL,
    user       TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (room, user)
);
CREATE TABLE IF NOT EXISTS connections (
    id           TEXT PRIMARY KEY,
    user         TEXT NOT NULL,
    mode         TEXT NOT NULL,
    source_ip    TEXT NOT NULL,
    user_agent   TEXT NOT NULL,
    connected_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    connection_id TEXT NOT NULL,
    room          TEXT NOT NULL,
    PRIMARY KEY (connection_id, room)
);
-- What the server accepted and could not deliver (docs/reliability.md, dead letters).
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    target      TEXT NOT NULL,
    user        TEXT,
    reason      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 1,
    last_error  TEXT,
    replayed_at INTEGER,
    replayed_to TEXT,
    -- The key `payload` is encrypted under (cipher.rs); NULL: `payload` is plaintext.
    key_id TEXT
);
-- Events for the product's backend (`WebhookOutbox`), written in the commit of what they
-- report when the store is opened with webhooks on; delivered ones are removed.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    -- One JSON object (dynamowave_core::webhook); sealed like a payload when keys are set.
    body       TEXT NOT NULL,
    key_id     TEXT
);
";

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    Append(NewMessage, Reply<Appended>),
    CreateRoom(RoomId, Reply<Seq>),
    InsertConnection(ConnectionRecord, Reply<()>),
    RemoveConnection(ConnectionId, Reply<()>),
    AddMembership(ConnectionId, RoomId, Reply<()>),
    RemoveMembership(ConnectionId, RoomId, Reply<()>),
    PurgeConnections(Reply<u64>),
    Delete(RoomId, Seq, Reply<Deletion>),
    /// Moves a read position forward (checked against the writer's head, like appends).
    MarkRead(RoomId, UserName, Seq, Reply<ReadMark>),
    AddDeadLetter(NewDeadLetter, Reply<u64>),
    /// Marks a pending dead letter replayed (to the target) before delivery is tried, so two
    /// replays cannot both deliver it.
    ClaimDeadLetter(u64, String, Reply<Claim>),
    /// Undoes a claim whose delivery failed, counting the attempt.
    ReleaseDeadLetter(u64, String, Reply<()>),
    PurgeDeadLetters(Purge, Reply<u64>),
    /// Removes the webhook events with ids up to this one (delivered or dead-lettered).
    RemoveWebhookEvents(u64, Reply<u64>),
    /// Readiness (the server's `GET /readyz`): rewrites the header page in a `BEGIN IMMEDIATE` transaction
    /// and commits, so a full disk, a read-only file or a stuck writer shows up.
    Probe(Reply<()>),
    /// Apply everything queued before it, then stop the writer.
    Shutdown(oneshot::Sender<()>),
}

impl Command {
    /// Commands of `$connect`, `$disconnect` and `join`/`leave` (the connections table, the
    /// memberships, a room's creation) go through the priority lane: the writer takes them
    /// before queued appends, so a login's commit never waits behind a message flood (the
    /// original's reserved concurrency). They commute with appends: none reads what an append
    /// writes, and `create_room` of an existing room is a no-op.
    fn is_priority(&self) -> bool {
        matches!(
            self,
            Command::InsertConnection(..)
                | Command::RemoveConnection(..)
                | Command::AddMembership(..)
                | Command::RemoveMembership(..)
                | Command::PurgeConnections(..)
                | Command::CreateRoom(..)
                | Command::Probe(..)
        )
    }
}

/// How to open a [`SqliteStore`] beyond its directory and listener. The default: plaintext, no
/// webhook events.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Encryption at rest (cipher.rs): message bodies, dead-letter payloads and webhook events
    /// are sealed under the newest key, every key decrypts. `None`: plaintext.
    pub keys: Option<Arc<Keyring>>,
    /// Write the event of every commit to `webhook_outbox` ([`WebhookOutbox`]). Off, nothing
    /// is written there and commits cost what they did.
    pub webhooks: bool,
}

/// The SQLite adapter of [`MessageLog`], [`ConnectionStore`], [`DeadLetters`],
/// [`WebhookOutbox`] and [`StoreLifecycle`].
pub struct SqliteStore {
    writer: mpsc::Sender<Command>,
    /// The writer's priority lane, drained before `writer` on every batch.
    priority: mpsc::Sender<Command>,
    readers: Arc<ReaderPool>,
    /// Committed heads of the rooms seen since start, so `head` (every join, history and
    /// members request) rarely needs a read. The writer updates it after each commit.
    heads: Arc<RwLock<HashMap<RoomId, u64>>>,
    writer_thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// Encryption at rest (cipher.rs): message bodies and dead-letter payloads are
    /// sealed on the writer thread and opened on the reader threads. `None`: plaintext.
    keys: Option<Arc<Keyring>>,
    webhooks: bool,
    // Held for the store's life: the OS lock on `LOCK` keeps other processes out.
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` and starts its writer thread. Writes
    /// plaintext; see [`SqliteStore::open_with_keys`].
    pub fn open(dir: &Path, listener: Arc<dyn CommitListener>) -> Result<Self, OpenError> {
        Self::open_with_keys(dir, listener, None)
    }

    /// [`SqliteStore::open`], encrypting message bodies and dead-letter payloads under the
    /// newest of `keys` (each of them decrypts). Rows written before encryption was turned on
    /// stay readable.
    pub fn open_with_keys(
        dir: &Path,
        listener: Arc<dyn CommitListener>,
        keys: Option<Arc<Keyring>>,
    ) -> Result<Self, OpenError> {
        Self::open_with(
            dir,
            listener,
            StoreOptions {
                keys,
                webhooks: false,
            },
        )
    }

    /// Opens (creating if needed) the store in `dir` as `options` say and starts its writer.
    pub fn open_with(
        dir: &Path,
        listener: Arc<dyn CommitListener>,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        let StoreOptions { keys, webhooks } = options;
        fs::create_dir_all(dir).map_err(|e| OpenError::Io(dir.to_owned(), e))?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(|e| OpenError::Io(lock_path.clone(), e))?;
        lock.try_lock()
            .map_err(|_| OpenError::Locked(dir.to_owned()))?;

        let path = dir.join("dynamowave.sqlite3");
        let conn = open_writer(&path).map_err(|e| OpenError::Sqlite(path.clone(), e))?;

        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (priority_tx, priority_rx) = mpsc::channel(PRIORITY_QUEUE_DEPTH);
        // Only to wait on both lanes at once: no I/O or timer driver, no worker threads.
        let waiter = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| OpenError::Io(path.clone(), e))?;
        let heads = Arc::new(RwLock::new(HashMap::new()));
        let committed_heads = heads.clone();
        let writer_keys = keys.clone();
        let writer_thread = thread::Builder::new()
            .name("dynamowave-sqlite-writer".into())
            .spawn(move || {
                Writer {
                    conn,
                    heads: HashMap::new(),
                    committed_heads,
                    listener,
                    keys: writer_keys,
                    webhooks,
                }
                .run(priority_rx, rx, waiter)
            })
            .map_err(|e| OpenError::Io(path.clone(), e))?;
        Ok(SqliteStore {
            writer: tx,
            priority: priority_tx,
            heads,
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            writer_thread: Mutex::new(Some(writer_thread)),
            keys,
            webhooks,
            _lock: lock,
        })
    }

    /// Whether the store writes webhook events ([`StoreOptions::webhooks`]).
    pub fn webhooks(&self) -> bool {
        self.webhooks
    }

    /// Applies every command queued so far, commits, and stops the writer. Later writes fail
    /// with [`StoreError::Closed`].
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.writer.send(Command::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        let handle = self
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let command = make(reply);
        let lane = if command.is_priority() {
            &self.priority
        } else {
            &self.writer
        };
        lane.send(command).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Backend(format!("reader task failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Without an explicit shutdown, closing the queue still lets the writer finish what is
        // queued and commit before it exits.
        let handle = self
            .writer_thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let (tx, _) = mpsc::channel(1);
            drop(std::mem::replace(&mut self.writer, tx.clone()));
            drop(std::mem::replace(&mut self.priority, tx));
            let _ = handle.join();
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(
        "the data directory {0} is in use by another dynamowave process; stop it or choose another --data-dir"
    )]
    Locked(PathBuf),
    #[error("cannot open the SQLite database {0}: {1}")]
    Sqlite(PathBuf, rusqlite::Error),
}

/// The writer's connection: WAL (readers never block it), `synchronous=FULL` (a commit is
/// fsync'd before it returns, so an ack survives power loss), and the schema.
pub(crate) fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Brings a store written by an older version up to [`SCHEMA`].
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_deleted_at: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('messages') WHERE name = 'deleted_at'",
        [],
        |r| r.get(0),
    )?;
    if !has_deleted_at {
        conn.execute_batch("ALTER TABLE messages ADD COLUMN deleted_at INTEGER")?;
    }
    for table in ["messages", "dead_letters"] {
        let has_key_id: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = 'key_id'",
            [table],
            |r| r.get(0),
        )?;
        if !has_key_id {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN key_id TEXT"))?;
        }
    }
    // Event entries (edits, deletions, reactions) and their index, for stores from before them.
    for (column, ty) in [
        ("kind", "TEXT"),
        ("target", "INTEGER"),
        ("emoji", "TEXT"),
        ("reaction_on", "INTEGER"),
    ] {
        let has: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('messages') WHERE name = ?1",
            [column],
            |r| r.get(0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE messages ADD COLUMN {column} {ty}"))?;
        }
    }
    // The events about a page's messages (`current_state`), and a reaction's fold. Partial:
    // messages (most rows) are not in it.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_target ON messages (room, target) WHERE target IS NOT NULL",
    )?;
    // Which keys the store uses, found without a scan (`SqliteStore::unknown_keys`). Partial:
    // plaintext rows (encryption off) add nothing to it.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_key_id ON messages (key_id) WHERE key_id IS NOT NULL",
    )?;
    Ok(())
}

/// A SQLite failure as the port's error. Logged here: the client only hears "unavailable".
fn backend(e: rusqlite::Error) -> StoreError {
    tracing::error!(error = %e, "SQLite store operation failed");
    StoreError::Backend(e.to_string())
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(backend)?,
        };
        let result = f(&conn).map_err(backend);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < READER_POOL {
            idle.push(conn);
        }
        result
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    /// Last seq per room as this writer's transactions see it, so appends need no read of
    /// `rooms`. Ahead of `committed_heads` while a batch is open.
    heads: HashMap<RoomId, u64>,
    committed_heads: Arc<RwLock<HashMap<RoomId, u64>>>,
    listener: Arc<dyn CommitListener>,
    /// Seals new message bodies, dead-letter payloads and webhook events; `None`: plaintext.
    keys: Option<Arc<Keyring>>,
    /// Whether commands write their webhook events ([`StoreOptions::webhooks`]).
    webhooks: bool,
}

/// What to tell a caller once the batch's fate is known.
enum Pending {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    Seq(Reply<Seq>, Result<Seq, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
    Deletion(Reply<Deletion>, Result<Deletion, StoreError>),
    Claim(Reply<Claim>, Result<Claim, StoreError>),
    ReadMark(Reply<ReadMark>, Result<ReadMark, StoreError>),
}

impl Writer {
    /// Takes every command waiting (up to [`MAX_BATCH`]), the priority lane's first, applies
    /// them in one transaction, and again; sleeps while both lanes are empty. Stops on
    /// `Shutdown`, or when both lanes are closed and drained.
    fn run(
        mut self,
        mut priority: mpsc::Receiver<Command>,
        mut rx: mpsc::Receiver<Command>,
        waiter: tokio::runtime::Runtime,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            for lane in [&mut priority, &mut rx] {
                while batch.len() < MAX_BATCH {
                    match lane.try_recv() {
                        Ok(cmd) => batch.push(cmd),
                        Err(_) => break,
                    }
                }
            }
            if batch.is_empty() {
                let next = waiter.block_on(async {
                    tokio::select! {
                        biased;
                        Some(cmd) = priority.recv() => Some(cmd),
                        Some(cmd) = rx.recv() => Some(cmd),
                        else => None,
                    }
                });
                match next {
                    // Then take whatever else is waiting, priority first.
                    Some(cmd) => {
                        batch.push(cmd);
                        continue;
                    }
                    None => return,
                }
            }
            let stop = self.apply(&mut batch);
            if let Some(done) = stop {
                let _ = done.send(());
                return;
            }
        }
    }

    /// Applies one batch in one transaction. Returns the shutdown signal if the batch held one
    /// (commands after it are dropped, their callers see `Closed`).
    fn apply(&mut self, batch: &mut Vec<Command>) -> Option<oneshot::Sender<()>> {
        let mut pending = Vec::with_capacity(batch.len());
        let mut committed: Vec<Arc<ChatMessage>> = Vec::new();
        let mut touched: HashMap<RoomId, u64> = HashMap::new();
        let mut stop = None;
        // Metrics, once per batch: its size, its appends, BEGIN..COMMIT (fsync included). Looked
        // up in the process's recorder per batch (a few map lookups next to an fsync), so a
        // recorder installed after the store opened still gets them.
        let started = std::time::Instant::now();
        metrics::histogram!("dynamowave_store_batch_size").record(batch.len() as f64);
        let appends = batch
            .iter()
            .filter(|c| matches!(c, Command::Append(..)))
            .count();
        metrics::counter!("dynamowave_messages_received_total").increment(appends as u64);

        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let err = e.to_string();
                for cmd in batch.drain(..) {
                    fail(cmd, &err);
                }
                return None;
            }
        };
        let ts = now_ms();
        // `None` with webhooks off: no event is built, no savepoint taken.
        let events = self.webhooks.then_some(Events {
            keys: self.keys.as_deref(),
            ts,
        });
        for cmd in batch.drain(..) {
            if stop.is_some() {
                drop(cmd);
                continue;
            }
            match cmd {
                Command::Append(m, reply) => {
                    let result = append(
                        &tx,
                        self.keys.as_deref(),
                        events,
                        &mut self.heads,
                        &mut touched,
                        m,
                        ts,
                    );
                    if let Ok(a) = &result
                        && !a.duplicate
                    {
                        committed.push(a.message.clone());
                    }
                    pending.push(Pending::Append(reply, result));
                }
                Command::CreateRoom(room, reply) => {
                    let result = create_room(&tx, &mut self.heads, &mut touched, &room, ts);
                    pending.push(Pending::Seq(reply, result));
                }
                Command::InsertConnection(r, reply) => {
                    let result = insert_connection(&tx, events, &r);
                    pending.push(Pending::Unit(reply, result));
                }
                Command::RemoveConnection(id, reply) => {
                    let result = remove_connection(&tx, events, &id);
                    pending.push(Pending::Unit(reply, result));
                }
                Command::AddMembership(id, room, reply) => {
                    let result = add_membership(&tx, events, &id, &room);
                    pending.push(Pending::Unit(reply, result));
                }
                Command::RemoveMembership(id, room, reply) => {
                    let result = remove_membership(&tx, events, &id, &room);
                    pending.push(Pending::Unit(reply, result));
                }
                Command::PurgeConnections(reply) => {
                    let result = purge_connections(&tx, events);
                    pending.push(Pending::Count(reply, result));
                }
                Command::Delete(room, seq, reply) => {
                    let result = delete(&tx, &room, seq, ts).map_err(backend);
                    pending.push(Pending::Deletion(reply, result));
                }
                Command::MarkRead(room, user, seq, reply) => {
                    let result = mark_read(&tx, &mut self.heads, &room, &user, seq, ts);
                    pending.push(Pending::ReadMark(reply, result));
                }
                Command::AddDeadLetter(entry, reply) => {
                    let result =
                        add_dead_letter(&tx, self.keys.as_deref(), &entry, ts).map_err(backend);
                    pending.push(Pending::Count(reply, result));
                }
                Command::ClaimDeadLetter(id, to, reply) => {
                    let result =
                        claim_dead_letter(&tx, self.keys.as_deref(), id, &to, ts).map_err(backend);
                    pending.push(Pending::Claim(reply, result));
                }
                Command::ReleaseDeadLetter(id, error, reply) => {
                    let result = tx
                        .execute(
                            "UPDATE dead_letters SET replayed_at = NULL, replayed_to = NULL,
                             attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                            params![id as i64, error],
                        )
                        .map(drop)
                        .map_err(backend);
                    pending.push(Pending::Unit(reply, result));
                }
                Command::PurgeDeadLetters(which, reply) => {
                    let result = match which {
                        Purge::One(id) => {
                            tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id as i64])
                        }
                        Purge::Replayed => {
                            tx.execute("DELETE FROM dead_letters WHERE replayed_at IS NOT NULL", [])
                        }
                        Purge::All => tx.execute("DELETE FROM dead_letters", []),
                    }
                    .map(|n| n as u64)
                    .map_err(backend);
                    pending.push(Pending::Count(reply, result));
                }
                Command::RemoveWebhookEvents(id, reply) => {
                    let result = tx
                        .prepare_cached("DELETE FROM webhook_outbox WHERE id <= ?1")
                        // Clamped, not wrapped: through an id past i64::MAX is through all.
                        .and_then(|mut s| s.execute([i64::try_from(id).unwrap_or(i64::MAX)]))
                        .map(|n| n as u64)
                        .map_err(backend);
                    pending.push(Pending::Count(reply, result));
                }
                Command::Probe(reply) => {
                    // Setting user_version to its own value dirties page 1: the commit writes
                    // (and syncs) a WAL frame, and nothing changes.
                    let result = tx
                        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
                        .and_then(|v| tx.pragma_update(None, "user_version", v))
                        .map_err(backend);
                    pending.push(Pending::Unit(reply, result));
                }
                Command::Shutdown(done) => stop = Some(done),
            }
        }

        let outcome = save_heads(&tx, &touched, ts).and_then(|()| tx.commit());
        metrics::histogram!("dynamowave_store_commit_seconds").record(started.elapsed());
        match outcome {
            Ok(()) => {
                metrics::counter!("dynamowave_messages_acked_total")
                    .increment(committed.len() as u64);
                // Heads, then the fan-out, then the callers: once `append` returns, `head`
                // shows the message and it is queued to every member (the port's contract).
                let mut heads = self
                    .committed_heads
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                for (room, seq) in touched {
                    heads.insert(room, seq);
                }
                drop(heads);
                if !committed.is_empty() {
                    self.listener.committed(&committed);
                }
                for p in pending {
                    p.answer(None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commands = pending.len(), "SQLite commit failed; the batch is not stored");
                // Nothing of the batch is stored: forget the heads it advanced; the cache
                // reloads from the `rooms` table.
                self.heads.clear();
                let err = format!("commit failed: {e}");
                for p in pending {
                    p.answer(Some(&err));
                }
            }
        }
        stop
    }
}

impl Pending {
    /// Answers the caller; with `Some(err)` the whole batch failed and every caller gets it.
    fn answer(self, batch_error: Option<&str>) {
        match self {
            Pending::Append(r, res) => settle(r, res, batch_error),
            Pending::Seq(r, res) => settle(r, res, batch_error),
            Pending::Unit(r, res) => settle(r, res, batch_error),
            Pending::Count(r, res) => settle(r, res, batch_error),
            Pending::Deletion(r, res) => settle(r, res, batch_error),
            Pending::Claim(r, res) => settle(r, res, batch_error),
            Pending::ReadMark(r, res) => settle(r, res, batch_error),
        }
    }
}

fn settle<T>(reply: Reply<T>, result: Result<T, StoreError>, batch_error: Option<&str>) {
    let result = match batch_error {
        Some(e) => Err(StoreError::Backend(e.to_owned())),
        None => result,
    };
    let _ = reply.send(result);
}

fn fail(cmd: Command, err: &str) {
    let e = || StoreError::Backend(err.to_owned());
    match cmd {
        Command::Append(_, r) => drop(r.send(Err(e()))),
        Command::CreateRoom(_, r) => drop(r.send(Err(e()))),
        Command::InsertConnection(_, r)
        | Command::RemoveConnection(_, r)
        | Command::AddMembership(_, _, r)
        | Command::RemoveMembership(_, _, r)
        | Command::Probe(r) => drop(r.send(Err(e()))),
        Command::PurgeConnections(r)
        | Command::AddDeadLetter(_, r)
        | Command::PurgeDeadLetters(_, r)
        | Command::RemoveWebhookEvents(_, r) => drop(r.send(Err(e()))),
        Command::Delete(_, _, r) => drop(r.send(Err(e()))),
        Command::MarkRead(_, _, _, r) => drop(r.send(Err(e()))),
        Command::ClaimDeadLetter(_, _, r) => drop(r.send(Err(e()))),
        Command::ReleaseDeadLetter(_, _, r) => drop(r.send(Err(e()))),
        Command::Shutdown(done) => drop(done.send(())),
    }
}

/// The room's head: from the cache, else from the table. `None` when the room does not exist.
fn head(
    tx: &Transaction<'_>,
    heads: &mut HashMap<RoomId, u64>,
    room: &RoomId,
) -> rusqlite::Result<Option<u64>> {
    if let Some(&seq) = heads.get(room) {
        return Ok(Some(seq));
    }
    let seq: Option<i64> = tx
        .prepare_cached("SELECT last_seq FROM rooms WHERE room = ?1")?
        .query_row([room.as_str()], |r| r.get(0))
        .optional()?;
    if let Some(seq) = seq {
        heads.insert(room.clone(), seq as u64);
    }
    Ok(seq.map(|s| s as u64))
}

/// `messages.kind` of an event entry (NULL: a message).
const EDIT: &str = "edit";
const DELETE: &str = "delete";
const REACTION: &str = "reaction";

/// The columns [`entry_row`] reads, in its order (a macro, for `concat!` into consts).
macro_rules! entry_cols {
    () => {
        "seq, id, user, data, ts, key_id, kind, target, emoji, reaction_on"
    };
}
const ENTRY_COLS: &str = entry_cols!();

/// The latest edit of each message `?2..=?3` of room `?1` ([`current_state`]).
const LATEST_EDITS: &str = concat!(
    "SELECT ",
    entry_cols!(),
    " FROM messages WHERE room = ?1 AND seq IN (
         SELECT max(seq) FROM messages
         WHERE room = ?1 AND target BETWEEN ?2 AND ?3 AND kind = 'edit' GROUP BY target)"
);

/// Reaction counts of the messages `?2..=?3` of room `?1` ([`reaction_counts`]).
const REACTION_COUNTS: &str = "SELECT target, emoji, count(*) FROM (
         SELECT target, emoji, reaction_on,
                row_number() OVER (PARTITION BY target, emoji, user ORDER BY seq DESC) AS nth
         FROM messages
         WHERE room = ?1 AND target BETWEEN ?2 AND ?3 AND kind = 'reaction')
     WHERE nth = 1 AND reaction_on = 1
     GROUP BY target, emoji";

/// The reaction rows of message `?2` of room `?1` through seq `?3` ([`counts_at_commit`]).
/// `INDEXED BY`: without it the planner prefers the primary key for `seq <= ?3 ORDER BY
/// seq`, a scan of the whole room's log.
const REACTIONS_THROUGH: &str = "SELECT seq, emoji, user, reaction_on
     FROM messages INDEXED BY messages_target
     WHERE room = ?1 AND target = ?2 AND kind = 'reaction' AND seq <= ?3 ORDER BY seq";

/// A seq as an SQL integer: clamped, not wrapped (no row has a seq past `i64::MAX`).
fn sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn append(
    tx: &Transaction<'_>,
    keys: Option<&Keyring>,
    events: Option<Events<'_>>,
    heads: &mut HashMap<RoomId, u64>,
    touched: &mut HashMap<RoomId, u64>,
    m: NewMessage,
    ts: u64,
) -> Result<Appended, StoreError> {
    // Messages and event entries share the key: a retry gets back whatever was stored.
    let original = tx
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM messages WHERE room = ?1 AND user = ?2 AND id = ?3"
        ))
        .and_then(|mut s| {
            s.query_row([m.room.as_str(), m.user.as_str(), &m.id], |r| {
                entry_row(&m.room, r, keys)
            })
            .optional()
        })
        .map_err(backend)?;
    if let Some(mut entry) = original {
        // A reaction's counts are not stored: folded again up to its seq, they are the
        // counts it committed with (later rows do not change them).
        counts_at_commit(tx, &m.room, std::slice::from_mut(&mut entry)).map_err(backend)?;
        return Ok(Appended {
            message: Arc::new(entry),
            duplicate: true,
        });
    }
    let seq = head(tx, heads, &m.room).map_err(backend)?.unwrap_or(0) + 1;
    let NewMessage {
        room,
        id,
        user,
        data,
        event,
    } = m;
    let mut message = ChatMessage::new(room, Seq(seq), id, user, data, ts);
    match event {
        None => match events {
            None => insert_entry(tx, keys, &EntryRow::message(&message))?,
            // The message and its event stand or fall together.
            Some(events) => in_savepoint(tx, || {
                insert_entry(tx, keys, &EntryRow::message(&message))?;
                events.queue(tx, &webhook::entry(&message))
            })?,
        },
        // Refused or failed halfway, the event leaves nothing in the batch's transaction (its
        // webhook event included).
        Some(event) => in_savepoint(tx, || {
            let committed = apply_event(tx, keys, EntryRow::message(&message), event)?;
            message.event = Some(Box::new(committed));
            match events {
                Some(events) => events.queue(tx, &webhook::entry(&message)),
                None => Ok(()),
            }
        })?,
    }
    heads.insert(message.room.clone(), seq);
    touched.insert(message.room.clone(), seq);
    Ok(Appended {
        message: Arc::new(message),
        duplicate: false,
    })
}

/// A row of `messages` to insert: a message (`kind` None) or an event entry.
struct EntryRow<'a> {
    room: &'a RoomId,
    seq: u64,
    id: &'a str,
    user: &'a UserName,
    data: &'a str,
    ts: u64,
    kind: Option<&'static str>,
    target: Option<Seq>,
    emoji: Option<&'a str>,
    on: Option<bool>,
}

impl<'a> EntryRow<'a> {
    /// The row of a message (an event entry sets its `kind` and the rest on top).
    fn message(m: &'a ChatMessage) -> Self {
        EntryRow {
            room: &m.room,
            seq: m.seq.0,
            id: &m.id,
            user: &m.user,
            data: &m.data,
            ts: m.ts,
            kind: None,
            target: None,
            emoji: None,
            on: None,
        }
    }
}

fn insert_entry(
    tx: &Transaction<'_>,
    keys: Option<&Keyring>,
    e: &EntryRow<'_>,
) -> Result<(), StoreError> {
    // Encrypted: one buffer, nonce ‖ ciphertext ‖ tag, bound to the row (cipher.rs). An
    // event's text is bound to the event's own row, like any message's.
    let sealed = match keys {
        Some(k) => {
            let row = Row::Message {
                room: e.room.as_str(),
                seq: e.seq,
                user: e.user.as_str(),
                id: e.id,
            };
            let sealed = k.seal(&row, e.data.as_bytes()).map_err(|e| {
                tracing::error!(error = %e, "cannot encrypt a message");
                StoreError::Backend(e.to_string())
            })?;
            Some(sealed)
        }
        None => None,
    };
    let (key_id, data): (Option<&str>, &dyn rusqlite::ToSql) = match &sealed {
        Some((key_id, blob)) => (Some(*key_id), blob),
        None => (None, &e.data),
    };
    tx.prepare_cached(
        "INSERT INTO messages (room, seq, id, user, data, ts, key_id, kind, target, emoji, reaction_on)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.room.as_str(),
            e.seq as i64,
            e.id,
            e.user.as_str(),
            data,
            e.ts as i64,
            key_id,
            e.kind,
            e.target.map(|t| sql_seq(t.0)),
            e.emoji,
            e.on
        ])
    })
    .map(drop)
    .map_err(backend)
}

/// Runs `f` in a savepoint of the batch's transaction, rolled back if it fails: one command's
/// refusal or error leaves nothing half-written, and the batch's other commands stand.
fn in_savepoint<T>(
    tx: &Transaction<'_>,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tx.execute_batch("SAVEPOINT entry").map_err(backend)?;
    let result = f();
    let end = if result.is_ok() {
        "RELEASE entry"
    } else {
        "ROLLBACK TO entry; RELEASE entry"
    };
    tx.execute_batch(end).map_err(backend)?;
    result
}

/// Where a batch's commands write their webhook events (webhooks on): the batch's keys and
/// commit time.
#[derive(Clone, Copy)]
struct Events<'a> {
    keys: Option<&'a Keyring>,
    ts: u64,
}

impl Events<'_> {
    /// Queues `body` in `webhook_outbox`, in the batch's transaction. Encrypted, the body is
    /// bound to the row's id, known after the insert (as a dead letter's payload).
    fn queue(&self, tx: &Transaction<'_>, body: &str) -> Result<(), StoreError> {
        let stored = if self.keys.is_some() { "" } else { body };
        tx.prepare_cached("INSERT INTO webhook_outbox (created_at, body) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![self.ts as i64, stored]))
            .map_err(backend)?;
        let Some(keys) = self.keys else {
            return Ok(());
        };
        let id = tx.last_insert_rowid() as u64;
        let row = Row::Outbox {
            id,
            created_at: self.ts,
        };
        let (key_id, blob) = keys.seal(&row, body.as_bytes()).map_err(|e| {
            tracing::error!(error = %e, "cannot encrypt a webhook event");
            StoreError::Backend(e.to_string())
        })?;
        tx.prepare_cached("UPDATE webhook_outbox SET body = ?2, key_id = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id as i64, blob, key_id]))
            .map(drop)
            .map_err(backend)
    }
}

/// Runs a connection-table command; with webhooks on, in a savepoint, so that a failed event
/// insert takes the command's own writes back with it (queued iff it happened).
fn with_events<T>(
    tx: &Transaction<'_>,
    events: Option<Events<'_>>,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match events {
        Some(_) => in_savepoint(tx, f),
        None => f(),
    }
}

/// The user of a stored connection, for the events that name it. A name edited by hand into
/// something invalid is left out rather than failing the command.
fn connection_user(
    tx: &Transaction<'_>,
    id: &ConnectionId,
) -> Result<Option<UserName>, StoreError> {
    let user: Option<String> = tx
        .prepare_cached("SELECT user FROM connections WHERE id = ?1")
        .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
        .map_err(backend)?;
    Ok(user.and_then(|u| UserName::parse(&u).ok()))
}

fn insert_connection(
    tx: &Transaction<'_>,
    events: Option<Events<'_>>,
    r: &ConnectionRecord,
) -> Result<(), StoreError> {
    with_events(tx, events, || {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO connections (id, user, mode, source_ip, user_agent, connected_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                r.id.as_str(),
                r.user.as_str(),
                r.mode.as_str(),
                r.source_ip,
                r.user_agent,
                r.connected_at as i64
            ])
        })
        .map_err(backend)?;
        match events {
            Some(e) => e.queue(tx, &webhook::connect(r)),
            None => Ok(()),
        }
    })
}

/// Removes the connection and its memberships; its `disconnect` only if there was a row.
fn remove_connection(
    tx: &Transaction<'_>,
    events: Option<Events<'_>>,
    id: &ConnectionId,
) -> Result<(), StoreError> {
    with_events(tx, events, || {
        // Read before the delete: the event names the user.
        let user = match events {
            Some(_) => connection_user(tx, id)?,
            None => None,
        };
        tx.prepare_cached("DELETE FROM memberships WHERE connection_id = ?1")
            .and_then(|mut s| s.execute([id.as_str()]))
            .map_err(backend)?;
        let removed = tx
            .prepare_cached("DELETE FROM connections WHERE id = ?1")
            .and_then(|mut s| s.execute([id.as_str()]))
            .map_err(backend)?;
        match events {
            Some(e) if removed > 0 => e.queue(tx, &webhook::disconnect(id, user.as_ref(), e.ts)),
            _ => Ok(()),
        }
    })
}

/// Adds the membership; its `join` only if the connection was not in the room.
fn add_membership(
    tx: &Transaction<'_>,
    events: Option<Events<'_>>,
    id: &ConnectionId,
    room: &RoomId,
) -> Result<(), StoreError> {
    change_membership(
        tx,
        events,
        id,
        room,
        "INSERT OR IGNORE INTO memberships (connection_id, room) VALUES (?1, ?2)",
        webhook::join,
    )
}

/// Removes the membership; its `leave` only if the connection was in the room.
fn remove_membership(
    tx: &Transaction<'_>,
    events: Option<Events<'_>>,
    id: &ConnectionId,
    room: &RoomId,
) -> Result<(), StoreError> {
    change_membership(
        tx,
        events,
        id,
        room,
        "DELETE FROM memberships WHERE connection_id = ?1 AND room = ?2",
        webhook::leave,
    )
}

/// Runs `sql` on (connection, room) and, when it changed a row, queues `event` for it.
fn change_membership(
    tx: &Transaction<'_>,
    events: Option<Events<'_>>,
    id: &ConnectionId,
    room: &RoomId,
    sql: &str,
    event: fn(&RoomId, &ConnectionId, Option<&UserName>, u64) -> String,
) -> Result<(), StoreError> {
    with_events(tx, events, || {
        let changed = tx
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([id.as_str(), room.as_str()]))
            .map_err(backend)?;
        match events {
            Some(e) if changed > 0 => {
                let user = connection_user(tx, id)?;
                e.queue(tx, &event(room, id, user.as_ref(), e.ts))
            }
            _ => Ok(()),
        }
    })
}

/// Deletes what a dead process left in the connections table. With webhooks on, each purged
/// connection gets its `disconnect`: the one its process would have written was lost with it,
/// and the backend would otherwise think it still connected.
fn purge_connections(tx: &Transaction<'_>, events: Option<Events<'_>>) -> Result<u64, StoreError> {
    with_events(tx, events, || {
        let purged: Vec<(String, String)> = match events {
            Some(_) => tx
                .prepare("SELECT id, user FROM connections ORDER BY id")
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(backend)?,
            None => Vec::new(),
        };
        tx.execute("DELETE FROM memberships", []).map_err(backend)?;
        let n = tx.execute("DELETE FROM connections", []).map_err(backend)? as u64;
        if let Some(e) = events {
            for (id, user) in purged {
                // Ids were validated before they were stored; one edited by hand is skipped.
                let Ok(id) = ConnectionId::parse(&id) else {
                    continue;
                };
                let user = UserName::parse(&user).ok();
                e.queue(tx, &webhook::disconnect(&id, user.as_ref(), e.ts))?;
            }
        }
        Ok(n)
    })
}

/// Checks an event entry against its target (as `check_event` says, seeing the batch's earlier
/// commands) and stores it as `row`; returns the event as committed.
fn apply_event(
    tx: &Transaction<'_>,
    keys: Option<&Keyring>,
    row: EntryRow<'_>,
    event: NewEvent,
) -> Result<EntryEvent, StoreError> {
    let room = row.room;
    let target = match &event {
        NewEvent::Edit { target }
        | NewEvent::Delete { target }
        | NewEvent::React { target, .. } => *target,
    };
    let found: Option<(String, bool, bool)> = tx
        .prepare_cached(
            "SELECT user, kind IS NULL, deleted_at IS NOT NULL FROM messages
             WHERE room = ?1 AND seq = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![room.as_str(), sql_seq(target.0)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(backend)?;
    // Names were validated before they were stored; a row edited by hand reads as the guest's.
    let author = found
        .as_ref()
        .map(|(u, ..)| UserName::parse(u).unwrap_or_else(|_| UserName::guest()));
    check_event(
        room,
        &event,
        row.user,
        found
            .as_ref()
            .zip(author.as_ref())
            .map(|((_, is_message, deleted), author)| EventTarget {
                author,
                is_message: *is_message,
                deleted: *deleted,
            }),
    )?;
    Ok(match event {
        NewEvent::Edit { target } => {
            insert_entry(
                tx,
                keys,
                &EntryRow {
                    kind: Some(EDIT),
                    target: Some(target),
                    ..row
                },
            )?;
            EntryEvent::Edit { target }
        }
        NewEvent::Delete { target } => {
            insert_entry(
                tx,
                keys,
                &EntryRow {
                    kind: Some(DELETE),
                    target: Some(target),
                    ..row
                },
            )?;
            // The tombstone `MessageLog::delete` makes, so reads skip it the same way and a
            // restore to before `ts` clears it.
            tx.prepare_cached("UPDATE messages SET deleted_at = ?3 WHERE room = ?1 AND seq = ?2")
                .and_then(|mut s| {
                    s.execute(params![room.as_str(), sql_seq(target.0), row.ts as i64])
                })
                .map_err(backend)?;
            EntryEvent::Delete { target }
        }
        NewEvent::React { target, emoji, on } => {
            let before = reaction_counts(tx, room, target.0, target.0)
                .map_err(backend)?
                .remove(&target.0)
                .unwrap_or_default();
            if on && !before.contains_key(&emoji) && before.len() >= MAX_EMOJIS_PER_MESSAGE {
                return Err(refusal::too_many_emojis(room, target));
            }
            insert_entry(
                tx,
                keys,
                &EntryRow {
                    kind: Some(REACTION),
                    target: Some(target),
                    emoji: Some(&emoji),
                    on: Some(on),
                    ..row
                },
            )?;
            // The same fold as reads, now including this row (and the batch's earlier ones).
            let counts = reaction_counts(tx, room, target.0, target.0)
                .map_err(backend)?
                .remove(&target.0)
                .unwrap_or_default();
            EntryEvent::Reaction {
                target,
                emoji,
                on,
                counts,
            }
        }
    })
}

/// Moves `user`'s read position in `room` forward to `seq`, which must not be past the head
/// (the writer's, so an append earlier in the batch counts).
fn mark_read(
    tx: &Transaction<'_>,
    heads: &mut HashMap<RoomId, u64>,
    room: &RoomId,
    user: &UserName,
    seq: Seq,
    ts: u64,
) -> Result<ReadMark, StoreError> {
    let head = head(tx, heads, room).map_err(backend)?.unwrap_or(0);
    if seq.0 > head {
        return Err(refusal::read_past_head(room, seq, Seq(head)));
    }
    let now: Option<i64> = tx
        .prepare_cached("SELECT seq FROM read_positions WHERE room = ?1 AND user = ?2")
        .and_then(|mut s| {
            s.query_row([room.as_str(), user.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    let now = Seq(now.map_or(0, |s| s as u64));
    if seq <= now {
        return Ok(ReadMark {
            seq: now,
            moved: false,
        });
    }
    tx.prepare_cached(
        "INSERT INTO read_positions (room, user, seq, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (room, user) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| s.execute(params![room.as_str(), user.as_str(), seq.0 as i64, ts as i64]))
    .map_err(backend)?;
    Ok(ReadMark { seq, moved: true })
}

/// Reaction counts now of the messages `lo..=hi` of `room` that have any (count > 0 only):
/// for each (target, emoji, user) the row with the greatest seq decides, and those that set
/// the reaction are counted.
fn reaction_counts(
    c: &Connection,
    room: &RoomId,
    lo: u64,
    hi: u64,
) -> rusqlite::Result<HashMap<u64, ReactionCounts>> {
    let mut stmt = c.prepare_cached(REACTION_COUNTS)?;
    let mut rows = stmt.query(params![room.as_str(), sql_seq(lo), sql_seq(hi)])?;
    let mut out: HashMap<u64, ReactionCounts> = HashMap::new();
    while let Some(r) = rows.next()? {
        out.entry(r.get::<_, i64>(0)? as u64)
            .or_default()
            .insert(r.get(1)?, r.get::<_, i64>(2)? as u64);
    }
    Ok(out)
}

/// Fills in the counts each reaction entry of `entries` (in seq order) committed with: per
/// target, its reaction rows up to the last such entry, folded in seq order.
fn counts_at_commit(
    c: &Connection,
    room: &RoomId,
    entries: &mut [ChatMessage],
) -> rusqlite::Result<()> {
    let mut by_target: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
    for (i, e) in entries.iter().enumerate() {
        if let Some(EntryEvent::Reaction { target, .. }) = e.event.as_deref() {
            by_target.entry(target.0).or_default().push(i);
        }
    }
    let mut stmt = c.prepare_cached(REACTIONS_THROUGH)?;
    for (target, wanted) in by_target {
        let upto = entries[wanted[wanted.len() - 1]].seq.0;
        let mut rows = stmt.query(params![room.as_str(), sql_seq(target), sql_seq(upto)])?;
        let mut set: std::collections::HashSet<(String, String)> = Default::default();
        let mut counts = ReactionCounts::new();
        let mut next = wanted.iter().peekable();
        while let Some(r) = rows.next()? {
            let seq = r.get::<_, i64>(0)? as u64;
            let emoji: String = r.get(1)?;
            let key = (emoji.clone(), r.get::<_, String>(2)?);
            if r.get::<_, bool>(3)? {
                if set.insert(key) {
                    *counts.entry(emoji).or_default() += 1;
                }
            } else if set.remove(&key)
                && let Some(n) = counts.get_mut(&emoji)
            {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&emoji);
                }
            }
            while let Some(&&i) = next.peek() {
                if entries[i].seq.0 != seq {
                    break;
                }
                if let Some(EntryEvent::Reaction { counts: c, .. }) =
                    entries[i].event.as_deref_mut()
                {
                    *c = counts.clone();
                }
                next.next();
            }
        }
    }
    Ok(())
}

/// Shows each message of `entries` (in seq order; event entries are left as they are) as it is
/// now: the text of its latest edit with `edited_at`, and its reaction counts. One query for
/// the edits and one for the reactions of the page's seq range.
fn current_state(
    c: &Connection,
    room: &RoomId,
    entries: &mut [ChatMessage],
    keys: Option<&Keyring>,
) -> rusqlite::Result<()> {
    let at: HashMap<u64, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_message())
        .map(|(i, m)| (m.seq.0, i))
        .collect();
    let (Some(&lo), Some(&hi)) = (at.keys().min(), at.keys().max()) else {
        return Ok(());
    };
    let mut stmt = c.prepare_cached(LATEST_EDITS)?;
    let edits = stmt.query_map(params![room.as_str(), sql_seq(lo), sql_seq(hi)], |r| {
        entry_row(room, r, keys)
    })?;
    for edit in edits {
        let edit = edit?;
        let Some(EntryEvent::Edit { target }) = edit.event.as_deref() else {
            continue;
        };
        if let Some(&i) = at.get(&target.0) {
            entries[i].data = edit.data;
            entries[i].edited_at = Some(edit.ts);
        }
    }
    for (target, counts) in reaction_counts(c, room, lo, hi)? {
        if let Some(&i) = at.get(&target) {
            entries[i].reactions = counts;
        }
    }
    Ok(())
}

fn create_room(
    tx: &Transaction<'_>,
    heads: &mut HashMap<RoomId, u64>,
    touched: &mut HashMap<RoomId, u64>,
    room: &RoomId,
    ts: u64,
) -> Result<Seq, StoreError> {
    if let Some(seq) = head(tx, heads, room).map_err(backend)? {
        return Ok(Seq(seq));
    }
    tx.prepare_cached("INSERT INTO rooms (room, last_seq, created_at) VALUES (?1, 0, ?2)")
        .and_then(|mut s| s.execute(params![room.as_str(), ts as i64]))
        .map_err(backend)?;
    heads.insert(room.clone(), 0);
    touched.insert(room.clone(), 0);
    Ok(Seq::ZERO)
}

/// Tombstones a message: the row stays, with the time, for point-in-time restore.
fn delete(tx: &Transaction<'_>, room: &RoomId, seq: Seq, ts: u64) -> rusqlite::Result<Deletion> {
    let found: Option<Option<i64>> = tx
        .prepare_cached("SELECT deleted_at FROM messages WHERE room = ?1 AND seq = ?2")?
        .query_row(params![room.as_str(), seq.0 as i64], |r| r.get(0))
        .optional()?;
    Ok(match found {
        None => Deletion::NotFound,
        Some(Some(at)) => Deletion::AlreadyDeleted { at: at as u64 },
        Some(None) => {
            tx.prepare_cached("UPDATE messages SET deleted_at = ?3 WHERE room = ?1 AND seq = ?2")?
                .execute(params![room.as_str(), seq.0 as i64, ts as i64])?;
            Deletion::Deleted { at: ts }
        }
    })
}

fn add_dead_letter(
    tx: &Transaction<'_>,
    keys: Option<&Keyring>,
    e: &NewDeadLetter,
    ts: u64,
) -> rusqlite::Result<u64> {
    // Encrypted, the payload is bound to the row's id, known after the insert: the row goes
    // in with an empty payload and gets its ciphertext in the same transaction.
    let payload = if keys.is_some() { "" } else { &*e.payload };
    tx.prepare_cached(
        "INSERT INTO dead_letters (created_at, kind, target, user, reason, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        ts as i64,
        e.kind.as_str(),
        e.target,
        e.user,
        e.reason,
        payload
    ])?;
    let id = tx.last_insert_rowid() as u64;
    if let Some(keys) = keys {
        let row = Row::DeadLetter {
            id,
            kind: e.kind.as_str(),
            target: &e.target,
            created_at: ts,
        };
        let (key_id, blob) = keys
            .seal(&row, e.payload.as_bytes())
            .map_err(|e| cipher::row_error(6, e))?;
        tx.prepare_cached("UPDATE dead_letters SET payload = ?2, key_id = ?3 WHERE id = ?1")?
            .execute(params![id as i64, blob, key_id])?;
    }
    Ok(id)
}

fn claim_dead_letter(
    tx: &Transaction<'_>,
    keys: Option<&Keyring>,
    id: u64,
    to: &str,
    ts: u64,
) -> rusqlite::Result<Claim> {
    let Some(entry) = tx
        .prepare_cached(&format!("{DEAD_LETTER_COLS} WHERE id = ?1"))?
        .query_row([id as i64], |r| dead_letter_row(r, keys))
        .optional()?
    else {
        return Ok(Claim::NotFound);
    };
    if let (Some(at), Some(to)) = (entry.replayed_at, &entry.replayed_to) {
        return Ok(Claim::AlreadyReplayed { at, to: to.clone() });
    }
    tx.prepare_cached("UPDATE dead_letters SET replayed_at = ?2, replayed_to = ?3 WHERE id = ?1")?
        .execute(params![id as i64, ts as i64, to])?;
    Ok(Claim::Claimed(entry))
}

const DEAD_LETTER_COLS: &str = "SELECT id, created_at, kind, target, user, reason, payload, \
     attempts, last_error, replayed_at, replayed_to, key_id FROM dead_letters";

/// A dead letter of [`DEAD_LETTER_COLS`], its payload decrypted with `keys` when encrypted.
fn dead_letter_row(r: &rusqlite::Row<'_>, keys: Option<&Keyring>) -> rusqlite::Result<DeadLetter> {
    let kind: String = r.get(2)?;
    let id = r.get::<_, i64>(0)? as u64;
    let created_at = r.get::<_, i64>(1)? as u64;
    let target: String = r.get(3)?;
    let row = Row::DeadLetter {
        id,
        kind: &kind,
        target: &target,
        created_at,
    };
    let payload = cipher::stored_text(keys, &row, r.get_ref(11)?.as_str_or_null()?, r.get_ref(6)?)
        .map_err(|e| cipher::row_error(6, e))?;
    Ok(DeadLetter {
        id,
        created_at,
        // Only this server writes the table; an unknown kind is from a newer version.
        kind: DeadLetterKind::parse(&kind).unwrap_or(DeadLetterKind::PostToConnection),
        target,
        user: r.get(4)?,
        reason: r.get(5)?,
        payload,
        attempts: r.get::<_, i64>(7)? as u32,
        last_error: r.get(8)?,
        replayed_at: r.get::<_, Option<i64>>(9)?.map(|t| t as u64),
        replayed_to: r.get(10)?,
    })
}

/// Writes the batch's new heads; part of the batch's transaction.
fn save_heads(
    tx: &Transaction<'_>,
    touched: &HashMap<RoomId, u64>,
    ts: u64,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO rooms (room, last_seq, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (room) DO UPDATE SET last_seq = excluded.last_seq",
    )?;
    for (room, seq) in touched {
        stmt.execute(params![room.as_str(), *seq as i64, ts as i64])?;
    }
    Ok(())
}

/// An entry of the columns [`ENTRY_COLS`], its text decrypted with `keys` when encrypted (on
/// the reader threads, and the writer's for a retried append). A reaction's counts are left
/// empty ([`counts_at_commit`] fills them in).
fn entry_row(
    room: &RoomId,
    r: &rusqlite::Row<'_>,
    keys: Option<&Keyring>,
) -> rusqlite::Result<ChatMessage> {
    let seq = r.get::<_, i64>(0)? as u64;
    let id: String = r.get(1)?;
    let user: String = r.get(2)?;
    let row = Row::Message {
        room: room.as_str(),
        seq,
        user: &user,
        id: &id,
    };
    let data = cipher::stored_text(keys, &row, r.get_ref(5)?.as_str_or_null()?, r.get_ref(3)?)
        .map_err(|e| cipher::row_error(3, e))?;
    let event = match r.get_ref(6)?.as_str_or_null()? {
        None => None,
        Some(kind) => {
            let target = Seq(r.get::<_, i64>(7)? as u64);
            Some(Box::new(match kind {
                EDIT => EntryEvent::Edit { target },
                DELETE => EntryEvent::Delete { target },
                REACTION => EntryEvent::Reaction {
                    target,
                    emoji: r.get(8)?,
                    on: r.get(9)?,
                    counts: ReactionCounts::new(),
                },
                other => {
                    return Err(rusqlite::Error::FromSqlConversionFailure(
                        6,
                        rusqlite::types::Type::Text,
                        format!(
                            "{row} is an entry of unknown kind {other:?} (from a newer version?)"
                        )
                        .into(),
                    ));
                }
            }))
        }
    };
    let mut message = ChatMessage::new(
        room.clone(),
        Seq(seq),
        id,
        // Names were validated before they were stored; a row edited by hand still loads.
        UserName::parse(&user).unwrap_or_else(|_| UserName::guest()),
        data,
        r.get::<_, i64>(4)? as u64,
    );
    message.event = event;
    Ok(message)
}

#[async_trait]
impl MessageLog for SqliteStore {
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        self.call(|r| Command::Append(message, r)).await
    }

    /// The writer takes commands in queue order and commits them in that order.
    fn queue_append(&self, message: NewMessage) -> Result<QueuedAppend, NewMessage> {
        let Ok(slot) = self.writer.try_reserve() else {
            return Err(message);
        };
        let (reply, answer) = oneshot::channel();
        slot.send(Command::Append(message, reply));
        Ok(Box::pin(async move {
            answer.await.map_err(|_| StoreError::Closed)?
        }))
    }

    async fn create_room(&self, room: &RoomId) -> Result<Seq, StoreError> {
        let room = room.clone();
        self.call(|r| Command::CreateRoom(room, r)).await
    }

    async fn head(&self, room: &RoomId) -> Result<Option<Seq>, StoreError> {
        if let Some(&seq) = self
            .heads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
        {
            return Ok(Some(Seq(seq)));
        }
        let key = room.clone();
        let stored = self
            .read(move |c| {
                c.prepare_cached("SELECT last_seq FROM rooms WHERE room = ?1")?
                    .query_row([key.as_str()], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        // The writer may have committed more since the read: never move a head backwards.
        let mut heads = self.heads.write().unwrap_or_else(|e| e.into_inner());
        let head = heads.entry(room.clone()).or_insert(stored as u64);
        Ok(Some(Seq(*head)))
    }

    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<Page, StoreError> {
        let room = room.clone();
        let keys = self.keys.clone();
        self.read(move |c| {
            // One snapshot for the page and the events folded into it.
            let tx = c.unchecked_transaction()?;
            // Messages only, tombstones skipped; the primary key still drives the scan.
            let cols = format!(
                "SELECT {ENTRY_COLS} FROM messages \
                 WHERE room = ?1 AND kind IS NULL AND deleted_at IS NULL"
            );
            // One row past the limit tells whether there is more.
            let (sql, bound, limit, newest_first) = match query {
                HistoryQuery::Latest { limit } => (
                    format!("{cols} ORDER BY seq DESC LIMIT ?2"),
                    None,
                    limit,
                    true,
                ),
                HistoryQuery::Before { seq, limit } => (
                    format!("{cols} AND seq < ?3 ORDER BY seq DESC LIMIT ?2"),
                    Some(seq),
                    limit,
                    true,
                ),
                HistoryQuery::After { seq, limit } => (
                    format!("{cols} AND seq > ?3 ORDER BY seq ASC LIMIT ?2"),
                    Some(seq),
                    limit,
                    false,
                ),
            };
            let mut stmt = tx.prepare_cached(&sql)?;
            let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
            let to_entry = |r: &rusqlite::Row<'_>| entry_row(&room, r, keys.as_deref());
            let mut messages = match bound {
                None => stmt
                    .query_map(params![room.as_str(), fetch], to_entry)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                // A bound past i64::MAX (any u64 is a valid `after`/`before`) must not wrap
                // to a negative number: clamped, `after` finds nothing and `before` everything.
                Some(s) => stmt
                    .query_map(params![room.as_str(), fetch, sql_seq(s.0)], to_entry)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            drop(stmt);
            let more = messages.len() > limit;
            messages.truncate(limit);
            if newest_first {
                messages.reverse();
            }
            current_state(&tx, &room, &mut messages, keys.as_deref())?;
            Ok(Page {
                messages: messages.into_iter().map(Arc::new).collect(),
                more,
            })
        })
        .await
    }

    async fn delete(&self, room: &RoomId, seq: Seq) -> Result<Deletion, StoreError> {
        let room = room.clone();
        self.call(|r| Command::Delete(room, seq, r)).await
    }

    async fn read_entries(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let room = room.clone();
        let keys = self.keys.clone();
        self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            // Every event entry; messages but tombstones (an event entry deleted through the
            // management API stays: it is not a message).
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM messages
                 WHERE room = ?1 AND seq > ?2 AND (kind IS NOT NULL OR deleted_at IS NULL)
                 ORDER BY seq LIMIT ?3"
            ))?;
            let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
            let mut entries = stmt
                .query_map(params![room.as_str(), sql_seq(after.0), fetch], |r| {
                    entry_row(&room, r, keys.as_deref())
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            let more = entries.len() > limit;
            entries.truncate(limit);
            current_state(&tx, &room, &mut entries, keys.as_deref())?;
            counts_at_commit(&tx, &room, &mut entries)?;
            Ok(Page {
                messages: entries.into_iter().map(Arc::new).collect(),
                more,
            })
        })
        .await
    }

    async fn mark_read(
        &self,
        room: &RoomId,
        user: &UserName,
        seq: Seq,
    ) -> Result<ReadMark, StoreError> {
        let (room, user) = (room.clone(), user.clone());
        self.call(|r| Command::MarkRead(room, user, seq, r)).await
    }

    async fn read_positions(&self, room: &RoomId) -> Result<Vec<(UserName, Seq)>, StoreError> {
        let room = room.clone();
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT user, seq FROM read_positions WHERE room = ?1")?;
            let rows = stmt.query_map([room.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (user, seq) = row?;
                // Names were validated before they were stored; skip one edited by hand.
                if let Ok(user) = UserName::parse(&user) {
                    out.push((user, Seq(seq as u64)));
                }
            }
            Ok(out)
        })
        .await
    }
}

/// The dead-letter table (the server's dead-letter queue keeps what it could not deliver here).
#[async_trait]
impl DeadLetters for SqliteStore {
    async fn add(&self, entry: NewDeadLetter) -> Result<u64, StoreError> {
        self.call(|r| Command::AddDeadLetter(entry, r)).await
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let keys = self.keys.clone();
        self.read(move |c| {
            c.prepare_cached(&format!("{DEAD_LETTER_COLS} WHERE id = ?1"))?
                .query_row([id as i64], |r| dead_letter_row(r, keys.as_deref()))
                .optional()
        })
        .await
    }

    /// Entries with id > `after`, oldest first; `pending_only` skips replayed ones.
    async fn list(
        &self,
        after: u64,
        limit: usize,
        pending_only: bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let keys = self.keys.clone();
        self.read(move |c| {
            let filter = if pending_only {
                "AND replayed_at IS NULL"
            } else {
                ""
            };
            c.prepare_cached(&format!(
                "{DEAD_LETTER_COLS} WHERE id > ?1 {filter} ORDER BY id LIMIT ?2"
            ))?
            // Clamped, not wrapped: `after` past i64::MAX finds nothing.
            .query_map(
                params![i64::try_from(after).unwrap_or(i64::MAX), limit as i64],
                |r| dead_letter_row(r, keys.as_deref()),
            )?
            .collect()
        })
        .await
    }

    /// Entries not replayed yet: the DLQ's depth.
    async fn depth(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL")?
                .query_row([], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
        .await
    }

    async fn claim(&self, id: u64, to: String) -> Result<Claim, StoreError> {
        self.call(|r| Command::ClaimDeadLetter(id, to, r)).await
    }

    async fn release(&self, id: u64, error: String) -> Result<(), StoreError> {
        self.call(|r| Command::ReleaseDeadLetter(id, error, r))
            .await
    }

    async fn purge(&self, which: Purge) -> Result<u64, StoreError> {
        self.call(|r| Command::PurgeDeadLetters(which, r)).await
    }
}

/// The queue of webhook events the commits wrote (with webhooks on; see [`StoreOptions`]).
#[async_trait]
impl WebhookOutbox for SqliteStore {
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let keys = self.keys.clone();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, created_at, body, key_id FROM webhook_outbox ORDER BY id LIMIT ?1",
            )?
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                let id = r.get::<_, i64>(0)? as u64;
                let row = Row::Outbox {
                    id,
                    created_at: r.get::<_, i64>(1)? as u64,
                };
                let body = cipher::stored_text(
                    keys.as_deref(),
                    &row,
                    r.get_ref(3)?.as_str_or_null()?,
                    r.get_ref(2)?,
                )
                .map_err(|e| cipher::row_error(2, e))?;
                Ok(OutboxEntry { id, body })
            })?
            .collect()
        })
        .await
    }

    /// Through the writer's normal lane: a delivery is not urgent, a login is.
    async fn remove_through(&self, id: u64) -> Result<u64, StoreError> {
        self.call(|r| Command::RemoveWebhookEvents(id, r)).await
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT COUNT(*) FROM webhook_outbox")?
                .query_row([], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
        .await
    }
}

/// Readiness and graceful shutdown, as the server sees them.
#[async_trait]
impl StoreLifecycle for SqliteStore {
    /// A write through the writer (see `Command::Probe`), for readiness: `Ok` once committed.
    /// Goes through the priority lane, so a message backlog does not make the server unready.
    async fn probe(&self) -> Result<(), StoreError> {
        self.call(Command::Probe).await
    }

    async fn shutdown(&self) {
        SqliteStore::shutdown(self).await;
    }
}

/// Rows under a key id that no configured key matches ([`SqliteStore::unknown_keys`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnknownKey {
    pub key_id: String,
    pub messages: u64,
    pub dead_letters: u64,
    pub webhook_events: u64,
}

/// Encryption at rest (cipher.rs).
impl SqliteStore {
    /// The key ids rows are encrypted under that no configured key matches (all of them when
    /// no key is configured), with how many rows each: those rows cannot be read. Cheap: the
    /// ids of messages come from the `messages_key_id` index, one seek per distinct id.
    pub async fn unknown_keys(&self) -> Result<Vec<UnknownKey>, StoreError> {
        let keys = self.keys.clone();
        self.read(move |c| unknown_key_rows(c, |id| keys.as_ref().is_some_and(|k| k.contains(id))))
            .await
    }
}

/// Rows per key id for the ids `known` rejects, by key id.
pub(crate) fn unknown_key_rows(
    c: &Connection,
    known: impl Fn(&str) -> bool,
) -> rusqlite::Result<Vec<UnknownKey>> {
    let mut found: std::collections::BTreeMap<String, UnknownKey> = Default::default();
    // A skip scan over the partial index: each step jumps to the next distinct key id.
    let mut next = c.prepare_cached("SELECT min(key_id) FROM messages WHERE key_id > ?1")?;
    let mut count = c.prepare_cached("SELECT count(*) FROM messages WHERE key_id = ?1")?;
    let mut after = String::new();
    while let Some(id) = next.query_row([&after], |r| r.get::<_, Option<String>>(0))? {
        if !known(&id) {
            let n: i64 = count.query_row([&id], |r| r.get(0))?;
            let entry = found.entry(id.clone()).or_default();
            entry.key_id = id.clone();
            entry.messages = n as u64;
        }
        after = id;
    }
    // Dead letters are few: a scan.
    let mut stmt = c.prepare_cached(
        "SELECT key_id, count(*) FROM dead_letters WHERE key_id IS NOT NULL GROUP BY key_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (id, n) = row?;
        if !known(&id) {
            let entry = found.entry(id.clone()).or_default();
            entry.key_id = id;
            entry.dead_letters = n as u64;
        }
    }
    // The outbox holds what is not delivered yet, normally little: a scan too.
    let mut stmt = c.prepare_cached(
        "SELECT key_id, count(*) FROM webhook_outbox WHERE key_id IS NOT NULL GROUP BY key_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (id, n) = row?;
        if !known(&id) {
            let entry = found.entry(id.clone()).or_default();
            entry.key_id = id;
            entry.webhook_events = n as u64;
        }
    }
    Ok(found.into_values().collect())
}

#[async_trait]
impl ConnectionStore for SqliteStore {
    async fn insert(&self, record: &ConnectionRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.call(|r| Command::InsertConnection(record, r)).await
    }

    async fn remove(&self, id: &ConnectionId) -> Result<(), StoreError> {
        let id = id.clone();
        self.call(|r| Command::RemoveConnection(id, r)).await
    }

    async fn add_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError> {
        let (id, room) = (id.clone(), room.clone());
        self.call(|r| Command::AddMembership(id, room, r)).await
    }

    async fn remove_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError> {
        let (id, room) = (id.clone(), room.clone());
        self.call(|r| Command::RemoveMembership(id, room, r)).await
    }

    async fn list(&self) -> Result<Vec<(ConnectionRecord, Vec<RoomId>)>, StoreError> {
        self.read(|c| {
            let mut rooms: HashMap<String, Vec<RoomId>> = HashMap::new();
            let mut stmt = c.prepare("SELECT connection_id, room FROM memberships ORDER BY room")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                let (id, room) = row?;
                if let Ok(room) = RoomId::parse(&room) {
                    rooms.entry(id).or_default().push(room);
                }
            }
            let mut stmt = c.prepare(
                "SELECT id, user, mode, source_ip, user_agent, connected_at FROM connections ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, user, mode, source_ip, user_agent, connected_at) = row?;
                let (Ok(cid), Ok(user)) = (ConnectionId::parse(&id), UserName::parse(&user)) else { continue };
                let record = ConnectionRecord {
                    id: cid,
                    user,
                    mode: if mode == "compat" { Mode::Compat } else { Mode::V1 },
                    source_ip,
                    user_agent,
                    connected_at: connected_at as u64,
                };
                out.push((record, rooms.remove(&id).unwrap_or_default()));
            }
            Ok(out)
        })
        .await
    }

    async fn purge_stale(&self) -> Result<u64, StoreError> {
        self.call(Command::PurgeConnections).await
    }
}

#[cfg(test)]
mod tests {
    /// The folds of events read through `messages_target`, never by scanning the room's log.
    #[test]
    fn event_queries_use_the_target_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::open_writer(&dir.path().join("db")).unwrap();
        for sql in [
            super::LATEST_EDITS,
            super::REACTION_COUNTS,
            super::REACTIONS_THROUGH,
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(rusqlite::params!["r", 1, 5], |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(
                plan.iter()
                    .any(|step| step.contains("INDEX messages_target")),
                "{sql}\n{plan:#?}"
            );
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN messages")),
                "{sql}\n{plan:#?}"
            );
        }
    }

    #[test]
    fn the_writer_commits_with_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::open_writer(&dir.path().join("db")).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2), "2 is FULL");
    }
}

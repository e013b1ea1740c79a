//! The ports: what the core needs from a deployment shape. The embedded server implements them
//! with SQLite and an in-process fan-out hub; the cluster and AWS shapes implement the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

pub use crate::error::StoreError;
use crate::protocol::{ChatMessage, HistoryQuery, Member, Mode, Page, PresenceEvent};
use crate::types::{ConnectionId, RoomId, Seq, UserName};

/// A message to append. The log assigns `seq` and `ts` at commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub room: RoomId,
    /// The idempotency key: the same `(room, user, id)` is stored once.
    pub id: String,
    pub user: UserName,
    pub data: String,
}

/// The result of an append: the committed message, and whether it had been committed before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub message: Arc<ChatMessage>,
    pub duplicate: bool,
}

/// The commit of an append queued with [`MessageLog::queue_append`].
pub type QueuedAppend = Pin<Box<dyn Future<Output = Result<Appended, StoreError>> + Send>>;

/// What [`MessageLog::delete`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The message is now a tombstone, deleted at this time (ms since the epoch).
    Deleted { at: u64 },
    /// It had been deleted before, at this time.
    AlreadyDeleted { at: u64 },
    /// The room has no message with that seq.
    NotFound,
}

/// The durable, ordered, idempotent log of every room's messages.
///
/// Contract (checked by the conformance suite):
/// - `append` returns only after the message is durably committed; per room, seqs are 1, 2, 3…
///   with no gap and no reuse, in commit order;
/// - appending `(room, user, id)` again returns the first commit with `duplicate: true` and
///   stores nothing;
/// - every newly committed message is passed to the [`CommitListener`] exactly once, after the
///   commit and before `append` returns, in seq order per room;
/// - a failed append stores nothing and is safe to retry;
/// - a deleted message stays as a tombstone: reads skip it, its seq is not reused and its
///   `(room, user, id)` still deduplicates;
/// - appends queued one after another with `queue_append` commit in that order.
#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError>;

    /// Queues an append without waiting for its commit, for a caller that keeps several in
    /// flight (a connection reading its next frames while the last ones are fsync'd): appends
    /// queued one after another commit in that order, and the returned future resolves as
    /// [`append`](Self::append) would. A log that cannot promise that order, or has no room in
    /// its queue right now, gives the message back, and the caller awaits `append` instead.
    fn queue_append(&self, message: NewMessage) -> Result<QueuedAppend, NewMessage> {
        Err(message)
    }

    /// Creates the room if it does not exist; returns its head (last committed seq).
    async fn create_room(&self, room: &RoomId) -> Result<Seq, StoreError>;

    /// The room's last committed seq, `Seq::ZERO` for a room with no messages, `None` for a room
    /// that was never created.
    async fn head(&self, room: &RoomId) -> Result<Option<Seq>, StoreError>;

    /// A page of the room's log, oldest first. An unknown room reads as empty.
    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<Page, StoreError>;

    /// Marks the message a tombstone (kept, with the time, for point-in-time restore).
    async fn delete(&self, room: &RoomId, seq: Seq) -> Result<Deletion, StoreError>;
}

/// Told about every commit of a [`MessageLog`]: this is the fan-out's subscription to the log.
pub trait CommitListener: Send + Sync + 'static {
    /// Called once per commit with the newly committed messages, in seq order per room. It runs
    /// on the committing thread, so it must not block.
    fn committed(&self, messages: &[Arc<ChatMessage>]);
}

/// A listener that drops everything (tools that only read or write the log).
pub struct NoListener;

impl CommitListener for NoListener {
    fn committed(&self, _: &[Arc<ChatMessage>]) {}
}

/// A row of the connections table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub id: ConnectionId,
    pub user: UserName,
    pub mode: Mode,
    pub source_ip: String,
    pub user_agent: String,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
}

/// The connections table and room memberships, as the original's ConnectionsTable.
#[async_trait]
pub trait ConnectionStore: Send + Sync + 'static {
    async fn insert(&self, record: &ConnectionRecord) -> Result<(), StoreError>;

    /// Removes the connection and all its memberships. Removing an unknown id is not an error.
    async fn remove(&self, id: &ConnectionId) -> Result<(), StoreError>;

    async fn add_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError>;

    async fn remove_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError>;

    /// Every recorded connection with the rooms it is in, ordered by id.
    async fn list(&self) -> Result<Vec<(ConnectionRecord, Vec<RoomId>)>, StoreError>;

    /// Deletes the rows a previous process left behind when it died; returns how many
    /// connections were purged. Called once at start, before accepting connections.
    async fn purge_stale(&self) -> Result<u64, StoreError>;
}

/// The fan-out index: which live connections are in which room.
#[async_trait]
pub trait RoomMembership: Send + Sync + 'static {
    /// From this call on, every message committed to `room` is queued to the connection.
    fn join(&self, connection: &ConnectionId, room: &RoomId);

    fn leave(&self, connection: &ConnectionId, room: &RoomId);

    /// Who is in the room now. Async because a shape without a node-local index (AWS: a
    /// DynamoDB query) must ask its store.
    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, StoreError>;

    /// Tells the room's other v1 members that `user` joined or left (not stored).
    fn presence(
        &self,
        room: &RoomId,
        event: PresenceEvent,
        user: &UserName,
        connection: &ConnectionId,
    );
}

/// The socket is gone; the connection task should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection is closed")]
pub struct Disconnected;

/// One connection's writer, as handlers see it. Frames are written in call order.
#[async_trait]
pub trait Outbox: Send {
    async fn send_text(&mut self, text: String) -> Result<(), Disconnected>;

    /// Called by a long replay of `room` between pages, so that live traffic queued for this
    /// connection meanwhile does not overflow its queue: a writer with a bounded live queue
    /// takes what is queued, writes what is for other rooms, and drops `room`'s live messages,
    /// returning the last seq dropped; the replay then reads on from the log through it. The
    /// default (no live queue) returns `None`.
    async fn pace_replay(
        &mut self,
        _session: &mut crate::handlers::Session,
        _room: &RoomId,
    ) -> Result<Option<Seq>, Disconnected> {
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------
// Dead letters

/// What kind of operation a dead letter holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// A `POST /@connections/{id}` payload.
    PostToConnection,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::PostToConnection => "post_to_connection",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s == "post_to_connection").then_some(DeadLetterKind::PostToConnection)
    }
}

/// A dead letter to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeadLetter {
    pub kind: DeadLetterKind,
    /// The connection id it was for.
    pub target: String,
    /// The connection's user, when the server knew it.
    pub user: Option<String>,
    pub reason: String,
    /// Shared, so the copy a retry keeps is cheap.
    pub payload: Arc<str>,
}

/// A stored dead letter.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: u64,
    /// Milliseconds since the epoch.
    pub created_at: u64,
    pub kind: DeadLetterKind,
    pub target: String,
    pub user: Option<String>,
    pub reason: String,
    pub payload: String,
    /// Delivery attempts so far: the original one plus failed replays.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub replayed_at: Option<u64>,
    pub replayed_to: Option<String>,
}

/// The store's answer to a claim before replay.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The entry is now marked replayed (to the given connection); here it is as it was.
    Claimed(DeadLetter),
    AlreadyReplayed {
        at: u64,
        to: String,
    },
    NotFound,
}

/// Which entries a purge removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purge {
    One(u64),
    Replayed,
    All,
}

/// The dead-letter queue's storage: what the server accepted and could not deliver.
///
/// Contract (checked by the conformance suite):
/// - `add` returns only after the entry is durable; ids are unique and increase;
/// - `claim` is atomic: of two concurrent claims of one entry exactly one gets `Claimed`, the
///   other `AlreadyReplayed`; a claimed entry counts as replayed (not in `depth`, skipped by
///   `list(pending_only)`);
/// - `release` undoes a claim after a failed delivery: the entry is pending again, with
///   `attempts + 1` and `last_error` set;
/// - `list` is oldest first, ids greater than `after`, at most `limit`.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    async fn add(&self, entry: NewDeadLetter) -> Result<u64, StoreError>;

    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError>;

    async fn list(
        &self,
        after: u64,
        limit: usize,
        pending_only: bool,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Entries not replayed yet.
    async fn depth(&self) -> Result<u64, StoreError>;

    /// Marks the entry replayed to `to`, unless it was already.
    async fn claim(&self, id: u64, to: String) -> Result<Claim, StoreError>;

    /// Makes a claimed entry pending again after a failed delivery.
    async fn release(&self, id: u64, error: String) -> Result<(), StoreError>;

    /// Removes entries; returns how many.
    async fn purge(&self, which: Purge) -> Result<u64, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Readiness and shutdown

/// The store's side of `/readyz` and of graceful shutdown.
#[async_trait]
pub trait StoreLifecycle: Send + Sync + 'static {
    /// `Ok` when the store can commit a write now (a real write, not a ping).
    async fn probe(&self) -> Result<(), StoreError>;

    /// Finishes what the store still has queued; later calls fail with `unavailable`.
    async fn shutdown(&self);
}

// ---------------------------------------------------------------------------------------------
// Reaching a connection

/// Why a post to a connection was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostError {
    /// Its outbound queue is full (it is not reading).
    Full,
    /// It is not connected.
    Gone,
}

/// `GET /@connections/{id}`'s body: API Gateway's fields, then who and how.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionDescription {
    #[serde(flatten)]
    pub info: crate::protocol::ConnectionInfo,
    pub user: UserName,
    pub mode: Mode,
}

/// The connections live on this node (the server's hub): what a peer's request reaches.
pub trait LocalConnections: Send + Sync + 'static {
    /// Queues `text` for the connection, as `POST /@connections/{id}`.
    fn post(&self, id: &ConnectionId, text: String) -> Result<(), PostError>;

    fn describe(&self, id: &ConnectionId) -> Option<ConnectionDescription>;

    /// Asks the connection to close with `code`; `false` when it is not here.
    fn close(&self, id: &ConnectionId, code: u16, reason: &str) -> bool;
}

/// Connections on other nodes (the cluster shape): the management API asks here for an id its
/// own hub does not have. Every answer is the owning node's; `Gone` when no node has it.
#[async_trait]
pub trait PeerConnections: Send + Sync + 'static {
    async fn post(
        &self,
        id: &ConnectionId,
        text: String,
    ) -> Result<Result<(), PostError>, StoreError>;

    async fn describe(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<ConnectionDescription>, StoreError>;

    async fn close(&self, id: &ConnectionId, code: u16, reason: &str) -> Result<bool, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// A deployment shape

/// The node's own fan-out, which a store is opened with: committed messages go to `listener`,
/// memberships and presence of this node's connections are `rooms`, and `local` is how a peer
/// node reaches a connection here.
#[derive(Clone)]
pub struct Fanout {
    pub listener: Arc<dyn CommitListener>,
    pub rooms: Arc<dyn RoomMembership>,
    pub local: Arc<dyn LocalConnections>,
}

/// Everything the server needs from a deployment shape, opened.
#[derive(Clone)]
pub struct Stores {
    /// `"sqlite"`, `"nats"`, ...: said in logs and on `/readyz`.
    pub kind: &'static str,
    pub log: Arc<dyn MessageLog>,
    pub connections: Arc<dyn ConnectionStore>,
    /// Membership and presence as the handlers see them: the fan-out's own for one node, a
    /// cluster-wide view in a cluster.
    pub rooms: Arc<dyn RoomMembership>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub lifecycle: Arc<dyn StoreLifecycle>,
    /// Connections on other nodes; `None` for a single node.
    pub peers: Option<Arc<dyn PeerConnections>>,
}

/// Why a store could not be opened; the message says what to fix.
pub type OpenError = Box<dyn std::error::Error + Send + Sync>;

/// A deployment shape that can be opened: the server calls this once at start, with its fan-out.
#[async_trait]
pub trait Backend: Send + 'static {
    async fn open(self: Box<Self>, fanout: Fanout) -> Result<Stores, OpenError>;
}

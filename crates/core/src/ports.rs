//! The ports: what the core needs from a deployment shape. The embedded server implements them
//! with SQLite and an in-process fan-out hub; the cluster and AWS shapes implement the same.

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
///   `(room, user, id)` still deduplicates.
#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError>;

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
pub trait RoomMembership: Send + Sync + 'static {
    /// From this call on, every message committed to `room` is queued to the connection.
    fn join(&self, connection: &ConnectionId, room: &RoomId);

    fn leave(&self, connection: &ConnectionId, room: &RoomId);

    fn members(&self, room: &RoomId) -> Vec<Member>;

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
}

//! The ports: what the core needs from a deployment shape. The embedded server implements them
//! with SQLite and an in-process fan-out hub; the cluster and AWS shapes implement the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

pub use crate::error::StoreError;
use crate::error::{ChatError, ErrorCode};
use crate::protocol::{ChatMessage, HistoryQuery, Member, Mode, Page, PresenceEvent};
use crate::types::{ConnectionId, RoomId, Seq, UserName};

/// An entry to append: a message, or with `event` an edit, deletion or reaction of an earlier
/// message. The log assigns `seq` and `ts` at commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub room: RoomId,
    /// The idempotency key: the same `(room, user, id)` is stored once.
    pub id: String,
    pub user: UserName,
    /// The message's text, an edit's new text; empty for a deletion or reaction.
    pub data: String,
    pub event: Option<NewEvent>,
}

impl NewMessage {
    /// A plain message.
    pub fn message(room: RoomId, id: String, user: UserName, data: String) -> Self {
        NewMessage {
            room,
            id,
            user,
            data,
            event: None,
        }
    }

    /// The entry as committed with `seq` at `ts` (a store that keeps the request after the
    /// commit, for a retry, builds it from a borrow).
    pub fn committed(&self, seq: Seq, ts: u64) -> ChatMessage {
        ChatMessage::new(
            self.room.clone(),
            seq,
            self.id.clone(),
            self.user.clone(),
            self.data.clone(),
            ts,
        )
    }
}

/// What an event entry does to message `target` of its room (see [`MessageLog`]'s contract).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewEvent {
    /// Replace the text with the entry's `data`; only the author may.
    Edit { target: Seq },
    /// Make the message a tombstone; only the author may.
    Delete { target: Seq },
    /// Set (`on`) or take back the user's reaction `emoji`: one per user and emoji.
    React {
        target: Seq,
        emoji: String,
        on: bool,
    },
}

/// The refusals a log gives an event entry, the same words in every store.
pub mod refusal {
    use super::*;

    pub fn no_such_message(room: &RoomId, seq: Seq) -> StoreError {
        StoreError::Refused(ChatError::not_found(format!(
            "room {room} has no message {seq} (it may have been deleted)"
        )))
    }

    pub fn not_a_message(room: &RoomId, seq: Seq) -> StoreError {
        StoreError::Refused(ChatError::bad_request(format!(
            "entry {seq} of room {room} is an edit, deletion or reaction, not a message"
        )))
    }

    pub fn not_the_author(room: &RoomId, seq: Seq, action: &str) -> StoreError {
        StoreError::Refused(ChatError::new(
            ErrorCode::Forbidden,
            format!("only the author of message {seq} in room {room} may {action} it"),
        ))
    }

    pub fn too_many_emojis(room: &RoomId, seq: Seq) -> StoreError {
        StoreError::Refused(ChatError::bad_request(format!(
            "message {seq} in room {room} already has {} different reactions; use one of them",
            crate::protocol::MAX_EMOJIS_PER_MESSAGE
        )))
    }

    pub fn unsupported(what: &str, store: &str) -> StoreError {
        StoreError::Refused(ChatError::bad_request(format!(
            "{what}: not supported by the {store} store yet"
        )))
    }

    pub fn read_past_head(room: &RoomId, seq: Seq, head: Seq) -> StoreError {
        StoreError::Refused(ChatError::bad_request(format!(
            "room {room} has entries through {head}; `seq` {seq} is past them"
        )))
    }
}

/// The entry an event names, as a store found it.
#[derive(Clone, Copy, Debug)]
pub struct EventTarget<'a> {
    /// Who wrote it.
    pub author: &'a UserName,
    /// A message, not an edit, deletion or reaction.
    pub is_message: bool,
    /// A tombstone.
    pub deleted: bool,
}

/// Whether a log accepts an event entry on `target` (`None`: the room has no such entry), the
/// checks every store makes in the same order: the message exists, is a message, is not
/// deleted, and for an edit or delete, belongs to the entry's user.
pub fn check_event(
    room: &RoomId,
    event: &NewEvent,
    user: &UserName,
    target: Option<EventTarget<'_>>,
) -> Result<(), StoreError> {
    let seq = match event {
        NewEvent::Edit { target }
        | NewEvent::Delete { target }
        | NewEvent::React { target, .. } => *target,
    };
    let Some(EventTarget {
        author,
        is_message,
        deleted,
    }) = target
    else {
        return Err(refusal::no_such_message(room, seq));
    };
    if !is_message {
        return Err(refusal::not_a_message(room, seq));
    }
    if deleted {
        return Err(refusal::no_such_message(room, seq));
    }
    match event {
        NewEvent::Edit { .. } if author != user => Err(refusal::not_the_author(room, seq, "edit")),
        NewEvent::Delete { .. } if author != user => {
            Err(refusal::not_the_author(room, seq, "delete"))
        }
        _ => Ok(()),
    }
}

/// A user's read position after [`MessageLog::mark_read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMark {
    /// Where it is now (never lower than before).
    pub seq: Seq,
    /// Whether this call moved it.
    pub moved: bool,
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
/// - appends queued one after another with `queue_append` commit in that order;
/// - an event entry ([`NewEvent`]) takes the next seq like a message, after the checks of
///   [`check_event`] (a refused one stores nothing and returns [`StoreError::Refused`]); the
///   message it names is then read in its new state: `read` shows an edit's text with
///   `edited_at`, skips a deleted message, and counts each user's last reaction per emoji
///   (`reactions`), and a reaction entry carries the counts just after it;
/// - `read` returns messages only; `read_entries` returns messages and event entries;
/// - read positions only move forward, per room and user.
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

    /// The entries with seq > `after`, oldest first, at most `limit`: messages in their current
    /// state (deleted ones skipped) and event entries: what `join {after}` replays. A log that
    /// stores no event entries reads them as its messages.
    async fn read_entries(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.read(room, HistoryQuery::After { seq: after, limit })
            .await
    }

    /// Moves `user`'s read position in `room` to `seq` if that is past it. `seq` must not be
    /// past the room's head.
    async fn mark_read(
        &self,
        _room: &RoomId,
        _user: &UserName,
        _seq: Seq,
    ) -> Result<ReadMark, StoreError> {
        Err(refusal::unsupported("read receipts", "configured"))
    }

    /// The read positions of the room's users (unordered; users who read nothing are absent).
    async fn read_positions(&self, _room: &RoomId) -> Result<Vec<(UserName, Seq)>, StoreError> {
        Ok(Vec::new())
    }
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

    /// Gives the room's v1 members (but `except`) a frame that is not stored (a read receipt,
    /// a typing notice); in a cluster, on every node.
    fn signal(&self, room: &RoomId, frame: &str, except: Option<&ConnectionId>);
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
// The product's backend

/// What the product's backend is asked to allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateEvent {
    /// A `join` of `room`.
    Join,
    /// A `$connect` (no room), when the gate is set to check those too.
    Connect,
}

/// One request to a [`JoinGate`].
#[derive(Clone, Copy, Debug)]
pub struct GateRequest<'a> {
    pub event: GateEvent,
    pub room: Option<&'a RoomId>,
    pub user: &'a UserName,
    pub connection: &'a ConnectionId,
    pub source_ip: &'a str,
}

/// A synchronous check by the product's backend before a `join` (and, when configured, before
/// `$connect`): `Ok` lets it through; a refusal is a `forbidden` error whose message the client
/// sees. How a backend that does not answer in time is treated is the gate's setting.
#[async_trait]
pub trait JoinGate: Send + Sync + 'static {
    async fn check(&self, request: GateRequest<'_>) -> Result<(), ChatError>;

    /// Whether `$connect` is checked too.
    fn checks_connect(&self) -> bool;
}

/// An event for the product's backend, queued in a [`WebhookOutbox`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Increasing in commit order.
    pub id: u64,
    /// One JSON object, as `crate::webhook` writes it.
    pub body: String,
}

/// The durable queue of events for the product's backend (`--webhook-url`).
///
/// Contract: a store that has one writes the event of every committed entry (message, edit,
/// deletion, reaction) and of every stored connection, disconnection, join of a room the
/// connection was not in and leave of one it was in, **in the same commit** as what it
/// reports, so an event is queued if and only if what it says happened; ids increase in
/// commit order. Entries stay until `remove_through` (delivered, or dead-lettered).
#[async_trait]
pub trait WebhookOutbox: Send + Sync + 'static {
    /// The oldest entries, at most `limit`, oldest first.
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Removes every entry with an id up to `id`; returns how many.
    async fn remove_through(&self, id: u64) -> Result<u64, StoreError>;

    /// How many entries wait.
    async fn depth(&self) -> Result<u64, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Dead letters

/// What kind of operation a dead letter holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// A `POST /@connections/{id}` payload.
    PostToConnection,
    /// A batch of webhook events (`{"events":[...]}`) the product's backend kept refusing; its
    /// target is the webhook URL.
    Webhook,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::PostToConnection => "post_to_connection",
            DeadLetterKind::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "post_to_connection" => Some(DeadLetterKind::PostToConnection),
            "webhook" => Some(DeadLetterKind::Webhook),
            _ => None,
        }
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
    /// The events for the product's backend, when the store was opened to keep them.
    pub outbox: Option<Arc<dyn WebhookOutbox>>,
}

/// Why a store could not be opened; the message says what to fix.
pub type OpenError = Box<dyn std::error::Error + Send + Sync>;

/// A deployment shape that can be opened: the server calls this once at start, with its fan-out.
#[async_trait]
pub trait Backend: Send + 'static {
    async fn open(self: Box<Self>, fanout: Fanout) -> Result<Stores, OpenError>;
}

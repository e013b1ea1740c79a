//! The in-process fan-out: which live connections are in which room, and delivery of every
//! committed message to them.
//!
//! The hub is the message log's [`CommitListener`]: after each commit it encodes the batch's
//! messages of each room once per wire form (a v1 `message` envelope, and the raw text for
//! compat clients), as complete WebSocket frames in one buffer ([`RoomBatch`], `crate::wire`),
//! and gives every member of the room one cheap clone of it through the member's bounded queue:
//! one queue item, one wake-up and one write per member per commit, however many messages the
//! commit held. A member whose queue is full is a slow consumer: it is closed with 1013 and can
//! resume from history. Nothing here ever blocks or grows without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use bytes::Bytes;
use dynamowave_core::error::close_code;
use dynamowave_core::ports::{
    CommitListener, ConnectionDescription, LocalConnections, PostError, RoomMembership, StoreError,
};
use dynamowave_core::protocol::{
    ChatMessage, ConnectionInfo, Identity, Member, Mode, PresenceEvent, ServerFrame,
};
use dynamowave_core::{ConnectionId, RoomId, Seq, UserName};
use tokio::sync::{Notify, mpsc};

use crate::wire::{self, FrameRun};

/// What a connection's queue carries. Every variant is one pointer: the queue's slots are
/// allocated per connection, idle or not.
#[derive(Debug)]
pub enum Outgoing {
    /// The committed messages of one room from one commit, shared by every recipient.
    Live(Arc<RoomBatch>),
    /// An encoded frame that may be lost with the connection (presence), shared by the room.
    Direct(Arc<Bytes>),
    /// A `POST /@connections/{id}` payload: dead-lettered if the connection ends before it is
    /// written and flushed.
    Posted(Box<Posted>),
}

/// A posted payload: its text (kept for the dead-letter queue) and its encoded frame.
#[derive(Debug)]
pub struct Posted {
    pub text: String,
    pub frame: Bytes,
}

/// The messages of one room from one commit, in seq order, encoded once per wire form.
#[derive(Debug)]
pub struct RoomBatch {
    pub room: RoomId,
    seqs: Box<[Seq]>,
    /// The v1 `message` envelopes' frames; empty when the room had no v1 member.
    v1: FrameRun,
    /// The raw texts compat clients get; empty when the room had no compat member.
    compat: FrameRun,
    /// When the fan-out got the commit (one clock read per commit), for
    /// `dynamowave_delivery_latency_seconds`.
    pub committed_at: Instant,
}

impl RoomBatch {
    fn encode(
        messages: &[&Arc<ChatMessage>],
        forms: (bool, bool),
        committed_at: Instant,
    ) -> RoomBatch {
        let (has_v1, has_compat) = forms;
        let v1 = if has_v1 {
            let envelopes: Vec<String> = messages
                .iter()
                .map(|m| ServerFrame::entry(m).to_json())
                .collect();
            FrameRun::encode(envelopes.iter().map(String::as_str))
        } else {
            FrameRun::default()
        };
        let compat = if has_compat {
            // Compat clients (the AWS sample's) get message texts only: edits, deletions and
            // reactions have no form there.
            FrameRun::encode_slots(
                messages
                    .iter()
                    .map(|m| m.is_message().then_some(m.data.as_str())),
            )
        } else {
            FrameRun::default()
        };
        RoomBatch {
            room: messages[0].room.clone(),
            seqs: messages.iter().map(|m| m.seq).collect(),
            v1,
            compat,
            committed_at,
        }
    }

    /// The seq of the batch's last message.
    pub fn last_seq(&self) -> Seq {
        self.seqs[self.seqs.len() - 1]
    }

    /// The frames of the messages past `delivered`, in `mode`'s wire form, and their count.
    pub fn frames_after(&self, mode: Mode, delivered: Seq) -> (Bytes, usize) {
        let first = self.seqs.partition_point(|s| *s <= delivered);
        let run = match mode {
            Mode::V1 => &self.v1,
            Mode::Compat => &self.compat,
        };
        (run.from(first), run.count_from(first))
    }
}

/// A live connection as the rest of the server sees it.
#[derive(Debug)]
pub struct ConnectionHandle {
    pub id: ConnectionId,
    pub user: UserName,
    pub mode: Mode,
    pub identity: Identity,
    pub connected_at: u64,
    pub last_active: Arc<AtomicU64>,
    queue: mpsc::Sender<Outgoing>,
    close: Notify,
    /// Set with `close_reason`; read on every loop iteration of the connection task, so it
    /// must not take the lock.
    close_pending: AtomicBool,
    close_reason: Mutex<Option<(u16, String)>>,
}

impl ConnectionHandle {
    pub fn new(
        session: &dynamowave_core::handlers::Session,
        queue: mpsc::Sender<Outgoing>,
    ) -> Self {
        ConnectionHandle {
            id: session.id.clone(),
            user: session.user.clone(),
            mode: session.mode,
            identity: session.identity.clone(),
            connected_at: session.connected_at,
            last_active: session.last_active.clone(),
            queue,
            close: Notify::new(),
            close_pending: AtomicBool::new(false),
            close_reason: Mutex::new(None),
        }
    }

    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo::describe(
            &self.id,
            &self.identity,
            self.connected_at,
            &self.last_active,
        )
    }

    /// `GET /@connections/{id}`'s body.
    pub fn describe(&self) -> ConnectionDescription {
        ConnectionDescription {
            info: self.info(),
            user: self.user.clone(),
            mode: self.mode,
        }
    }

    /// Queues a posted payload for this connection alone; see [`Outgoing::Posted`].
    pub fn post(&self, text: &str) -> Result<(), SendError> {
        let posted = Posted {
            text: text.to_owned(),
            frame: wire::text_frame(text),
        };
        self.queue
            .try_send(Outgoing::Posted(Box::new(posted)))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Gone,
            })
    }

    /// Asks the connection's task to close the socket with this code; the first request wins
    /// (and gets `true`).
    pub fn close(&self, code: u16, reason: impl Into<String>) -> bool {
        let mut slot = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some((code, reason.into()));
        self.close_pending.store(true, Ordering::Release);
        self.close.notify_one();
        true
    }

    /// Entries in this connection's queue (taken permits of its bounded channel).
    fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// The pending close request, if any.
    pub fn close_requested(&self) -> Option<(u16, String)> {
        if !self.close_pending.load(Ordering::Acquire) {
            return None;
        }
        self.close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when [`close`](Self::close) was called; returns its code and reason.
    pub async fn closed(&self) -> (u16, String) {
        self.close.notified().await;
        let slot = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
        slot.clone()
            .unwrap_or((close_code::GOING_AWAY, String::new()))
    }

    fn deliver(&self, item: Outgoing) {
        match self.queue.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Counted once per connection: later full sends find the close requested.
                if self.close(
                    close_code::TRY_AGAIN_LATER,
                    "too slow: outbound queue full; reconnect and resume with join after",
                ) {
                    crate::instruments::instruments()
                        .slow_consumer_closes
                        .increment(1);
                }
            }
            // The task is ending; its $disconnect removes it from the hub.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full,
    Gone,
}

/// A room's members on this node.
type Members = Vec<Arc<ConnectionHandle>>;

/// The fan-out hub. See the module docs.
#[derive(Default)]
pub struct Hub {
    connections: RwLock<HashMap<ConnectionId, Arc<ConnectionHandle>>>,
    rooms: RwLock<HashMap<RoomId, Members>>,
}

// A panic elsewhere cannot leave these maps half-updated (every change is one insert or
// remove), so a poisoned lock is still safe to use.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn register(&self, handle: Arc<ConnectionHandle>) {
        write(&self.connections).insert(handle.id.clone(), handle);
    }

    /// Forgets a connection. Its rooms were left by `$disconnect` already.
    pub fn unregister(&self, id: &ConnectionId) {
        write(&self.connections).remove(id);
    }

    pub fn connection(&self, id: &ConnectionId) -> Option<Arc<ConnectionHandle>> {
        read(&self.connections).get(id).cloned()
    }

    pub fn connection_count(&self) -> usize {
        read(&self.connections).len()
    }

    /// Entries queued to all connections: `dynamowave_outbound_queue_depth`, summed when
    /// `/metrics` is scraped so the fan-out path keeps no shared count.
    pub fn queued_entries(&self) -> usize {
        read(&self.connections).values().map(|c| c.queued()).sum()
    }

    /// Closes every connection (graceful shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for handle in read(&self.connections).values() {
            handle.close(code, reason);
        }
    }

    /// The room's members on this node (the cluster adds the other nodes').
    pub fn members_here(&self, room: &RoomId) -> Vec<Member> {
        read(&self.rooms)
            .get(room)
            .into_iter()
            .flatten()
            .map(|m| Member {
                connection_id: m.id.clone(),
                user: m.user.clone(),
                last_read: Seq::ZERO,
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl RoomMembership for Hub {
    fn join(&self, connection: &ConnectionId, room: &RoomId) {
        let Some(handle) = self.connection(connection) else {
            return;
        };
        let mut rooms = write(&self.rooms);
        let members = rooms.entry(room.clone()).or_default();
        if !members.iter().any(|m| m.id == *connection) {
            members.push(handle);
        }
    }

    fn leave(&self, connection: &ConnectionId, room: &RoomId) {
        let mut rooms = write(&self.rooms);
        if let Some(members) = rooms.get_mut(room) {
            members.retain(|m| m.id != *connection);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, StoreError> {
        Ok(self.members_here(room))
    }

    fn presence(
        &self,
        room: &RoomId,
        event: PresenceEvent,
        user: &UserName,
        connection: &ConnectionId,
    ) {
        let rooms = read(&self.rooms);
        let Some(members) = rooms.get(room) else {
            return;
        };
        let mut frame: Option<Arc<Bytes>> = None;
        for m in members
            .iter()
            .filter(|m| m.mode == Mode::V1 && m.id != *connection)
        {
            let frame = frame.get_or_insert_with(|| {
                let text = ServerFrame::Presence {
                    room: room.clone(),
                    event,
                    user: user.clone(),
                    connection_id: connection.clone(),
                }
                .to_json();
                Arc::new(wire::text_frame(&text))
            });
            m.deliver(Outgoing::Direct(frame.clone()));
        }
    }

    fn signal(&self, room: &RoomId, frame: &str, except: Option<&ConnectionId>) {
        self.signal_here(room, frame, except);
    }
}

impl Hub {
    /// [`RoomMembership::signal`] on this node's members alone (a cluster calls it on every
    /// node).
    pub fn signal_here(&self, room: &RoomId, frame: &str, except: Option<&ConnectionId>) {
        let rooms = read(&self.rooms);
        let Some(members) = rooms.get(room) else {
            return;
        };
        let mut encoded: Option<Arc<Bytes>> = None;
        for m in members
            .iter()
            .filter(|m| m.mode == Mode::V1 && Some(&m.id) != except)
        {
            let encoded = encoded.get_or_insert_with(|| Arc::new(wire::text_frame(frame)));
            m.deliver(Outgoing::Direct(encoded.clone()));
        }
    }
}

/// The connections of this node, as a peer node's request reaches them (and the management
/// API of this node, through the same handles).
impl LocalConnections for Hub {
    fn post(&self, id: &ConnectionId, text: String) -> Result<(), PostError> {
        let handle = self.connection(id).ok_or(PostError::Gone)?;
        handle.post(&text).map_err(|e| match e {
            SendError::Full => PostError::Full,
            SendError::Gone => PostError::Gone,
        })
    }

    fn describe(&self, id: &ConnectionId) -> Option<ConnectionDescription> {
        self.connection(id).map(|h| h.describe())
    }

    /// Asks the connection to close; `true` when it is here, even if a close was already
    /// requested (the first request's code wins).
    fn close(&self, id: &ConnectionId, code: u16, reason: &str) -> bool {
        match self.connection(id) {
            Some(h) => {
                h.close(code, reason);
                true
            }
            None => false,
        }
    }
}

impl CommitListener for Hub {
    fn committed(&self, messages: &[Arc<ChatMessage>]) {
        let rooms = read(&self.rooms);
        let committed_at = Instant::now();
        // The batch's messages by room, in seq order; rooms with nobody here are skipped. A
        // commit holds few rooms, so a list beats a map.
        let mut by_room: Vec<(&Members, Vec<&Arc<ChatMessage>>)> = Vec::new();
        for message in messages {
            if let Some((_, batch)) = by_room
                .iter_mut()
                .find(|(_, batch)| batch[0].room == message.room)
            {
                batch.push(message);
            } else if let Some(members) = rooms.get(&message.room) {
                by_room.push((members, vec![message]));
            }
        }
        for (members, messages) in by_room {
            // Which wire forms this room needs: one pass, stopping once both are seen.
            let (mut has_v1, mut has_compat) = (false, false);
            for m in members {
                match m.mode {
                    Mode::V1 => has_v1 = true,
                    Mode::Compat => has_compat = true,
                }
                if has_v1 && has_compat {
                    break;
                }
            }
            let batch = Arc::new(RoomBatch::encode(
                &messages,
                (has_v1, has_compat),
                committed_at,
            ));
            for member in members {
                member.deliver(Outgoing::Live(batch.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamowave_core::UserName;

    fn message(room: &str, seq: u64, data: &str) -> Arc<ChatMessage> {
        Arc::new(ChatMessage::new(
            RoomId::parse(room).unwrap(),
            Seq(seq),
            format!("id-{seq}"),
            UserName::parse("ann").unwrap(),
            data.to_owned(),
            1,
        ))
    }

    #[test]
    fn compat_clients_get_no_frame_for_an_event_entry() {
        let mut edit = (*message("r", 2, "new text")).clone();
        edit.event = Some(Box::new(dynamowave_core::protocol::EntryEvent::Edit {
            target: Seq(1),
        }));
        let entries = [message("r", 1, "a"), Arc::new(edit), message("r", 3, "b")];
        let refs: Vec<&Arc<ChatMessage>> = entries.iter().collect();
        let batch = RoomBatch::encode(&refs, (true, true), Instant::now());
        let (frames, n) = batch.frames_after(Mode::Compat, Seq(0));
        assert_eq!(n, 2);
        assert_eq!(frames, FrameRun::encode(["a", "b"].into_iter()).from(0));
        let (frames, n) = batch.frames_after(Mode::Compat, Seq(1));
        assert_eq!(
            (frames, n),
            (FrameRun::encode(["b"].into_iter()).from(0), 1)
        );
        let (_, n) = batch.frames_after(Mode::Compat, Seq(3));
        assert_eq!(n, 0);
        let (frames, n) = batch.frames_after(Mode::V1, Seq(1));
        assert_eq!(n, 2);
        let edited = ServerFrame::entry(&entries[1]).to_json();
        assert!(edited.starts_with(r#"{"type":"edited""#), "{edited}");
        let expected = FrameRun::encode(
            [
                edited.as_str(),
                ServerFrame::entry(&entries[2]).to_json().as_str(),
            ]
            .into_iter(),
        )
        .from(0);
        assert_eq!(frames, expected);
    }

    #[test]
    fn a_batch_gives_each_member_the_messages_it_has_not_had() {
        let messages = [
            message("r", 4, "d"),
            message("r", 5, "e"),
            message("r", 6, "f"),
        ];
        let refs: Vec<_> = messages.iter().collect();
        let batch = RoomBatch::encode(&refs, (true, true), Instant::now());
        assert_eq!(batch.last_seq(), Seq(6));
        let (frames, n) = batch.frames_after(Mode::Compat, Seq(3));
        assert_eq!(
            (frames, n),
            (FrameRun::encode(["d", "e", "f"].into_iter()).from(0), 3)
        );
        let (frames, n) = batch.frames_after(Mode::Compat, Seq(5));
        assert_eq!((frames, n), (wire::text_frame("f"), 1));
        let (frames, n) = batch.frames_after(Mode::V1, Seq(5));
        let v1 = ServerFrame::Message(messages[2].clone()).to_json();
        assert_eq!((frames, n), (wire::text_frame(&v1), 1));
        let (frames, n) = batch.frames_after(Mode::V1, Seq(6));
        assert!(frames.is_empty() && n == 0);
    }

    #[test]
    fn a_room_without_compat_members_encodes_no_compat_frames() {
        let messages = [message("r", 1, "a")];
        let refs: Vec<_> = messages.iter().collect();
        let batch = RoomBatch::encode(&refs, (true, false), Instant::now());
        assert!(batch.frames_after(Mode::Compat, Seq(0)).0.is_empty());
        assert!(!batch.frames_after(Mode::V1, Seq(0)).0.is_empty());
    }

    #[test]
    fn queue_items_are_two_words() {
        assert_eq!(std::mem::size_of::<Outgoing>(), 16);
    }
}

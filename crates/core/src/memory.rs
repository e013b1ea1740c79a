//! In-memory adapters of the store ports: the reference the conformance suite is written
//! against, and the store for unit tests. Nothing here survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::ports::{
    Appended, Claim, CommitListener, ConnectionRecord, ConnectionStore, DeadLetter, DeadLetters,
    Deletion, EventTarget, MessageLog, NewDeadLetter, NewEvent, NewMessage, Purge, ReadMark,
    StoreError, StoreLifecycle, check_event, refusal,
};
use crate::protocol::{
    ChatMessage, EntryEvent, HistoryQuery, MAX_EMOJIS_PER_MESSAGE, Page, ReactionCounts,
};
use crate::types::{ConnectionId, RoomId, Seq, UserName, now_ms};

#[derive(Default)]
struct RoomLog {
    /// Every entry as appended (messages and events), at index seq - 1.
    messages: Vec<Arc<ChatMessage>>,
    /// (user, id) → seq, for idempotent appends.
    ids: HashMap<(UserName, String), Seq>,
    /// Tombstones: seq → when it was deleted.
    deleted: HashMap<Seq, u64>,
    /// Edited messages: seq → (text now, when).
    edits: HashMap<Seq, (String, u64)>,
    /// Reactions now: seq → emoji → who.
    reactions: HashMap<Seq, BTreeMap<String, BTreeSet<UserName>>>,
    /// Read positions by user.
    read: HashMap<UserName, Seq>,
}

impl RoomLog {
    /// A message as it is now (edited text, reaction counts).
    fn current(&self, m: &Arc<ChatMessage>) -> Arc<ChatMessage> {
        let edit = self.edits.get(&m.seq);
        let reactions = self.reactions.get(&m.seq);
        if edit.is_none() && reactions.is_none() {
            return m.clone();
        }
        let mut now = (**m).clone();
        if let Some((data, at)) = edit {
            now.data = data.clone();
            now.edited_at = Some(*at);
        }
        if let Some(r) = reactions {
            now.reactions = counts(r);
        }
        Arc::new(now)
    }

    /// Checks and applies an event entry at `ts`; the event as stored.
    fn apply(
        &mut self,
        room: &RoomId,
        user: &UserName,
        data: &str,
        event: NewEvent,
        ts: u64,
    ) -> Result<EntryEvent, StoreError> {
        let target = match &event {
            NewEvent::Edit { target }
            | NewEvent::Delete { target }
            | NewEvent::React { target, .. } => *target,
        };
        let found = (target.0 >= 1)
            .then(|| self.messages.get((target.0 - 1) as usize))
            .flatten()
            .map(|m| EventTarget {
                author: &m.user,
                is_message: m.is_message(),
                deleted: self.deleted.contains_key(&target),
            });
        check_event(room, &event, user, found)?;
        Ok(match event {
            NewEvent::Edit { target } => {
                self.edits.insert(target, (data.to_owned(), ts));
                EntryEvent::Edit { target }
            }
            NewEvent::Delete { target } => {
                self.deleted.insert(target, ts);
                EntryEvent::Delete { target }
            }
            NewEvent::React { target, emoji, on } => {
                let reactions = self.reactions.entry(target).or_default();
                if on {
                    if !reactions.contains_key(&emoji) && reactions.len() >= MAX_EMOJIS_PER_MESSAGE
                    {
                        return Err(refusal::too_many_emojis(room, target));
                    }
                    reactions
                        .entry(emoji.clone())
                        .or_default()
                        .insert(user.clone());
                } else if let Some(users) = reactions.get_mut(&emoji) {
                    users.remove(user);
                    if users.is_empty() {
                        reactions.remove(&emoji);
                    }
                }
                let counts = counts(reactions);
                if reactions.is_empty() {
                    self.reactions.remove(&target);
                }
                EntryEvent::Reaction {
                    target,
                    emoji,
                    on,
                    counts,
                }
            }
        })
    }
}

fn counts(reactions: &BTreeMap<String, BTreeSet<UserName>>) -> ReactionCounts {
    reactions
        .iter()
        .map(|(emoji, users)| (emoji.clone(), users.len() as u64))
        .collect()
}

/// A [`MessageLog`] in a mutex. The listener is called under the lock, which keeps the per-room
/// order without further bookkeeping.
pub struct MemoryLog {
    rooms: Mutex<HashMap<RoomId, RoomLog>>,
    listener: Arc<dyn CommitListener>,
}

impl MemoryLog {
    pub fn new(listener: Arc<dyn CommitListener>) -> Self {
        MemoryLog {
            rooms: Mutex::new(HashMap::new()),
            listener,
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<RoomId, RoomLog>> {
        // A panic while holding the lock leaves consistent data (every mutation is one push).
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl MessageLog for MemoryLog {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let mut rooms = self.rooms();
        let log = rooms.entry(m.room.clone()).or_default();
        let key = (m.user, m.id);
        if let Some(seq) = log.ids.get(&key) {
            let message = log.messages[(seq.0 - 1) as usize].clone();
            return Ok(Appended {
                message,
                duplicate: true,
            });
        }
        let seq = Seq(log.messages.len() as u64 + 1);
        let ts = now_ms();
        let event = match m.event {
            Some(event) => Some(Box::new(log.apply(&m.room, &key.0, &m.data, event, ts)?)),
            None => None,
        };
        let mut message = ChatMessage::new(m.room, seq, key.1.clone(), key.0.clone(), m.data, ts);
        message.event = event;
        let message = Arc::new(message);
        log.ids.insert(key, seq);
        log.messages.push(message.clone());
        self.listener.committed(std::slice::from_ref(&message));
        Ok(Appended {
            message,
            duplicate: false,
        })
    }

    async fn create_room(&self, room: &RoomId) -> Result<Seq, StoreError> {
        let mut rooms = self.rooms();
        let log = rooms.entry(room.clone()).or_default();
        Ok(Seq(log.messages.len() as u64))
    }

    async fn head(&self, room: &RoomId) -> Result<Option<Seq>, StoreError> {
        Ok(self
            .rooms()
            .get(room)
            .map(|log| Seq(log.messages.len() as u64)))
    }

    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<Page, StoreError> {
        let rooms = self.rooms();
        let Some(log) = rooms.get(room) else {
            return Ok(Page::default());
        };
        let live: Vec<_> = log
            .messages
            .iter()
            .filter(|m| m.is_message() && !log.deleted.contains_key(&m.seq))
            .map(|m| log.current(m))
            .collect();
        Ok(page_of(&live, query))
    }

    async fn read_entries(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let rooms = self.rooms();
        let Some(log) = rooms.get(room) else {
            return Ok(Page::default());
        };
        let entries: Vec<_> = log
            .messages
            .iter()
            .filter(|m| !(m.is_message() && log.deleted.contains_key(&m.seq)))
            .map(|m| {
                if m.is_message() {
                    log.current(m)
                } else {
                    m.clone()
                }
            })
            .collect();
        Ok(page_of(&entries, HistoryQuery::After { seq: after, limit }))
    }

    async fn delete(&self, room: &RoomId, seq: Seq) -> Result<Deletion, StoreError> {
        let mut rooms = self.rooms();
        let Some(log) = rooms.get_mut(room) else {
            return Ok(Deletion::NotFound);
        };
        if seq == Seq::ZERO || seq.0 > log.messages.len() as u64 {
            return Ok(Deletion::NotFound);
        }
        if let Some(&at) = log.deleted.get(&seq) {
            return Ok(Deletion::AlreadyDeleted { at });
        }
        let at = now_ms();
        log.deleted.insert(seq, at);
        Ok(Deletion::Deleted { at })
    }

    async fn mark_read(
        &self,
        room: &RoomId,
        user: &UserName,
        seq: Seq,
    ) -> Result<ReadMark, StoreError> {
        let mut rooms = self.rooms();
        let head = rooms.get(room).map_or(0, |log| log.messages.len() as u64);
        if seq.0 > head {
            return Err(refusal::read_past_head(room, seq, Seq(head)));
        }
        let Some(log) = rooms.get_mut(room) else {
            return Ok(ReadMark {
                seq: Seq::ZERO,
                moved: false,
            });
        };
        let now = log.read.get(user).copied().unwrap_or_default();
        if seq <= now {
            return Ok(ReadMark {
                seq: now,
                moved: false,
            });
        }
        log.read.insert(user.clone(), seq);
        Ok(ReadMark { seq, moved: true })
    }

    async fn read_positions(&self, room: &RoomId) -> Result<Vec<(UserName, Seq)>, StoreError> {
        Ok(self
            .rooms()
            .get(room)
            .map(|log| log.read.iter().map(|(u, s)| (u.clone(), *s)).collect())
            .unwrap_or_default())
    }
}

/// Cuts a page out of messages held in seq order (with gaps where messages were deleted).
pub fn page_of(all: &[Arc<ChatMessage>], query: HistoryQuery) -> Page {
    let len = all.len();
    let (start, end, more) = match query {
        HistoryQuery::Latest { limit } => {
            let start = len.saturating_sub(limit);
            (start, len, start > 0)
        }
        HistoryQuery::Before { seq, limit } => {
            let end = all.partition_point(|m| m.seq < seq);
            let start = end.saturating_sub(limit);
            (start, end, start > 0)
        }
        HistoryQuery::After { seq, limit } => {
            let start = all.partition_point(|m| m.seq <= seq);
            let end = start.saturating_add(limit).min(len);
            (start, end, end < len)
        }
    };
    Page {
        messages: all[start..end].to_vec(),
        more,
    }
}

/// A [`ConnectionStore`] in a mutex.
#[derive(Default)]
pub struct MemoryConnections {
    rows: Mutex<BTreeMap<ConnectionId, (ConnectionRecord, Vec<RoomId>)>>,
}

impl MemoryConnections {
    fn rows(&self) -> MutexGuard<'_, BTreeMap<ConnectionId, (ConnectionRecord, Vec<RoomId>)>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ConnectionStore for MemoryConnections {
    async fn insert(&self, record: &ConnectionRecord) -> Result<(), StoreError> {
        self.rows()
            .insert(record.id.clone(), (record.clone(), Vec::new()));
        Ok(())
    }

    async fn remove(&self, id: &ConnectionId) -> Result<(), StoreError> {
        self.rows().remove(id);
        Ok(())
    }

    async fn add_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError> {
        if let Some((_, rooms)) = self.rows().get_mut(id)
            && !rooms.contains(room)
        {
            rooms.push(room.clone());
            rooms.sort();
        }
        Ok(())
    }

    async fn remove_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError> {
        if let Some((_, rooms)) = self.rows().get_mut(id) {
            rooms.retain(|r| r != room);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<(ConnectionRecord, Vec<RoomId>)>, StoreError> {
        Ok(self.rows().values().cloned().collect())
    }

    async fn purge_stale(&self) -> Result<u64, StoreError> {
        let mut rows = self.rows();
        let n = rows.len() as u64;
        rows.clear();
        Ok(n)
    }
}

/// [`DeadLetters`] in a mutex.
#[derive(Default)]
pub struct MemoryDeadLetters {
    entries: Mutex<BTreeMap<u64, DeadLetter>>,
    /// The last id given; ids are never reused, even after a purge.
    last_id: std::sync::atomic::AtomicU64,
}

impl MemoryDeadLetters {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<u64, DeadLetter>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl DeadLetters for MemoryDeadLetters {
    async fn add(&self, e: NewDeadLetter) -> Result<u64, StoreError> {
        let mut entries = self.entries();
        let id = self
            .last_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        entries.insert(
            id,
            DeadLetter {
                id,
                created_at: now_ms(),
                kind: e.kind,
                target: e.target,
                user: e.user,
                reason: e.reason,
                payload: e.payload.to_string(),
                attempts: 1,
                last_error: None,
                replayed_at: None,
                replayed_to: None,
            },
        );
        Ok(id)
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.entries().get(&id).cloned())
    }

    async fn list(
        &self,
        after: u64,
        limit: usize,
        pending_only: bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self
            .entries()
            .range(after.saturating_add(1)..)
            .map(|(_, e)| e)
            .filter(|e| !pending_only || e.replayed_at.is_none())
            .take(limit)
            .cloned()
            .collect())
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        Ok(self
            .entries()
            .values()
            .filter(|e| e.replayed_at.is_none())
            .count() as u64)
    }

    async fn claim(&self, id: u64, to: String) -> Result<Claim, StoreError> {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&id) else {
            return Ok(Claim::NotFound);
        };
        if let (Some(at), Some(to)) = (entry.replayed_at, &entry.replayed_to) {
            return Ok(Claim::AlreadyReplayed { at, to: to.clone() });
        }
        let before = entry.clone();
        entry.replayed_at = Some(now_ms());
        entry.replayed_to = Some(to);
        Ok(Claim::Claimed(before))
    }

    async fn release(&self, id: u64, error: String) -> Result<(), StoreError> {
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.replayed_at = None;
            entry.replayed_to = None;
            entry.attempts += 1;
            entry.last_error = Some(error);
        }
        Ok(())
    }

    async fn purge(&self, which: Purge) -> Result<u64, StoreError> {
        let mut entries = self.entries();
        let before = entries.len();
        match which {
            Purge::One(id) => {
                entries.remove(&id);
            }
            Purge::Replayed => entries.retain(|_, e| e.replayed_at.is_none()),
            Purge::All => entries.clear(),
        }
        Ok((before - entries.len()) as u64)
    }
}

/// Nothing to probe or flush in memory.
pub struct MemoryLifecycle;

#[async_trait]
impl StoreLifecycle for MemoryLifecycle {
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn shutdown(&self) {}
}

#[cfg(all(test, feature = "conformance"))]
mod conformance_tests {
    use std::sync::Arc;

    use super::{MemoryConnections, MemoryDeadLetters, MemoryLog};
    use crate::conformance;

    #[tokio::test]
    async fn memory_log_passes_the_conformance_suite() {
        conformance::message_log(|listener| async move { Arc::new(MemoryLog::new(listener)) as _ })
            .await;
        conformance::events(|listener| async move { Arc::new(MemoryLog::new(listener)) as _ })
            .await;
    }

    #[tokio::test]
    async fn memory_connections_pass_the_conformance_suite() {
        conformance::connection_store(|| async { Arc::new(MemoryConnections::default()) as _ })
            .await;
    }

    #[tokio::test]
    async fn memory_dead_letters_pass_the_conformance_suite() {
        conformance::dead_letters(|| async { Arc::new(MemoryDeadLetters::default()) as _ }).await;
    }
}

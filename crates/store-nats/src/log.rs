//! [`JetStreamLog`]: the message log on one JetStream stream, and the fan-out consumer that
//! hands every committed message to this node's hub.
//!
//! # How a room's seq stays 1, 2, 3… across nodes
//!
//! Entry `n` of a room is the one message on subject `dw.msg.<room>.<n>` (the stream keeps one
//! message per subject). An append publishes `n = head + 1` with
//! `Nats-Expected-Last-Subject-Sequence: 0`: JetStream stores it only if that subject is
//! still empty, so two nodes racing for `n` cannot both win (no reuse); the loser re-reads the
//! head and tries `n + 1`. A node only ever tries `head + 1` of a head it has seen committed,
//! so no seq is skipped (no gap). On one node, appends to a room take turns (a per-room lock),
//! so contention — and its retries — is only between nodes.
//!
//! The room's head is its newest entry (`last_by_subject dw.msg.<room>.*`, answered by the
//! stream leader, never a lagging replica): a message's seq, or the `Dw-Head` header of the
//! other two kinds of entry, which are written with the room's newest entry as their expected
//! last (`Nats-Expected-Last-Subject-Sequence-Subject: dw.msg.<room>.*`), so that no append can
//! slip in between the read and the write:
//! - `dw.msg.<room>.0`, written by `create_room` for a room with no entry yet;
//! - a tombstone, which replaces message `n` on its subject (same body and headers, plus
//!   `Dw-Deleted-At`): history skips it, a retry of its id still finds it;
//! - a message rewritten by an edit, deletion or reaction (below).
//!
//! # Edits, deletions and reactions
//!
//! An event entry takes the room's next seq like a message (its `Dw-Event` header says what it
//! did), and in the same atomic batch (nats-server 2.12's atomic publish) message `n` it names
//! is rewritten on its own subject in its new state: the edited text with `Dw-Edited-At`, the
//! tombstone, or `Dw-Reactions` (who reacted with what). Two nodes reacting to one message at
//! once race for the next seq like two sends, and the loser re-reads the head and then the
//! target, so it applies its reaction to the winner's state: none is lost
//! (tests/concurrency.rs). The rewrite also expects the version of `n` the checks were made on
//! (`Nats-Expected-Last-Subject-Sequence` of `n`'s subject), for the one rewrite that takes no
//! seq: a management API tombstone written in between fails the batch instead of being undone.
//! Either both are stored or neither, so history (which reads `n`'s subject) always shows what
//! the log's entries say. A rewrite carries `Dw-Head` and is not a new entry: the fan-out skips
//! it.
//!
//! # Idempotency
//!
//! Each append carries `Nats-Msg-Id = <room>.<user>.<id>`: within the stream's duplicate
//! window, JetStream itself answers a retry with the original's stream sequence. After the
//! commit the key is also written to the `DW_IDS` bucket (its max age, 24 h by default, is how
//! long ids are remembered), which an append reads first. The one case neither covers: a node
//! that dies between JetStream's ack and the `DW_IDS` write, for a retry that comes after the
//! duplicate window (docs/cluster.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dynamowave_core::ports::{
    Appended, CommitListener, Deletion, EventTarget, MessageLog, NewEvent, NewMessage, ReadMark,
    check_event, refusal,
};
use dynamowave_core::protocol::{
    ChatMessage, EntryEvent, HistoryQuery, MAX_EMOJIS_PER_MESSAGE, Page, ReactionCounts,
};
use dynamowave_core::types::{now_ms, random_token};
use dynamowave_core::{RoomId, Seq, UserName};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::names::{self, Names};
use crate::{StoreError, backend};

/// How often an append re-reads the head after losing a race before it gives up (each loss
/// means another node committed, so this is only reached under extreme contention).
const MAX_RACES: usize = 1000;
/// History reads fetch this many entries at once.
const READ_CHUNK: usize = 64;
/// JetStream's answer to an atomic batch whose `Nats-Msg-Id` it has stored before (within the
/// duplicate window): unlike a single publish, a batch gets an error, not a duplicate ack.
const BATCH_DUPLICATE_ID: async_nats::jetstream::ErrorCode =
    async_nats::jetstream::ErrorCode(10201);

/// Who reacted with what to one message: emoji → users.
type Reactions = BTreeMap<String, BTreeSet<String>>;

fn counts(reactions: &Reactions) -> ReactionCounts {
    reactions
        .iter()
        .map(|(emoji, users)| (emoji.clone(), users.len() as u64))
        .collect()
}

/// The `Dw-Event` header of an event entry.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredEvent {
    Edit {
        target: u64,
    },
    Delete {
        target: u64,
    },
    React {
        target: u64,
        emoji: String,
        on: bool,
        counts: ReactionCounts,
    },
}

impl From<&EntryEvent> for StoredEvent {
    fn from(e: &EntryEvent) -> Self {
        match e {
            EntryEvent::Edit { target } => StoredEvent::Edit { target: target.0 },
            EntryEvent::Delete { target } => StoredEvent::Delete { target: target.0 },
            EntryEvent::Reaction {
                target,
                emoji,
                on,
                counts,
            } => StoredEvent::React {
                target: target.0,
                emoji: emoji.clone(),
                on: *on,
                counts: counts.clone(),
            },
        }
    }
}

impl From<StoredEvent> for EntryEvent {
    fn from(e: StoredEvent) -> Self {
        match e {
            StoredEvent::Edit { target } => EntryEvent::Edit {
                target: Seq(target),
            },
            StoredEvent::Delete { target } => EntryEvent::Delete {
                target: Seq(target),
            },
            StoredEvent::React {
                target,
                emoji,
                on,
                counts,
            } => EntryEvent::Reaction {
                target: Seq(target),
                emoji,
                on,
                counts,
            },
        }
    }
}

/// A header value holding JSON: base64url, since header values are one line of text.
fn json_header(value: &impl Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

fn parse_json_header<T: for<'de> Deserialize<'de>>(value: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(value).ok()?).ok()
}

/// One entry of a room, as read back.
enum Entry {
    /// `create_room`'s marker (seq 0).
    Created,
    /// A message as it is now (with who reacted), or an event entry (`message.event`).
    Live {
        message: Arc<ChatMessage>,
        reactions: Reactions,
    },
    Tombstone {
        message: Arc<ChatMessage>,
        deleted_at: u64,
    },
}

pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Stream,
    ids: kv::Store,
    /// Read positions: `<room>.<user>` → seq.
    read_positions: kv::Store,
    names: Names,
    /// Write each entry's webhook event in its batch (`dw.hook.<room>.<seq>`; crate::webhooks).
    webhooks: bool,
    /// The newest seq this node knows committed, per room: where an append starts guessing.
    heads: Mutex<HashMap<RoomId, Seq>>,
    /// Appends to one room take turns on this node.
    room_locks: Mutex<HashMap<RoomId, Arc<tokio::sync::Mutex<()>>>>,
    closed: AtomicBool,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    header(headers, name)?.parse().ok()
}

/// Whether a stored entry is a rewrite of an earlier one (a tombstone, an edited message, new
/// reactions) or `create_room`'s marker rather than a new entry: those carry the room's head.
fn is_rewrite(headers: &HeaderMap) -> bool {
    headers.get(names::HEAD).is_some()
}

/// The headers of message `message` rewritten in a new state, as the room's newest entry at
/// `head` (tombstones, edits, reactions).
fn state_headers(
    message: &ChatMessage,
    reactions: &Reactions,
    deleted_at: Option<u64>,
    head: Seq,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(names::USER, message.user.as_str());
    headers.insert(names::ID, message.id.as_str());
    headers.insert(names::TS, message.ts.to_string().as_str());
    if let Some(at) = message.edited_at {
        headers.insert(names::EDITED_AT, at.to_string().as_str());
    }
    if !reactions.is_empty() {
        headers.insert(names::REACTIONS, json_header(reactions).as_str());
    }
    if let Some(at) = deleted_at {
        headers.insert(names::DELETED_AT, at.to_string().as_str());
    }
    headers.insert(names::HEAD, head.0.to_string().as_str());
    headers
}

/// The headers of a new entry: its idempotency key, "only if seq is free", who, which id, when.
fn entry_headers(key: &str, m: &NewMessage, ts: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, key);
    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    headers.insert(names::USER, m.user.as_str());
    headers.insert(names::ID, m.id.as_str());
    headers.insert(names::TS, ts.to_string().as_str());
    headers
}

/// The error code JetStream answered a publish with, if it did.
fn jetstream_code(e: &PublishError) -> Option<async_nats::jetstream::ErrorCode> {
    let source = std::error::Error::source(e)?;
    source
        .downcast_ref::<async_nats::jetstream::Error>()
        .map(|e| e.error_code())
}

impl JetStreamLog {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        stream: Stream,
        ids: kv::Store,
        read_positions: kv::Store,
        names: Names,
        webhooks: bool,
    ) -> Self {
        JetStreamLog {
            client,
            js,
            stream,
            ids,
            read_positions,
            names,
            webhooks,
            heads: Mutex::new(HashMap::new()),
            room_locks: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Fails at once while NATS is unreachable: `unavailable` now beats a publish buffered
    /// until the connection is back and a client left waiting for the timeout.
    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        connected(&self.client)
    }

    /// Parses a stored entry of `room` at `seq`.
    fn entry(
        room: &RoomId,
        seq: Seq,
        sequence: u64,
        h: &HeaderMap,
        payload: &Bytes,
    ) -> Result<Entry, StoreError> {
        if seq == Seq::ZERO {
            return Ok(Entry::Created);
        }
        let corrupt = |what: &str| {
            StoreError::Backend(format!(
                "entry {sequence} of the stream has no valid {what}"
            ))
        };
        let user = header(h, names::USER)
            .and_then(|u| UserName::parse(u).ok())
            .ok_or_else(|| corrupt("user"))?;
        let mut message = ChatMessage::new(
            room.clone(),
            seq,
            header(h, names::ID)
                .ok_or_else(|| corrupt("id"))?
                .to_owned(),
            user,
            String::from_utf8(payload.to_vec()).map_err(|_| corrupt("UTF-8 body"))?,
            number(h, names::TS).ok_or_else(|| corrupt("timestamp"))?,
        );
        if let Some(event) = header(h, names::EVENT) {
            let event: StoredEvent = parse_json_header(event).ok_or_else(|| corrupt("event"))?;
            message.event = Some(Box::new(event.into()));
        }
        message.edited_at = number(h, names::EDITED_AT);
        let reactions: Reactions = match header(h, names::REACTIONS) {
            Some(r) => parse_json_header(r).ok_or_else(|| corrupt("reactions"))?,
            None => Reactions::new(),
        };
        message.reactions = counts(&reactions);
        let message = Arc::new(message);
        Ok(match number(h, names::DELETED_AT) {
            Some(deleted_at) => Entry::Tombstone {
                message,
                deleted_at,
            },
            None => Entry::Live { message, reactions },
        })
    }

    /// The room's newest entry (by the stream leader) and the head it says.
    async fn newest(&self, room: &RoomId) -> Result<Option<(StreamMessage, Seq)>, StoreError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.names.room_messages(room))
            .await
        {
            Ok(m) => {
                let head = match number(&m.headers, names::HEAD) {
                    Some(head) => Seq(head),
                    None => self
                        .names
                        .parse_message(&m.subject)
                        .map(|(_, seq)| seq)
                        .ok_or_else(|| {
                            StoreError::Backend(format!("unexpected subject {}", m.subject))
                        })?,
                };
                self.saw_head(room, head);
                Ok(Some((m, head)))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend("reading a room's head", e)),
        }
    }

    /// Entry `seq` of the room, with the stream sequence of its current version; `None` when
    /// there is none (never written, or removed by the stream's limits).
    async fn get(&self, room: &RoomId, seq: Seq) -> Result<Option<(u64, Entry)>, StoreError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.names.message(room, seq))
            .await
        {
            Ok(m) => Self::entry(room, seq, m.sequence, &m.headers, &m.payload)
                .map(|entry| Some((m.sequence, entry))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend("reading a message", e)),
        }
    }

    fn saw_head(&self, room: &RoomId, seq: Seq) {
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        match heads.get_mut(room) {
            Some(h) if *h >= seq => {}
            Some(h) => *h = seq,
            None => {
                heads.insert(room.clone(), seq);
            }
        }
    }

    fn known_head(&self, room: &RoomId) -> Option<Seq> {
        self.heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .copied()
    }

    fn room_lock(&self, room: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.room_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room.clone())
            .or_default()
            .clone()
    }

    /// The entry an idempotency key points at, as a duplicate.
    async fn original(&self, room: &RoomId, seq: Seq) -> Result<Appended, StoreError> {
        match self.get(room, seq).await? {
            Some((_, Entry::Live { message, .. } | Entry::Tombstone { message, .. })) => {
                Ok(Appended {
                    message,
                    duplicate: true,
                })
            }
            _ => Err(StoreError::Backend(format!(
                "the id index points at {room}/{seq}, which is not in the stream"
            ))),
        }
    }

    /// The seq the id index has for `key`.
    async fn indexed(&self, key: &str) -> Result<Option<Seq>, StoreError> {
        let Some(seq) = self
            .ids
            .get(key)
            .await
            .map_err(|e| backend("reading the id index", e))?
        else {
            return Ok(None);
        };
        std::str::from_utf8(&seq)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(|s| Some(Seq(s)))
            .ok_or_else(|| StoreError::Backend(format!("bad id index entry {key}")))
    }

    async fn remember_id(&self, key: &str, seq: Seq) {
        if let Err(e) = self.ids.put(key, seq.0.to_string().into()).await {
            // Committed all the same; a retry within the duplicate window is still caught.
            tracing::warn!(error = %e, key, "could not record a message id in the id index");
        }
    }

    /// Reads live messages (and with `events`, event entries) from `start` in `direction`
    /// (+1 / -1) down to 1 or up to `end`, until `want` are found.
    async fn scan(
        &self,
        room: &RoomId,
        start: u64,
        end: u64,
        up: bool,
        want: usize,
        events: bool,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
        let mut found = Vec::new();
        let mut next = start;
        let in_range = |s: u64| s >= 1 && s <= end;
        while found.len() < want && in_range(next) {
            let mut batch = Vec::new();
            while batch.len() < READ_CHUNK.min(want - found.len()).max(1) && in_range(next) {
                batch.push(Seq(next));
                next = if up { next + 1 } else { next - 1 };
            }
            let entries =
                futures_util::future::join_all(batch.iter().map(|&seq| self.get(room, seq))).await;
            for entry in entries {
                if let Some((_, Entry::Live { message, .. })) = entry?
                    && (events || message.is_message())
                {
                    found.push(message);
                    if found.len() == want {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Publishes `messages` as one atomic batch (all stored or none), and returns the commit's
    /// ack.
    async fn publish_batch(
        &self,
        messages: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<PublishAckFuture, StoreError> {
        let batch = random_token(22);
        let count = messages.len();
        for (i, (subject, mut headers, body)) in messages.into_iter().enumerate() {
            headers.insert(async_nats::header::NATS_BATCH_ID, batch.as_str());
            headers.insert(
                async_nats::header::NATS_BATCH_SEQUENCE,
                (i + 1).to_string().as_str(),
            );
            if i + 1 < count {
                // Only the commit is acked; an earlier message that JetStream refuses fails
                // the commit, so it needs no reply of its own.
                self.client
                    .publish_with_headers(subject, headers, body)
                    .await
                    .map_err(|e| backend("publishing a batch", e))?;
            } else {
                headers.insert(
                    async_nats::header::NATS_BATCH_COMMIT,
                    async_nats::header::NATS_BATCH_COMMIT_FINAL,
                );
                return self
                    .js
                    .publish_with_headers(subject, headers, body)
                    .await
                    .map_err(|e| backend("publishing a batch", e));
            }
        }
        Err(StoreError::Backend("an empty batch".into()))
    }

    /// The original of an entry whose batch JetStream refused as a duplicate id (within the
    /// duplicate window): its node writes the id index right after its ack.
    async fn committed_before(&self, room: &RoomId, key: &str) -> Result<Appended, StoreError> {
        for _ in 0..20 {
            if let Some(seq) = self.indexed(key).await? {
                return self.original(room, seq).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(StoreError::Backend(format!(
            "{key} was committed before but is not in the id index yet"
        )))
    }

    /// After JetStream's ack of entry `seq` (this shape's commit): metrics, the known head,
    /// the id index.
    async fn acked(&self, key: &str, room: &RoomId, seq: Seq, started: std::time::Instant) {
        metrics::histogram!("dynamowave_store_commit_seconds").record(started.elapsed());
        metrics::counter!("dynamowave_messages_acked_total").increment(1);
        self.saw_head(room, seq);
        self.remember_id(key, seq).await;
    }

    /// The webhook event of `entry`, for its batch.
    fn hook(&self, entry: &ChatMessage) -> (String, HeaderMap, Bytes) {
        (
            self.names.entry_hook(&entry.room, entry.seq),
            HeaderMap::new(),
            Bytes::from(dynamowave_core::webhook::entry(entry)),
        )
    }

    /// Appends an edit, deletion or reaction: the entry and the rewrite of its target, in one
    /// batch, after [`check_event`] on the target as read. `key` was not in the id index.
    async fn append_event(
        &self,
        m: NewMessage,
        event: NewEvent,
        key: String,
    ) -> Result<Appended, StoreError> {
        let target = match &event {
            NewEvent::Edit { target }
            | NewEvent::Delete { target }
            | NewEvent::React { target, .. } => *target,
        };
        let lock = self.room_lock(&m.room);
        let _turn = lock.lock().await;
        let mut head = match self.known_head(&m.room) {
            Some(head) => head,
            None => self
                .newest(&m.room)
                .await?
                .map_or(Seq::ZERO, |(_, head)| head),
        };
        for _ in 0..MAX_RACES {
            let stored = match target {
                Seq::ZERO => None,
                target => self.get(&m.room, target).await?,
            };
            let (version, message, reactions, deleted) = match stored {
                Some((version, Entry::Live { message, reactions })) => {
                    (version, Some(message), reactions, false)
                }
                Some((version, Entry::Tombstone { message, .. })) => {
                    (version, Some(message), Reactions::new(), true)
                }
                Some((_, Entry::Created)) | None => (0, None, Reactions::new(), false),
            };
            check_event(
                &m.room,
                &event,
                &m.user,
                message.as_deref().map(|t| EventTarget {
                    author: &t.user,
                    is_message: t.is_message(),
                    deleted,
                }),
            )?;
            let Some(message) = message else {
                return Err(refusal::no_such_message(&m.room, target));
            };
            let ts = now_ms();
            let seq = head.next();
            let mut now = (*message).clone();
            let mut reactions = reactions;
            let mut deleted_at = None;
            let done = match &event {
                NewEvent::Edit { target } => {
                    now.data = m.data.clone();
                    now.edited_at = Some(ts);
                    EntryEvent::Edit { target: *target }
                }
                NewEvent::Delete { target } => {
                    deleted_at = Some(ts);
                    EntryEvent::Delete { target: *target }
                }
                NewEvent::React { target, emoji, on } => {
                    let user = m.user.as_str();
                    if *on {
                        if !reactions.contains_key(emoji)
                            && reactions.len() >= MAX_EMOJIS_PER_MESSAGE
                        {
                            return Err(refusal::too_many_emojis(&m.room, *target));
                        }
                        reactions
                            .entry(emoji.clone())
                            .or_default()
                            .insert(user.to_owned());
                    } else if let Some(users) = reactions.get_mut(emoji) {
                        users.remove(user);
                        if users.is_empty() {
                            reactions.remove(emoji);
                        }
                    }
                    EntryEvent::Reaction {
                        target: *target,
                        emoji: emoji.clone(),
                        on: *on,
                        counts: counts(&reactions),
                    }
                }
            };
            let mut headers = entry_headers(&key, &m, ts);
            headers.insert(
                names::EVENT,
                json_header(&StoredEvent::from(&done)).as_str(),
            );
            let mut rewrite = state_headers(&now, &reactions, deleted_at, seq);
            // The version the checks were made on, or nothing is stored.
            rewrite.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                version.to_string().as_str(),
            );
            let mut entry = m.committed(seq, ts);
            entry.event = Some(Box::new(done));
            let mut batch = vec![
                (
                    self.names.message(&m.room, seq),
                    headers,
                    Bytes::from(m.data.clone()),
                ),
                (
                    self.names.message(&m.room, target),
                    rewrite,
                    Bytes::from(now.data.clone()),
                ),
            ];
            if self.webhooks {
                batch.push(self.hook(&entry));
            }
            let started = std::time::Instant::now();
            let ack = self.publish_batch(batch).await?.await;
            match ack {
                Ok(_) => {
                    self.acked(&key, &m.room, seq, started).await;
                    return Ok(Appended {
                        message: Arc::new(entry),
                        duplicate: false,
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // Another node took `seq`, or changed the target: read both again.
                    head = self.newest(&m.room).await?.map_or(head, |(_, h)| h);
                }
                Err(e) if jetstream_code(&e) == Some(BATCH_DUPLICATE_ID) => {
                    return self.committed_before(&m.room, &key).await;
                }
                Err(e) => return Err(backend("committing an event entry", e)),
            }
        }
        Err(StoreError::Backend(format!(
            "room {} is contended: {MAX_RACES} event entries in a row lost the race",
            m.room
        )))
    }
}

#[async_trait]
impl MessageLog for JetStreamLog {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        self.check_open()?;
        metrics::counter!("dynamowave_messages_received_total").increment(1);
        let key = names::idempotency_key(&m.room, m.user.as_str(), &m.id);
        if let Some(seq) = self.indexed(&key).await? {
            return self.original(&m.room, seq).await;
        }
        if let Some(event) = m.event.clone() {
            return self.append_event(m, event, key).await;
        }
        let lock = self.room_lock(&m.room);
        let _turn = lock.lock().await;
        let mut head = match self.known_head(&m.room) {
            Some(head) => head,
            None => self
                .newest(&m.room)
                .await?
                .map_or(Seq::ZERO, |(_, head)| head),
        };
        let ts = now_ms();
        let body = Bytes::from(m.data.clone());
        for _ in 0..MAX_RACES {
            let seq = head.next();
            let headers = entry_headers(&key, &m, ts);
            let subject = self.names.message(&m.room, seq);
            let started = std::time::Instant::now();
            let ack = if self.webhooks {
                // The entry and its webhook event, both or neither.
                let hook = self.hook(&m.committed(seq, ts));
                self.publish_batch(vec![(subject, headers, body.clone()), hook])
                    .await?
                    .await
            } else {
                self.js
                    .publish_with_headers(subject, headers, body.clone())
                    .await
                    .map_err(|e| backend("publishing a message", e))?
                    .await
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    // Within the duplicate window: JetStream names the original.
                    let original = self
                        .stream
                        .get_raw_message(ack.sequence)
                        .await
                        .map_err(|e| backend("reading a duplicate's original", e))?;
                    let Some((room, seq)) = self.names.parse_message(&original.subject) else {
                        return Err(StoreError::Backend(format!(
                            "a duplicate's original is on {}",
                            original.subject
                        )));
                    };
                    self.remember_id(&key, seq).await;
                    return self.original(&room, seq).await;
                }
                Ok(_) => {
                    self.acked(&key, &m.room, seq, started).await;
                    let message = ChatMessage::new(m.room, seq, m.id, m.user, m.data, ts);
                    return Ok(Appended {
                        message: Arc::new(message),
                        duplicate: false,
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // Another node took `seq`: the head is at least that.
                    let read = self.newest(&m.room).await?.map_or(seq, |(_, h)| h);
                    head = read.max(seq);
                }
                Err(e) if jetstream_code(&e) == Some(BATCH_DUPLICATE_ID) => {
                    return self.committed_before(&m.room, &key).await;
                }
                Err(e) => return Err(backend("committing a message", e)),
            }
        }
        Err(StoreError::Backend(format!(
            "room {} is contended: {MAX_RACES} appends in a row lost the race for the next seq",
            m.room
        )))
    }

    async fn create_room(&self, room: &RoomId) -> Result<Seq, StoreError> {
        self.check_open()?;
        loop {
            if let Some((_, head)) = self.newest(room).await? {
                return Ok(head);
            }
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                self.names.room_messages(room).as_str(),
            );
            headers.insert(names::HEAD, "0");
            let ack = self
                .js
                .publish_with_headers(self.names.message(room, Seq::ZERO), headers, Bytes::new())
                .await
                .map_err(|e| backend("creating a room", e))?
                .await;
            match ack {
                Ok(_) => return Ok(Seq::ZERO),
                // Someone wrote to the room first: read its head again.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(backend("creating a room", e)),
            }
        }
    }

    async fn head(&self, room: &RoomId) -> Result<Option<Seq>, StoreError> {
        Ok(self.newest(room).await?.map(|(_, head)| head))
    }

    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<Page, StoreError> {
        let Some((_, head)) = self.newest(room).await? else {
            return Ok(Page::default());
        };
        let (start, up, limit) = match query {
            HistoryQuery::Latest { limit } => (head.0, false, limit),
            HistoryQuery::Before { seq, limit } => {
                (seq.0.saturating_sub(1).min(head.0), false, limit)
            }
            HistoryQuery::After { seq, limit } => (seq.0.saturating_add(1), true, limit),
        };
        // One more than asked tells whether there is more.
        let mut messages = self
            .scan(room, start, head.0, up, limit.saturating_add(1), false)
            .await?;
        let more = messages.len() > limit;
        messages.truncate(limit);
        if !up {
            messages.reverse();
        }
        Ok(Page { messages, more })
    }

    async fn delete(&self, room: &RoomId, seq: Seq) -> Result<Deletion, StoreError> {
        self.check_open()?;
        loop {
            let Some((newest, head)) = self.newest(room).await? else {
                return Ok(Deletion::NotFound);
            };
            if seq == Seq::ZERO || seq > head {
                return Ok(Deletion::NotFound);
            }
            let (message, reactions) = match self.get(room, seq).await? {
                None | Some((_, Entry::Created)) => return Ok(Deletion::NotFound),
                Some((_, Entry::Tombstone { deleted_at, .. })) => {
                    return Ok(Deletion::AlreadyDeleted { at: deleted_at });
                }
                Some((_, Entry::Live { message, .. })) if !message.is_message() => {
                    return Ok(Deletion::NotFound);
                }
                Some((_, Entry::Live { message, reactions })) => (message, reactions),
            };
            let at = now_ms();
            let mut headers = state_headers(&message, &reactions, Some(at), head);
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                newest.sequence.to_string().as_str(),
            );
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                self.names.room_messages(room).as_str(),
            );
            let ack = self
                .js
                .publish_with_headers(
                    self.names.message(room, seq),
                    headers,
                    Bytes::from(message.data.clone()),
                )
                .await
                .map_err(|e| backend("deleting a message", e))?
                .await;
            match ack {
                Ok(_) => return Ok(Deletion::Deleted { at }),
                // The room moved on between the read and the write: read again.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(backend("deleting a message", e)),
            }
        }
    }

    async fn read_entries(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let Some((_, head)) = self.newest(room).await? else {
            return Ok(Page::default());
        };
        let mut messages = self
            .scan(
                room,
                after.0.saturating_add(1),
                head.0,
                true,
                limit.saturating_add(1),
                true,
            )
            .await?;
        let more = messages.len() > limit;
        messages.truncate(limit);
        Ok(Page { messages, more })
    }

    async fn mark_read(
        &self,
        room: &RoomId,
        user: &UserName,
        seq: Seq,
    ) -> Result<ReadMark, StoreError> {
        self.check_open()?;
        let head = self.newest(room).await?.map_or(Seq::ZERO, |(_, head)| head);
        if seq > head {
            return Err(refusal::read_past_head(room, seq, head));
        }
        let key = names::read_key(room, user.as_str());
        let value = || Bytes::from(seq.0.to_string());
        // Compare-and-set on the key's revision: concurrent marks from a user's connections on
        // several nodes leave the highest.
        for _ in 0..MAX_RACES {
            let entry = self
                .read_positions
                .entry(key.as_str())
                .await
                .map_err(|e| backend("reading a read position", e))?;
            let written = match entry {
                None => self
                    .read_positions
                    .create(key.as_str(), value())
                    .await
                    .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
                Some(entry) => {
                    let now = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .map(Seq)
                        .ok_or_else(|| StoreError::Backend(format!("bad read position {key}")))?;
                    if now >= seq {
                        return Ok(ReadMark {
                            seq: now,
                            moved: false,
                        });
                    }
                    self.read_positions
                        .update(key.as_str(), value(), entry.revision)
                        .await
                        .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision)
                }
            };
            match written {
                Ok(_) => return Ok(ReadMark { seq, moved: true }),
                // Another connection of the user moved it meanwhile: compare again.
                Err(true) => continue,
                Err(false) => {
                    return Err(StoreError::Backend(format!(
                        "writing the read position {key} failed"
                    )));
                }
            }
        }
        Err(StoreError::Backend(format!(
            "read position {key} is contended"
        )))
    }

    async fn read_positions(&self, room: &RoomId) -> Result<Vec<(UserName, Seq)>, StoreError> {
        // The newest value of every key of the room: an ordered consumer over the bucket's
        // stream, read for as many entries as it had pending when created.
        let config = consumer::push::OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            filter_subject: names::read_keys_subject(&self.read_positions.name, room),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            headers_only: false,
            ..Default::default()
        };
        let consumer = self
            .read_positions
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| backend("reading read positions", e))?;
        let pending = consumer.cached_info().num_pending;
        let mut positions = Vec::with_capacity(pending as usize);
        if pending == 0 {
            return Ok(positions);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| backend("reading read positions", e))?;
        let prefix = format!("$KV.{}.", self.read_positions.name);
        for _ in 0..pending {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(backend("reading read positions", e)),
                Ok(None) | Err(_) => {
                    return Err(StoreError::Backend(
                        "reading read positions: the bucket stopped answering".into(),
                    ));
                }
            };
            let user = message
                .subject
                .strip_prefix(&prefix)
                .and_then(|k| k.rsplit_once('.'))
                .and_then(|(_, user)| names::from_b64(user))
                .and_then(|u| UserName::parse(&u).ok());
            let seq = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|s| s.parse().ok());
            if let (Some(user), Some(seq)) = (user, seq) {
                positions.push((user, Seq(seq)));
            }
        }
        Ok(positions)
    }
}

/// `Ok` while the client is connected to NATS.
pub fn connected(client: &async_nats::Client) -> Result<(), StoreError> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        state => Err(StoreError::Backend(format!(
            "NATS is not connected ({state})"
        ))),
    }
}

/// Consumes every entry committed to the stream from now on and hands the messages, in stream
/// order (so in seq order per room), to this node's fan-out. Runs until the process ends; it
/// survives NATS outages (the ordered consumer resumes after the last entry it delivered).
pub async fn fan_out(
    client: async_nats::Client,
    stream: Stream,
    names: Names,
    log: Arc<JetStreamLog>,
    listener: Arc<dyn CommitListener>,
) {
    let mut resume_after: Option<u64> = None;
    loop {
        let deliver_policy = match resume_after {
            None => consumer::DeliverPolicy::New,
            Some(seq) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
        };
        let config = consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: names.all_messages(),
            deliver_policy,
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(c) => c.messages().await,
            Err(e) => {
                tracing::warn!(error = %e, "fan-out: could not create the stream consumer; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "fan-out: could not consume the stream; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(next) = messages.next().await {
            let message = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "fan-out: stream consumer error");
                    continue;
                }
            };
            if let Ok(info) = message.info() {
                resume_after = Some(info.stream_sequence);
            }
            let Some((room, seq)) = names.parse_message(&message.subject) else {
                continue;
            };
            let headers = message.headers.clone().unwrap_or_default();
            if is_rewrite(&headers) {
                // A tombstone, a message in a new state, a room's marker: not a new entry.
                continue;
            }
            let sequence = resume_after.unwrap_or_default();
            match JetStreamLog::entry(&room, seq, sequence, &headers, &message.payload) {
                Ok(Entry::Live { message: m, .. }) => {
                    log.saw_head(&room, seq);
                    listener.committed(std::slice::from_ref(&m));
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "fan-out: skipping an unreadable entry"),
            }
        }
        tracing::warn!("fan-out: the stream consumer ended; resuming");
    }
}

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
//!   `Dw-Deleted-At`): history skips it, a retry of its id still finds it.
//!
//! # Idempotency
//!
//! Each append carries `Nats-Msg-Id = <room>.<user>.<id>`: within the stream's duplicate
//! window, JetStream itself answers a retry with the original's stream sequence. After the
//! commit the key is also written to the `DW_IDS` bucket (its max age, 24 h by default, is how
//! long ids are remembered), which an append reads first. The one case neither covers: a node
//! that dies between JetStream's ack and the `DW_IDS` write, for a retry that comes after the
//! duplicate window (docs/cluster.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use bytes::Bytes;
use dynamowave_core::ports::{Appended, CommitListener, Deletion, MessageLog, NewMessage, refusal};
use dynamowave_core::protocol::{ChatMessage, HistoryQuery, Page};
use dynamowave_core::types::now_ms;
use dynamowave_core::{RoomId, Seq, UserName};
use futures_util::StreamExt as _;

use crate::names::{self, Names};
use crate::{StoreError, backend};

/// How often an append re-reads the head after losing a race before it gives up (each loss
/// means another node committed, so this is only reached under extreme contention).
const MAX_RACES: usize = 1000;
/// History reads fetch this many entries at once.
const READ_CHUNK: usize = 64;

/// One entry of a room, as read back.
enum Entry {
    /// `create_room`'s marker (seq 0).
    Created,
    Message(Arc<ChatMessage>),
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
    names: Names,
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

impl JetStreamLog {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        stream: Stream,
        ids: kv::Store,
        names: Names,
    ) -> Self {
        JetStreamLog {
            client,
            js,
            stream,
            ids,
            names,
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
        let message = Arc::new(ChatMessage::new(
            room.clone(),
            seq,
            header(h, names::ID)
                .ok_or_else(|| corrupt("id"))?
                .to_owned(),
            user,
            String::from_utf8(payload.to_vec()).map_err(|_| corrupt("UTF-8 body"))?,
            number(h, names::TS).ok_or_else(|| corrupt("timestamp"))?,
        ));
        Ok(match number(h, names::DELETED_AT) {
            Some(deleted_at) => Entry::Tombstone {
                message,
                deleted_at,
            },
            None => Entry::Message(message),
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

    /// Entry `seq` of the room; `None` when there is none (never written, or removed by the
    /// stream's limits).
    async fn get(&self, room: &RoomId, seq: Seq) -> Result<Option<Entry>, StoreError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.names.message(room, seq))
            .await
        {
            Ok(m) => Self::entry(room, seq, m.sequence, &m.headers, &m.payload).map(Some),
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

    /// The message an idempotency key points at, as a duplicate.
    async fn original(&self, room: &RoomId, seq: Seq) -> Result<Appended, StoreError> {
        match self.get(room, seq).await? {
            Some(Entry::Message(message)) | Some(Entry::Tombstone { message, .. }) => {
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

    async fn remember_id(&self, key: &str, seq: Seq) {
        if let Err(e) = self.ids.put(key, seq.0.to_string().into()).await {
            // Committed all the same; a retry within the duplicate window is still caught.
            tracing::warn!(error = %e, key, "could not record a message id in the id index");
        }
    }

    /// Reads live messages from `start` in `direction` (+1 / -1) down to 1 or up to `end`,
    /// until `want` are found.
    async fn scan(
        &self,
        room: &RoomId,
        start: u64,
        end: u64,
        up: bool,
        want: usize,
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
                if let Some(Entry::Message(m)) = entry? {
                    found.push(m);
                    if found.len() == want {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl MessageLog for JetStreamLog {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        self.check_open()?;
        if m.event.is_some() {
            return Err(refusal::unsupported(
                "editing, deleting and reacting to messages",
                "cluster (NATS)",
            ));
        }
        metrics::counter!("dynamowave_messages_received_total").increment(1);
        let key = names::idempotency_key(&m.room, m.user.as_str(), &m.id);
        if let Some(seq) = self
            .ids
            .get(&key)
            .await
            .map_err(|e| backend("reading the id index", e))?
        {
            let seq = std::str::from_utf8(&seq)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Backend(format!("bad id index entry {key}")))?;
            return self.original(&m.room, Seq(seq)).await;
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
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, key.as_str());
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
            headers.insert(names::USER, m.user.as_str());
            headers.insert(names::ID, m.id.as_str());
            headers.insert(names::TS, ts.to_string().as_str());
            let started = std::time::Instant::now();
            let ack = self
                .js
                .publish_with_headers(self.names.message(&m.room, seq), headers, body.clone())
                .await
                .map_err(|e| backend("publishing a message", e))?
                .await;
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
                    // Publish to JetStream's ack: this shape's commit.
                    metrics::histogram!("dynamowave_store_commit_seconds")
                        .record(started.elapsed());
                    metrics::counter!("dynamowave_messages_acked_total").increment(1);
                    self.saw_head(&m.room, seq);
                    self.remember_id(&key, seq).await;
                    let message = Arc::new(ChatMessage::new(m.room, seq, m.id, m.user, m.data, ts));
                    return Ok(Appended {
                        message,
                        duplicate: false,
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // Another node took `seq`: the head is at least that.
                    let read = self.newest(&m.room).await?.map_or(seq, |(_, h)| h);
                    head = read.max(seq);
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
            .scan(room, start, head.0, up, limit.saturating_add(1))
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
            let message = match self.get(room, seq).await? {
                None | Some(Entry::Created) => return Ok(Deletion::NotFound),
                Some(Entry::Tombstone { deleted_at, .. }) => {
                    return Ok(Deletion::AlreadyDeleted { at: deleted_at });
                }
                Some(Entry::Message(m)) => m,
            };
            let at = now_ms();
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                newest.sequence.to_string().as_str(),
            );
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                self.names.room_messages(room).as_str(),
            );
            headers.insert(names::USER, message.user.as_str());
            headers.insert(names::ID, message.id.as_str());
            headers.insert(names::TS, message.ts.to_string().as_str());
            headers.insert(names::DELETED_AT, at.to_string().as_str());
            headers.insert(names::HEAD, head.0.to_string().as_str());
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
            let sequence = resume_after.unwrap_or_default();
            match JetStreamLog::entry(&room, seq, sequence, &headers, &message.payload) {
                Ok(Entry::Message(m)) => {
                    log.saw_head(&room, seq);
                    listener.committed(std::slice::from_ref(&m));
                }
                // Markers and tombstones are not delivered.
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "fan-out: skipping an unreadable entry"),
            }
        }
        tracing::warn!("fan-out: the stream consumer ended; resuming");
    }
}

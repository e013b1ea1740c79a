//! The wire protocol (docs/protocol.md is the spec).
//!
//! Clients send JSON objects routed by their `action` field, as API Gateway routes on
//! `$request.body.action`. In v1 mode (subprotocol [`SUBPROTOCOL_V1`]) the server answers with
//! [`ServerFrame`]s tagged by `type`; in compat mode (no subprotocol) it behaves exactly like the
//! AWS sample and sends message bodies as raw text.
//!
//! Decoding borrows from the frame text: a field is copied only when it has JSON escapes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{ChatError, ErrorCode};
use crate::types::{ConnectionId, MAX_MESSAGE_ID_LEN, RoomId, Seq, UserName, rfc3339_ms};

/// The WebSocket subprotocol that selects v1 mode.
pub const SUBPROTOCOL_V1: &str = "dynamowave.v1";

/// Default and largest page for `history`.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
pub const MAX_HISTORY_LIMIT: usize = 500;

/// How a connection speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The AWS sample's protocol: raw text out, default room only, no acks.
    Compat,
    /// `dynamowave.v1`: typed JSON envelopes, rooms, acks, history.
    V1,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Compat => "compat",
            Mode::V1 => "v1",
        }
    }
}

/// A committed entry of a room's log: as stored, as returned by history and as delivered.
///
/// Most entries are messages (`type: message`). An entry with an [`event`](Self::event) is an
/// edit, deletion or reaction of an earlier message: it takes its own seq in the same sequence
/// (its `eventSeq` on the wire), is acked and deduplicated like a message, and is delivered as
/// its event's frame ([`ServerFrame::entry`]). Then `user` is who did it, `data` an edit's new
/// text (empty otherwise) and `ts` when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub room: RoomId,
    pub seq: Seq,
    /// The client's idempotency key, or one the server made up when the client sent none.
    pub id: String,
    pub user: UserName,
    pub data: String,
    /// Commit time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// When the message was last edited (history and replay show messages as they are now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// The message's reactions now: how many users reacted with each emoji (none: omitted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: ReactionCounts,
    /// `None` for a message; what this entry did to an earlier message otherwise.
    #[serde(skip)]
    pub event: Option<Box<EntryEvent>>,
}

impl ChatMessage {
    /// A plain message entry (no edit, no reactions).
    pub fn new(room: RoomId, seq: Seq, id: String, user: UserName, data: String, ts: u64) -> Self {
        ChatMessage {
            room,
            seq,
            id,
            user,
            data,
            ts,
            edited_at: None,
            reactions: ReactionCounts::new(),
            event: None,
        }
    }

    /// Whether this entry is a message (not an event about one).
    pub fn is_message(&self) -> bool {
        self.event.is_none()
    }
}

/// Reaction counts by emoji, in a stable order.
pub type ReactionCounts = BTreeMap<String, u64>;

/// Longest reaction emoji (a short code like `:+1:` or an emoji with modifiers).
pub const MAX_EMOJI_LEN: usize = 32;
/// Most distinct emojis on one message; a reaction with a new one beyond it is refused.
pub const MAX_EMOJIS_PER_MESSAGE: usize = 50;

/// What an event entry of the log did to message `target` of its room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryEvent {
    /// The author replaced the text (the entry's `data`).
    Edit { target: Seq },
    /// The author deleted it (it is a tombstone now).
    Delete { target: Seq },
    /// The entry's user set (`on`) or took back one reaction; `counts` are the message's
    /// reaction counts just after.
    Reaction {
        target: Seq,
        emoji: String,
        on: bool,
        counts: ReactionCounts,
    },
}

impl EntryEvent {
    pub fn target(&self) -> Seq {
        match self {
            EntryEvent::Edit { target }
            | EntryEvent::Delete { target }
            | EntryEvent::Reaction { target, .. } => *target,
        }
    }
}

/// Which page of a room's log to read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HistoryQuery {
    /// The newest `limit` messages.
    Latest { limit: usize },
    /// Up to `limit` messages with seq < `seq`, the newest of them.
    Before { seq: Seq, limit: usize },
    /// Up to `limit` messages with seq > `seq`, the oldest of them.
    After { seq: Seq, limit: usize },
}

impl HistoryQuery {
    /// Builds a query from optional `before` / `after` / `limit` parameters, as both the
    /// `history` action and `GET /rooms/{room}/messages` take them.
    pub fn from_params(
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u64>,
    ) -> Result<Self, ChatError> {
        let limit = match limit {
            None => DEFAULT_HISTORY_LIMIT,
            Some(n) if (1..=MAX_HISTORY_LIMIT as u64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ChatError::bad_request(format!(
                    "limit {n} is out of range: use 1 to {MAX_HISTORY_LIMIT}"
                )));
            }
        };
        match (before, after) {
            (Some(_), Some(_)) => Err(ChatError::bad_request(
                "give either `before` or `after`, not both",
            )),
            (Some(b), None) => Ok(HistoryQuery::Before { seq: Seq(b), limit }),
            (None, Some(a)) => Ok(HistoryQuery::After { seq: Seq(a), limit }),
            (None, None) => Ok(HistoryQuery::Latest { limit }),
        }
    }

    pub fn limit(&self) -> usize {
        match *self {
            HistoryQuery::Latest { limit }
            | HistoryQuery::Before { limit, .. }
            | HistoryQuery::After { limit, .. } => limit,
        }
    }
}

/// A page of history, oldest first. `more` is true when older (for `Latest`/`Before`) or newer
/// (for `After`) messages exist beyond the page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<Arc<ChatMessage>>,
    pub more: bool,
}

/// A decoded client frame, borrowing from the frame text.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// `{"action":"sendmessage","room":"r","data":"hi","id":"c1"}`. `message` is accepted
    /// for `data` (the AWS tutorial's key). `room` is required in v1 and ignored in compat mode.
    SendMessage {
        room: Option<RoomId>,
        data: Cow<'a, str>,
        id: Option<Cow<'a, str>>,
    },
    /// `{"action":"join","room":"r","after":41}`.
    Join { room: RoomId, after: Option<Seq> },
    /// `{"action":"leave","room":"r"}`.
    Leave { room: RoomId },
    /// `{"action":"history","room":"r","before":100,"limit":20}`.
    History { room: RoomId, query: HistoryQuery },
    /// `{"action":"members","room":"r"}`.
    Members { room: RoomId },
    /// `{"action":"edit","room":"r","seq":7,"data":"new text","id":"c2"}`: the author only.
    Edit {
        room: RoomId,
        seq: Seq,
        data: Cow<'a, str>,
        id: Option<Cow<'a, str>>,
    },
    /// `{"action":"delete","room":"r","seq":7,"id":"c3"}`: the author only.
    Delete {
        room: RoomId,
        seq: Seq,
        id: Option<Cow<'a, str>>,
    },
    /// `{"action":"react","room":"r","seq":7,"emoji":"👍","on":true,"id":"c4"}`.
    React {
        room: RoomId,
        seq: Seq,
        emoji: Cow<'a, str>,
        on: bool,
        id: Option<Cow<'a, str>>,
    },
    /// `{"action":"read","room":"r","seq":7}`: the user has read the room through `seq`.
    Read { room: RoomId, seq: Seq },
    /// `{"action":"typing","room":"r"}`.
    Typing { room: RoomId },
    /// Any other action: the `$default` route.
    Default { action: Cow<'a, str> },
}

/// The raw shape of a client frame: a JSON object whose fields are checked one by one, so an
/// error can name the field and say what it should be.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    action: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
    #[serde(borrow)]
    seq: Option<&'a RawValue>,
    #[serde(borrow)]
    emoji: Option<&'a RawValue>,
    #[serde(borrow)]
    on: Option<&'a RawValue>,
}

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a JSON object at all. Compat mode routes this to `$default`, as API Gateway does.
    NotJson(String),
    /// A JSON object with a bad or missing field; `id` is the frame's `id` when it was readable,
    /// so the client can match the error to the message it sent.
    Invalid {
        error: ChatError,
        id: Option<String>,
    },
}

impl From<DecodeError> for ChatError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::NotJson(detail) => ChatError::bad_request(format!(
                "frames must be JSON objects like {{\"action\":\"sendmessage\",\"room\":\"general\",\"data\":\"hi\"}} ({detail})"
            )),
            DecodeError::Invalid { error, .. } => error,
        }
    }
}

impl<'a> ClientFrame<'a> {
    /// Decodes one text frame. In compat mode only `sendmessage` is a route, as in the AWS
    /// sample; any other frame, with or without an `action`, is `$default`.
    pub fn decode(text: &'a str, mode: Mode) -> Result<Self, DecodeError> {
        // serde would also take a JSON array for a struct; a frame must be an object.
        if !text.trim_start().starts_with('{') {
            return Err(DecodeError::NotJson("expected a JSON object".into()));
        }
        let raw: RawFrame<'a> =
            serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        if mode == Mode::Compat {
            let action = string_field("action", raw.action).ok().flatten();
            if action.as_deref() != Some("sendmessage") {
                return Ok(ClientFrame::Default {
                    action: action.unwrap_or_default(),
                });
            }
        }
        let id = raw.id;
        raw.route().map_err(|error| DecodeError::Invalid {
            error,
            id: string_field("id", id).ok().flatten().map(Cow::into_owned),
        })
    }

    /// The client's `id`, if the frame carried a readable one; echoed in `error` frames.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientFrame::SendMessage { id, .. }
            | ClientFrame::Edit { id, .. }
            | ClientFrame::Delete { id, .. }
            | ClientFrame::React { id, .. } => id.as_deref(),
            _ => None,
        }
    }

    /// The room the frame names, for the token's room check (compat frames are resolved by
    /// the caller).
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            ClientFrame::SendMessage { room, .. } => room.as_ref(),
            ClientFrame::Join { room, .. }
            | ClientFrame::Leave { room }
            | ClientFrame::History { room, .. }
            | ClientFrame::Members { room }
            | ClientFrame::Edit { room, .. }
            | ClientFrame::Delete { room, .. }
            | ClientFrame::React { room, .. }
            | ClientFrame::Read { room, .. }
            | ClientFrame::Typing { room } => Some(room),
            ClientFrame::Default { .. } => None,
        }
    }
}

impl<'a> RawFrame<'a> {
    fn route(self) -> Result<ClientFrame<'a>, ChatError> {
        let action = string_field("action", self.action)?.ok_or_else(|| {
            ChatError::bad_request(
                "missing `action`: send {\"action\":\"sendmessage\",\"room\":\"general\",\"data\":\"hi\"} \
                 or one of join, leave, history, members, edit, delete, react, read, typing",
            )
        })?;
        Ok(match &*action {
            "sendmessage" => {
                let data = match (self.data, self.message) {
                    (Some(d), _) => string_field("data", Some(d))?,
                    (None, m) => string_field("message", m)?,
                }
                .ok_or_else(|| {
                    ChatError::bad_request(
                        "sendmessage needs a `data` string: {\"action\":\"sendmessage\",\"room\":\"general\",\"data\":\"hi\"}",
                    )
                })?;
                let id = id_field(self.id)?;
                let room = self.room.map(|r| room_field(Some(r))).transpose()?;
                ClientFrame::SendMessage { room, data, id }
            }
            "edit" => {
                let id = id_field(self.id)?;
                let data = string_field("data", self.data)?.ok_or_else(|| {
                    ChatError::bad_request(
                        "edit needs the new text in `data`: {\"action\":\"edit\",\"room\":\"general\",\"seq\":7,\"data\":\"fixed\"}",
                    )
                })?;
                ClientFrame::Edit {
                    room: room_field(self.room)?,
                    seq: target_field("edit", self.seq)?,
                    data,
                    id,
                }
            }
            "delete" => ClientFrame::Delete {
                id: id_field(self.id)?,
                room: room_field(self.room)?,
                seq: target_field("delete", self.seq)?,
            },
            "react" => {
                let id = id_field(self.id)?;
                let emoji = string_field("emoji", self.emoji)?.ok_or_else(|| {
                    ChatError::bad_request(
                        "react needs an `emoji` string: {\"action\":\"react\",\"room\":\"general\",\"seq\":7,\"emoji\":\"👍\",\"on\":true}",
                    )
                })?;
                if emoji.is_empty()
                    || emoji.len() > MAX_EMOJI_LEN
                    || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(ChatError::bad_request(format!(
                        "`emoji` must be 1 to {MAX_EMOJI_LEN} bytes without spaces or control characters"
                    )));
                }
                let on = match self.on.map(RawValue::get) {
                    None | Some("null") | Some("true") => true,
                    Some("false") => false,
                    Some(other) => {
                        return Err(ChatError::bad_request(format!(
                            "field `on` must be true (add the reaction) or false (take it back), got {}",
                            preview(other)
                        )));
                    }
                };
                ClientFrame::React {
                    room: room_field(self.room)?,
                    seq: target_field("react", self.seq)?,
                    emoji,
                    on,
                    id,
                }
            }
            "read" => ClientFrame::Read {
                room: room_field(self.room)?,
                seq: u64_field("seq", self.seq)?.map(Seq).ok_or_else(|| {
                    ChatError::bad_request(
                        "read needs the `seq` read through: {\"action\":\"read\",\"room\":\"general\",\"seq\":7}",
                    )
                })?,
            },
            "typing" => ClientFrame::Typing {
                room: room_field(self.room)?,
            },
            "join" => ClientFrame::Join {
                room: room_field(self.room)?,
                after: u64_field("after", self.after)?.map(Seq),
            },
            "leave" => ClientFrame::Leave {
                room: room_field(self.room)?,
            },
            "history" => ClientFrame::History {
                room: room_field(self.room)?,
                query: HistoryQuery::from_params(
                    u64_field("before", self.before)?,
                    u64_field("after", self.after)?,
                    u64_field("limit", self.limit)?,
                )?,
            },
            "members" => ClientFrame::Members {
                room: room_field(self.room)?,
            },
            _ => ClientFrame::Default { action },
        })
    }
}

/// The optional idempotency key of a send, edit, delete or reaction.
fn id_field(raw: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, ChatError> {
    let id = string_field("id", raw)?;
    if let Some(id) = &id
        && (id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN)
    {
        return Err(ChatError::bad_request(format!(
            "`id` must be 1 to {MAX_MESSAGE_ID_LEN} bytes long"
        )));
    }
    Ok(id)
}

/// The `seq` of the message an edit, delete or reaction is about.
fn target_field(action: &str, raw: Option<&RawValue>) -> Result<Seq, ChatError> {
    match u64_field("seq", raw)? {
        Some(seq) if seq > 0 => Ok(Seq(seq)),
        _ => Err(ChatError::bad_request(format!(
            "{action} needs the `seq` of the message (1 or more), as in its `message` frame"
        ))),
    }
}

fn room_field(raw: Option<&RawValue>) -> Result<RoomId, ChatError> {
    let name = string_field("room", raw)?.ok_or_else(|| {
        ChatError::bad_request("missing `room`: name the room, like \"room\":\"general\"")
    })?;
    RoomId::parse(&name)
}

/// A string field; `null` counts as absent.
fn string_field<'a>(
    name: &str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, ChatError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_str(CowStr).map(Some).map_err(|_| {
        ChatError::bad_request(format!(
            "field `{name}` must be a string, got {}",
            preview(raw.get())
        ))
    })
}

/// A non-negative integer field; `null` counts as absent.
fn u64_field(name: &str, raw: Option<&RawValue>) -> Result<Option<u64>, ChatError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    serde_json::from_str::<u64>(raw.get())
        .map(Some)
        .map_err(|_| {
            ChatError::bad_request(format!(
                "field `{name}` must be a non-negative integer, got {}",
                preview(raw.get())
            ))
        })
}

fn preview(raw: &str) -> String {
    let mut end = raw.len().min(40);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    if end < raw.len() {
        format!("{}...", &raw[..end])
    } else {
        raw.to_owned()
    }
}

/// Deserializes a JSON string, borrowing it when it has no escapes.
struct CowStr;

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// What the server sends in v1 mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerFrame {
    /// Sent right after the upgrade.
    Connected {
        connection_id: ConnectionId,
        user: UserName,
        protocol: String,
        default_room: RoomId,
        limits: Limits,
    },
    /// A committed message in a room the connection joined (live or replayed).
    Message(Arc<ChatMessage>),
    /// The message with this `id` is durably committed as `seq`.
    Ack {
        id: String,
        room: RoomId,
        seq: Seq,
        ts: u64,
        /// True when this id was committed before: nothing new was stored or delivered.
        duplicate: bool,
    },
    /// The join took effect; `seq` is the room's last committed seq at that moment. A join with
    /// `after` is followed by the entries `after+1 ..= seq`, then live ones. `lastRead` is the
    /// user's read position in the room (0: nothing read yet).
    Joined {
        room: RoomId,
        seq: Seq,
        #[serde(default)]
        last_read: Seq,
    },
    /// Message `seq` was edited by its author (event entry `eventSeq`).
    Edited {
        room: RoomId,
        seq: Seq,
        data: String,
        user: UserName,
        edited_at: u64,
        event_seq: Seq,
    },
    /// Message `seq` was deleted (event entry `eventSeq`).
    Deleted {
        room: RoomId,
        seq: Seq,
        event_seq: Seq,
    },
    /// `user` set (`on`) or took back a reaction to message `seq`; `counts` are its reaction
    /// counts now (event entry `eventSeq`).
    Reaction {
        room: RoomId,
        seq: Seq,
        emoji: String,
        user: UserName,
        on: bool,
        counts: ReactionCounts,
        event_seq: Seq,
    },
    /// `user` has read the room through `seq` (not in the log; positions only move forward).
    Read {
        room: RoomId,
        user: UserName,
        seq: Seq,
    },
    /// `user` is typing in the room; show it for 5 s unless another comes (not stored).
    Typing {
        room: RoomId,
        user: UserName,
    },
    Left {
        room: RoomId,
    },
    /// Someone joined or left a room this connection is in.
    Presence {
        room: RoomId,
        event: PresenceEvent,
        user: UserName,
        connection_id: ConnectionId,
    },
    History {
        room: RoomId,
        messages: Vec<Arc<ChatMessage>>,
        more: bool,
    },
    Members {
        room: RoomId,
        members: Vec<Member>,
    },
    /// The `$default` route's reply: how to use the API, and the caller's connection info.
    Info {
        message: String,
        connection: ConnectionInfo,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    /// The frame that delivers a log entry: `message`, or its event's frame.
    pub fn entry(entry: &Arc<ChatMessage>) -> Self {
        let Some(event) = &entry.event else {
            return ServerFrame::Message(entry.clone());
        };
        let (room, event_seq) = (entry.room.clone(), entry.seq);
        match &**event {
            EntryEvent::Edit { target } => ServerFrame::Edited {
                room,
                seq: *target,
                data: entry.data.clone(),
                user: entry.user.clone(),
                edited_at: entry.ts,
                event_seq,
            },
            EntryEvent::Delete { target } => ServerFrame::Deleted {
                room,
                seq: *target,
                event_seq,
            },
            EntryEvent::Reaction {
                target,
                emoji,
                on,
                counts,
            } => ServerFrame::Reaction {
                room,
                seq: *target,
                emoji: emoji.clone(),
                user: entry.user.clone(),
                on: *on,
                counts: counts.clone(),
                event_seq,
            },
        }
    }

    pub fn error(id: Option<&str>, e: &ChatError) -> Self {
        ServerFrame::Error {
            id: id.map(str::to_owned),
            code: e.code,
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no custom errors.
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEvent {
    Joined,
    Left,
}

/// Limits the server enforces, announced in `connected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    /// Rooms one connection may be in at once; a `join` beyond it is refused (`bad_request`).
    pub max_rooms_per_connection: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub connection_id: ConnectionId,
    pub user: UserName,
    /// The user's read position in the room (0: nothing read yet); filled in by `members`.
    #[serde(default)]
    pub last_read: Seq,
}

/// A connection as `GET /@connections/{id}` and the `$default` reply describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    pub connection_id: ConnectionId,
    pub connected_at: String,
    pub identity: Identity,
    pub last_active_at: String,
}

impl ConnectionInfo {
    /// Describes a live connection; `last_active` is the shared last-frame clock (epoch ms).
    pub fn describe(
        id: &ConnectionId,
        identity: &Identity,
        connected_at: u64,
        last_active: &AtomicU64,
    ) -> Self {
        ConnectionInfo {
            connection_id: id.clone(),
            connected_at: rfc3339_ms(connected_at),
            identity: identity.clone(),
            last_active_at: rfc3339_ms(last_active.load(Ordering::Relaxed)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub source_ip: String,
    pub user_agent: String,
}

/// The AWS sample's `$default` reply text for compat clients, byte for byte:
/// `Use the sendmessage route to send a message. Your info:{"ConnectedAt":...}`.
pub fn compat_default_reply(info: &ConnectionInfo) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct AwsIdentity<'a> {
        source_ip: &'a str,
        user_agent: &'a str,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct AwsInfo<'a> {
        connected_at: &'a str,
        identity: AwsIdentity<'a>,
        last_active_at: &'a str,
        #[serde(rename = "connectionID")]
        connection_id: &'a str,
    }
    let aws = AwsInfo {
        connected_at: &info.connected_at,
        identity: AwsIdentity {
            source_ip: &info.identity.source_ip,
            user_agent: &info.identity.user_agent,
        },
        last_active_at: &info.last_active_at,
        connection_id: info.connection_id.as_str(),
    };
    format!(
        "{DEFAULT_ROUTE_HINT} Your info:{}",
        serde_json::to_string(&aws).expect("plain strings serialize")
    )
}

/// The first sentence of every `$default` reply, as in the original DefaultHandler.
pub const DEFAULT_ROUTE_HINT: &str = "Use the sendmessage route to send a message.";

impl From<ChatError> for ServerFrame {
    fn from(e: ChatError) -> Self {
        ServerFrame::error(None, &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<ClientFrame<'_>, ChatError> {
        ClientFrame::decode(text, Mode::V1).map_err(ChatError::from)
    }

    #[test]
    fn sendmessage_borrows_and_accepts_both_keys() {
        let f = decode(r#"{"action":"sendmessage","data":"hi"}"#).unwrap();
        assert!(matches!(
            &f,
            ClientFrame::SendMessage {
                data: Cow::Borrowed("hi"),
                room: None,
                id: None
            }
        ));
        let f = decode(r#"{"action":"sendmessage","message":"yo \"q\""}"#).unwrap();
        assert!(matches!(&f, ClientFrame::SendMessage { data, .. } if data == "yo \"q\""));
        let f = decode(r#"{"action":"sendmessage","room":"r1","data":"x","id":"c-1"}"#).unwrap();
        assert_eq!(f.request_id(), Some("c-1"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = decode(r#"{"action":"sendmessage","data":5}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("`data` must be a string"), "{e}");
        let e = decode(r#"{"action":"join","room":"r","after":-1}"#).unwrap_err();
        assert!(e.message.contains("`after`"), "{e}");
        let e = decode(r#"{"action":"join"}"#).unwrap_err();
        assert!(e.message.contains("missing `room`"), "{e}");
        let e = decode(r#"{"action":"join","room":"no spaces"}"#).unwrap_err();
        assert!(e.message.contains("invalid room name"), "{e}");
        let e = decode(r#"{"action":7}"#).unwrap_err();
        assert!(e.message.contains("`action`"), "{e}");
        let e = decode(r#"{"data":"x"}"#).unwrap_err();
        assert!(e.message.contains("missing `action`"), "{e}");
        let e = decode(r#"{"action":"sendmessage"}"#).unwrap_err();
        assert!(e.message.contains("needs a `data` string"), "{e}");
        let e = decode(r#"{"action":"history","room":"r","before":3,"after":1}"#).unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
        let e = decode(r#"{"action":"history","room":"r","limit":0}"#).unwrap_err();
        assert!(e.message.contains("limit"), "{e}");
    }

    #[test]
    fn not_json_is_told_apart_from_invalid() {
        let v1 = |text| ClientFrame::decode(text, Mode::V1);
        assert!(matches!(v1("hello"), Err(DecodeError::NotJson(_))));
        assert!(matches!(v1("[1,2]"), Err(DecodeError::NotJson(_))));
        assert!(
            matches!(
                v1(r#"["sendmessage",null,"hi",null,null,null,null,null]"#),
                Err(DecodeError::NotJson(_))
            ),
            "serde would take an array for the struct; frames must be objects"
        );
        assert!(matches!(
            v1(r#"{"action":1}"#),
            Err(DecodeError::Invalid { .. })
        ));
        let e = v1(r#"{"action":"sendmessage","room":"r","data":5,"id":"c7"}"#).unwrap_err();
        assert!(
            matches!(e, DecodeError::Invalid { id: Some(ref id), .. } if id == "c7"),
            "{e:?}"
        );
    }

    #[test]
    fn compat_mode_routes_only_sendmessage() {
        let compat = |text| ClientFrame::decode(text, Mode::Compat);
        for text in [
            r#"{"data":"x"}"#,
            r#"{"action":"join"}"#,
            r#"{"action":"join","room":"bad room"}"#,
            r#"{"action":7}"#,
        ] {
            assert!(
                matches!(compat(text), Ok(ClientFrame::Default { .. })),
                "{text}"
            );
        }
        let ok = compat(r#"{"action":"sendmessage","data":"hi"}"#);
        assert!(matches!(ok, Ok(ClientFrame::SendMessage { .. })));
        let bad = compat(r#"{"action":"sendmessage","data":1}"#);
        assert!(matches!(bad, Err(DecodeError::Invalid { .. })));
    }

    #[test]
    fn unknown_actions_go_to_default() {
        let f = decode(r#"{"action":"whoami"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Default {
                action: Cow::Borrowed("whoami")
            }
        );
    }

    #[test]
    fn server_frames_round_trip() {
        let msg = Arc::new(ChatMessage::new(
            RoomId::parse("r").unwrap(),
            Seq(3),
            "c1".into(),
            UserName::parse("ann").unwrap(),
            "hi".into(),
            5,
        ));
        let json = ServerFrame::Message(msg.clone()).to_json();
        assert_eq!(
            json,
            r#"{"type":"message","room":"r","seq":3,"id":"c1","user":"ann","data":"hi","ts":5}"#
        );
        let back: ServerFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ServerFrame::Message(msg));
        let err = ServerFrame::error(Some("c1"), &ChatError::too_large("x").with_retry_after(7))
            .to_json();
        assert_eq!(
            err,
            r#"{"type":"error","id":"c1","code":"too_large","message":"x","retryAfterMs":7}"#
        );
    }

    #[test]
    fn compat_default_reply_matches_the_aws_sample() {
        let info = ConnectionInfo {
            connection_id: ConnectionId::parse("abc").unwrap(),
            connected_at: "t0".into(),
            identity: Identity {
                source_ip: "127.0.0.1".into(),
                user_agent: "wscat".into(),
            },
            last_active_at: "t1".into(),
        };
        assert_eq!(
            compat_default_reply(&info),
            r#"Use the sendmessage route to send a message. Your info:{"ConnectedAt":"t0","Identity":{"SourceIp":"127.0.0.1","UserAgent":"wscat"},"LastActiveAt":"t1","connectionID":"abc"}"#
        );
    }
}

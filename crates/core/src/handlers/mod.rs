//! The routes, one file each, and [`dispatch`], which decodes a text frame and picks the route by
//! its `action`, as API Gateway does with `$request.body.action`.
//!
//! Handlers write replies through an [`Outbox`] and return a [`HandlerError`]: a [`ChatError`]
//! becomes an `error` frame and the connection goes on; [`Disconnected`] ends it.

pub mod connect;
pub mod default;
pub mod delete;
pub mod disconnect;
pub mod edit;
pub mod history;
pub mod join;
pub mod leave;
pub mod members;
pub mod react;
pub mod read;
pub mod sendmessage;
pub mod typing;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{ChatError, ErrorCode};
use crate::ports::{
    Appended, ConnectionRecord, ConnectionStore, Disconnected, MessageLog, Outbox, QueuedAppend,
    RoomMembership, StoreError,
};
use crate::protocol::{
    ClientFrame, ConnectionInfo, DecodeError, Identity, Limits, Mode, ServerFrame,
};
use crate::types::{ConnectionId, RoomId, Seq, UserName, now_ms};

/// The ports and settings every handler uses; one per server, shared by all connections.
#[derive(Clone)]
pub struct Services {
    pub log: Arc<dyn MessageLog>,
    pub connections: Arc<dyn ConnectionStore>,
    pub rooms: Arc<dyn RoomMembership>,
    pub limits: Limits,
    /// Who had a `typing` forwarded when (one per user and room per 2 s).
    pub typing: Arc<typing::TypingGate>,
    /// The product's backend's check before a join (`--join-hook-url`); `None`: every join
    /// the token allows goes through.
    pub join_gate: Option<Arc<dyn crate::ports::JoinGate>>,
}

/// One connection's state, owned by its task.
#[derive(Debug)]
pub struct Session {
    pub id: ConnectionId,
    pub user: UserName,
    pub mode: Mode,
    pub identity: Identity,
    pub connected_at: u64,
    /// Shared with whoever answers `GET /@connections/{id}`.
    pub last_active: Arc<AtomicU64>,
    /// Joined rooms with the last seq delivered in each, which filters live messages that a
    /// replay already sent. A connection is in few rooms, so a Vec beats a map here.
    rooms: Vec<(RoomId, Seq)>,
    /// The only rooms this connection may join, post to and read (a token's `rooms` claim);
    /// `None`: any room.
    allowed_rooms: Option<Vec<RoomId>>,
}

impl Session {
    pub fn new(id: ConnectionId, user: UserName, mode: Mode, identity: Identity) -> Self {
        let now = now_ms();
        Session {
            id,
            user,
            mode,
            identity,
            connected_at: now,
            last_active: Arc::new(AtomicU64::new(now)),
            rooms: Vec::new(),
            allowed_rooms: None,
        }
    }

    /// A session rebuilt from its stored row and rooms, for a shape with no task per
    /// connection (AWS: every frame is a new invocation). Nothing was delivered here yet, so
    /// the rooms start at `Seq::ZERO`; such a shape posts from the commit and never filters
    /// live messages.
    pub fn restore(record: ConnectionRecord, rooms: Vec<RoomId>) -> Self {
        Session {
            id: record.id,
            user: record.user,
            mode: record.mode,
            identity: Identity {
                source_ip: record.source_ip,
                user_agent: record.user_agent,
            },
            connected_at: record.connected_at,
            last_active: Arc::new(AtomicU64::new(now_ms())),
            rooms: rooms.into_iter().map(|room| (room, Seq::ZERO)).collect(),
            allowed_rooms: None,
        }
    }

    pub fn record(&self) -> ConnectionRecord {
        ConnectionRecord {
            id: self.id.clone(),
            user: self.user.clone(),
            mode: self.mode,
            source_ip: self.identity.source_ip.clone(),
            user_agent: self.identity.user_agent.clone(),
            connected_at: self.connected_at,
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

    pub fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }

    pub fn rooms(&self) -> impl Iterator<Item = &RoomId> {
        self.rooms.iter().map(|(r, _)| r)
    }

    pub fn is_member(&self, room: &RoomId) -> bool {
        self.rooms.iter().any(|(r, _)| r == room)
    }

    /// Decides whether a live message should be written: only in a joined room and only past what
    /// was already delivered there (a replay may have sent it).
    pub fn accept_live(&mut self, room: &RoomId, seq: Seq) -> bool {
        self.accept_live_run(room, seq).is_some()
    }

    /// [`accept_live`](Self::accept_live) for a run of live messages of `room` in seq order,
    /// the last of which is `last`: the seq past which the run is new to this connection, or
    /// `None` when none of it is (or the room is not joined). `last` is then delivered.
    pub fn accept_live_run(&mut self, room: &RoomId, last: Seq) -> Option<Seq> {
        match self.rooms.iter_mut().find(|(r, _)| r == room) {
            Some((_, delivered)) if last > *delivered => Some(std::mem::replace(delivered, last)),
            _ => None,
        }
    }

    fn set_delivered(&mut self, room: &RoomId, seq: Seq) {
        match self.rooms.iter_mut().find(|(r, _)| r == room) {
            Some((_, last)) => *last = seq,
            None => self.rooms.push((room.clone(), seq)),
        }
    }

    fn delivered(&self, room: &RoomId) -> Option<Seq> {
        self.rooms.iter().find(|(r, _)| r == room).map(|(_, s)| *s)
    }

    /// Limits the rooms this connection may join, post to and read (and list the members of).
    pub fn restrict_rooms(&mut self, rooms: Vec<RoomId>) {
        self.allowed_rooms = Some(rooms);
    }

    /// Whether the connection may use `room` (see [`Session::restrict_rooms`]).
    pub fn may_use(&self, room: &RoomId) -> bool {
        self.allowed_rooms
            .as_ref()
            .is_none_or(|allowed| allowed.contains(room))
    }

    /// `forbidden` for a frame naming a room the connection may not use; checked before any
    /// route, so no handler can forget it.
    fn authorize(&self, frame: &ClientFrame<'_>) -> Result<(), ChatError> {
        let Some(allowed) = &self.allowed_rooms else {
            return Ok(());
        };
        let room = match (self.mode, frame) {
            (Mode::Compat, ClientFrame::SendMessage { .. }) => RoomId::default_room(),
            // Leaving a room is always allowed; everything else that names one is checked.
            (Mode::V1, ClientFrame::Leave { .. }) => return Ok(()),
            (Mode::V1, frame) => match frame.room() {
                Some(room) => room.clone(),
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        if allowed.contains(&room) {
            return Ok(());
        }
        let list = match allowed.len() {
            0 => "no room".to_owned(),
            _ => allowed
                .iter()
                .map(RoomId::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        };
        Err(ChatError::new(
            ErrorCode::Forbidden,
            format!("room {room} is not allowed for this connection (its token allows: {list})"),
        ))
    }

    fn remove_room(&mut self, room: &RoomId) -> bool {
        let before = self.rooms.len();
        self.rooms.retain(|(r, _)| r != room);
        self.rooms.len() != before
    }
}

/// `not_joined` for an action in a room the connection is not in.
pub(crate) fn not_joined(room: &RoomId, to: &str) -> ChatError {
    ChatError::new(
        ErrorCode::NotJoined,
        format!("join room {room} before {to}: {{\"action\":\"join\",\"room\":\"{room}\"}}"),
    )
}

/// How a handler failed.
#[derive(Debug)]
pub enum HandlerError {
    /// Tell the client (an `error` frame) and carry on.
    Chat(ChatError),
    /// The socket is gone.
    Disconnected,
}

impl From<ChatError> for HandlerError {
    fn from(e: ChatError) -> Self {
        HandlerError::Chat(e)
    }
}

impl From<crate::error::StoreError> for HandlerError {
    fn from(e: crate::error::StoreError) -> Self {
        HandlerError::Chat(e.into())
    }
}

impl From<Disconnected> for HandlerError {
    fn from(_: Disconnected) -> Self {
        HandlerError::Disconnected
    }
}

/// Routes one text frame from a client and writes every reply to `out`.
pub async fn dispatch(
    session: &mut Session,
    services: &Services,
    text: &str,
    out: &mut dyn Outbox,
) -> Result<(), Disconnected> {
    session.touch();
    let decoded = ClientFrame::decode(text, session.mode);
    route(session, services, decoded, out).await
}

async fn route(
    session: &mut Session,
    services: &Services,
    decoded: Result<ClientFrame<'_>, DecodeError>,
    out: &mut dyn Outbox,
) -> Result<(), Disconnected> {
    let frame = match decoded {
        Ok(frame) => frame,
        // API Gateway sends frames it cannot route to $default; compat clients expect that.
        Err(DecodeError::NotJson(_)) if session.mode == Mode::Compat => {
            return finish(default::handle(session, out).await, None, out).await;
        }
        Err(DecodeError::Invalid { error, id }) => {
            return send_error(out, id.as_deref(), &error).await;
        }
        Err(e) => return send_error(out, None, &e.into()).await,
    };
    let request_id = frame.request_id().map(str::to_owned);
    if let Err(e) = session.authorize(&frame) {
        return send_error(out, request_id.as_deref(), &e).await;
    }
    let result = match (session.mode, frame) {
        (_, ClientFrame::SendMessage { room, data, id }) => {
            sendmessage::handle(session, services, out, room, data, id).await
        }
        (Mode::V1, ClientFrame::Join { room, after }) => {
            join::handle(session, services, out, room, after).await
        }
        (Mode::V1, ClientFrame::Leave { room }) => {
            leave::handle(session, services, out, room).await
        }
        (Mode::V1, ClientFrame::History { room, query }) => {
            history::handle(services, out, room, query).await
        }
        (Mode::V1, ClientFrame::Members { room }) => members::handle(services, out, room).await,
        (
            Mode::V1,
            ClientFrame::Edit {
                room,
                seq,
                data,
                id,
            },
        ) => edit::handle(session, services, out, room, seq, data, id).await,
        (Mode::V1, ClientFrame::Delete { room, seq, id }) => {
            delete::handle(session, services, out, room, seq, id).await
        }
        (
            Mode::V1,
            ClientFrame::React {
                room,
                seq,
                emoji,
                on,
                id,
            },
        ) => react::handle(session, services, out, room, seq, emoji, on, id).await,
        (Mode::V1, ClientFrame::Read { room, seq }) => {
            read::handle(session, services, out, room, seq).await
        }
        (Mode::V1, ClientFrame::Typing { room }) => {
            typing::handle(session, services, out, room).await
        }
        // Everything else, and in compat mode everything but sendmessage (the decoder made it
        // Default already), is $default.
        _ => default::handle(session, out).await,
    };
    finish(result, request_id.as_deref(), out).await
}

/// A `sendmessage` whose append is queued and not committed yet (see [`dispatch_ahead`]).
pub struct PendingSend {
    commit: QueuedAppend,
    request_id: Option<String>,
    mode: Mode,
}

impl PendingSend {
    /// The commit to await; the oldest send's first.
    pub fn commit(&mut self) -> &mut QueuedAppend {
        &mut self.commit
    }

    /// Writes what the client is owed once the commit is known: its ack (v1), or an error.
    pub async fn finish(
        self,
        result: Result<Appended, StoreError>,
        out: &mut dyn Outbox,
    ) -> Result<(), Disconnected> {
        send_outcome(self.mode, self.request_id.as_deref(), result, out).await
    }
}

/// [`dispatch`] for a connection that reads ahead of its commits: a `sendmessage` is queued to
/// the log (when the log can queue it) and added to `in_flight` rather than awaited, so the
/// connection reads its next frame while the last ones are made durable, and a sender is not
/// held to one message per fsync. Anything else first waits for the sends in flight
/// ([`settle`]), so a client sees what it would if its frames were handled one at a time:
/// replies in order, and a `history` after a send includes it.
pub async fn dispatch_ahead(
    session: &mut Session,
    services: &Services,
    text: &str,
    out: &mut dyn Outbox,
    in_flight: &mut VecDeque<PendingSend>,
) -> Result<(), Disconnected> {
    session.touch();
    let decoded = ClientFrame::decode(text, session.mode);
    if let Ok(frame @ ClientFrame::SendMessage { .. }) = decoded {
        let request_id = frame.request_id().map(str::to_owned);
        let prepared = session.authorize(&frame).and_then(|()| {
            let ClientFrame::SendMessage { room, data, id } = frame else {
                unreachable!("matched as a sendmessage above")
            };
            sendmessage::prepare(session, room, data, id)
        });
        let message = match prepared {
            Ok(message) => message,
            Err(e) => {
                settle(in_flight, out).await?;
                return send_error(out, request_id.as_deref(), &e).await;
            }
        };
        let (mode, message) = match services.log.queue_append(message) {
            Ok(commit) => {
                in_flight.push_back(PendingSend {
                    commit,
                    request_id,
                    mode: session.mode,
                });
                return Ok(());
            }
            Err(message) => (session.mode, message),
        };
        // The log cannot queue it now: what is in flight first, then as `dispatch` does.
        settle(in_flight, out).await?;
        let result = services.log.append(message).await;
        return send_outcome(mode, request_id.as_deref(), result, out).await;
    }
    settle(in_flight, out).await?;
    route(session, services, decoded, out).await
}

/// What a client is owed for a send once its commit is known.
async fn send_outcome(
    mode: Mode,
    request_id: Option<&str>,
    result: Result<Appended, StoreError>,
    out: &mut dyn Outbox,
) -> Result<(), Disconnected> {
    match result {
        Ok(appended) => match sendmessage::ack(mode, &appended) {
            Some(ack) => out.send_text(ack).await,
            None => Ok(()),
        },
        Err(e) => send_error(out, request_id, &e.into()).await,
    }
}

/// Waits for every send in flight, oldest first, and writes what each client is owed.
pub async fn settle(
    in_flight: &mut VecDeque<PendingSend>,
    out: &mut dyn Outbox,
) -> Result<(), Disconnected> {
    while let Some(mut pending) = in_flight.pop_front() {
        let result = pending.commit.as_mut().await;
        pending.finish(result, out).await?;
    }
    Ok(())
}

async fn finish(
    result: Result<(), HandlerError>,
    request_id: Option<&str>,
    out: &mut dyn Outbox,
) -> Result<(), Disconnected> {
    match result {
        Ok(()) => Ok(()),
        Err(HandlerError::Chat(e)) => send_error(out, request_id, &e).await,
        Err(HandlerError::Disconnected) => Err(Disconnected),
    }
}

/// Writes an `error` frame. Compat clients get the same JSON: they have no other way to learn
/// what went wrong, and the text makes sense to a person reading wscat.
pub async fn send_error(
    out: &mut dyn Outbox,
    id: Option<&str>,
    e: &ChatError,
) -> Result<(), Disconnected> {
    count_rejected(e.code);
    out.send_text(ServerFrame::error(id, e).to_json()).await
}

/// `dynamowave_messages_rejected_total{reason}`: every `error` frame, by its code. One handle
/// per code, registered on first use (after the server installed its recorder), so a flood of
/// bad frames costs an atomic add each, not a registry lookup.
fn count_rejected(code: ErrorCode) {
    const SLOTS: usize = 16;
    static REJECTED: [OnceLock<metrics::Counter>; SLOTS] = [const { OnceLock::new() }; SLOTS];
    let register =
        || metrics::counter!("dynamowave_messages_rejected_total", "reason" => code.as_str());
    match REJECTED.get(code as usize) {
        Some(slot) => slot.get_or_init(register).increment(1),
        None => register().increment(1),
    }
}

#[cfg(test)]
mod tests;

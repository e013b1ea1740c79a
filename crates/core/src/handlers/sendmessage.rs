//! `sendmessage`: append to the room's log, ack after the durable commit. Delivery to the room's
//! members happens through the log's commit listener (the fan-out), not here, so every path
//! that appends (sockets, the management API, a cluster peer) delivers the same way.

use std::borrow::Cow;

use super::{HandlerError, Services, Session, not_joined};
use crate::error::ChatError;
use crate::ports::{Appended, NewEvent, NewMessage, Outbox};
use crate::protocol::{Mode, ServerFrame};
use crate::types::{RoomId, random_token};

pub async fn handle(
    session: &mut Session,
    services: &Services,
    out: &mut dyn Outbox,
    room: Option<RoomId>,
    data: Cow<'_, str>,
    id: Option<Cow<'_, str>>,
) -> Result<(), HandlerError> {
    let message = prepare(session, room, data, id)?;
    let appended = services.log.append(message).await?;
    if let Some(ack) = ack(session.mode, &appended) {
        out.send_text(ack).await?;
    }
    Ok(())
}

/// The message to append, once the frame is known to be a valid send from a member.
pub(crate) fn prepare(
    session: &Session,
    room: Option<RoomId>,
    data: Cow<'_, str>,
    id: Option<Cow<'_, str>>,
) -> Result<NewMessage, ChatError> {
    let room = match (session.mode, room) {
        (Mode::Compat, _) => RoomId::default_room(),
        (Mode::V1, Some(room)) => room,
        (Mode::V1, None) => {
            return Err(ChatError::bad_request(
                "missing `room`: send {\"action\":\"sendmessage\",\"room\":\"general\",\"data\":\"hi\",\"id\":\"<unique>\"}",
            ));
        }
    };
    if !session.is_member(&room) {
        return Err(not_joined(&room, "sending to it"));
    }
    Ok(NewMessage::message(
        room,
        id.map(Cow::into_owned).unwrap_or_else(|| random_token(16)),
        session.user.clone(),
        data.into_owned(),
    ))
}

/// Appends an edit, deletion or reaction (`entry` as [`prepare`] made it) and acks it as a
/// send: the log checks the message it names and refuses with what to fix.
pub(crate) async fn append_event(
    session: &Session,
    services: &Services,
    out: &mut dyn Outbox,
    mut entry: NewMessage,
    event: NewEvent,
) -> Result<(), HandlerError> {
    entry.event = Some(event);
    let appended = services.log.append(entry).await?;
    if let Some(ack) = ack(session.mode, &appended) {
        out.send_text(ack).await?;
    }
    Ok(())
}

/// The `ack` frame v1 clients get after the commit; compat clients get none.
pub(crate) fn ack(mode: Mode, appended: &Appended) -> Option<String> {
    if mode != Mode::V1 {
        return None;
    }
    let m = &appended.message;
    let ack = ServerFrame::Ack {
        id: m.id.clone(),
        room: m.room.clone(),
        seq: m.seq,
        ts: m.ts,
        duplicate: appended.duplicate,
    };
    Some(ack.to_json())
}

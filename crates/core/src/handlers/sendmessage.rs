//! `sendmessage`: append to the room's log, ack after the durable commit. Delivery to the room's
//! members happens through the log's commit listener (the fan-out), not here, so every path
//! that appends (sockets, the management API, a cluster peer) delivers the same way.

use std::borrow::Cow;

use super::{HandlerError, Services, Session};
use crate::error::{ChatError, ErrorCode};
use crate::ports::{NewMessage, Outbox};
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
    let room = match (session.mode, room) {
        (Mode::Compat, _) => RoomId::default_room(),
        (Mode::V1, Some(room)) => room,
        (Mode::V1, None) => {
            return Err(ChatError::bad_request(
                "missing `room`: send {\"action\":\"sendmessage\",\"room\":\"general\",\"data\":\"hi\",\"id\":\"<unique>\"}",
            )
            .into());
        }
    };
    if !session.is_member(&room) {
        return Err(ChatError::new(
            ErrorCode::NotJoined,
            format!(
                "join room {room} before sending to it: {{\"action\":\"join\",\"room\":\"{room}\"}}"
            ),
        )
        .into());
    }
    let appended = services
        .log
        .append(NewMessage {
            room,
            id: id.map(Cow::into_owned).unwrap_or_else(|| random_token(16)),
            user: session.user.clone(),
            data: data.into_owned(),
        })
        .await?;
    if session.mode == Mode::V1 {
        let m = &appended.message;
        let ack = ServerFrame::Ack {
            id: m.id.clone(),
            room: m.room.clone(),
            seq: m.seq,
            ts: m.ts,
            duplicate: appended.duplicate,
        };
        out.send_text(ack.to_json()).await?;
    }
    Ok(())
}

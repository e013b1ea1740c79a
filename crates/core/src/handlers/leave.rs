//! `leave {room}`: stop delivery from a room and tell its other members.

use super::{HandlerError, Services, Session};
use crate::error::{ChatError, ErrorCode};
use crate::ports::Outbox;
use crate::protocol::{PresenceEvent, ServerFrame};
use crate::types::RoomId;

pub async fn handle(
    session: &mut Session,
    services: &Services,
    out: &mut dyn Outbox,
    room: RoomId,
) -> Result<(), HandlerError> {
    if !session.is_member(&room) {
        let e = ChatError::new(ErrorCode::NotJoined, format!("you are not in room {room}"));
        return Err(e.into());
    }
    // The store first: if it fails, nothing changed and the client can retry the leave.
    services
        .connections
        .remove_membership(&session.id, &room)
        .await?;
    session.remove_room(&room);
    services.rooms.leave(&session.id, &room);
    services
        .rooms
        .presence(&room, PresenceEvent::Left, &session.user, &session.id);
    out.send_text(ServerFrame::Left { room }.to_json()).await?;
    Ok(())
}

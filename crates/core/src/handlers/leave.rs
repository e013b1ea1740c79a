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
    if !session.remove_room(&room) {
        return Err(
            ChatError::new(ErrorCode::NotJoined, format!("you are not in room {room}")).into(),
        );
    }
    services.rooms.leave(&session.id, &room);
    services
        .rooms
        .presence(&room, PresenceEvent::Left, &session.user, &session.id);
    services
        .connections
        .remove_membership(&session.id, &room)
        .await?;
    out.send_text(ServerFrame::Left { room }.to_json()).await?;
    Ok(())
}

//! `read {room, seq}`: the user has read the room through `seq`. The position is stored per
//! user and room (one for all the user's connections) and only moves forward; when it moves,
//! every v1 member of the room (the sender included, so the user's other devices follow) gets
//! `read`. A position that does not move is answered to the sender alone, with where it is.

use super::{HandlerError, Services, Session, not_joined};
use crate::ports::Outbox;
use crate::protocol::ServerFrame;
use crate::types::{RoomId, Seq};

pub async fn handle(
    session: &mut Session,
    services: &Services,
    out: &mut dyn Outbox,
    room: RoomId,
    seq: Seq,
) -> Result<(), HandlerError> {
    if !session.is_member(&room) {
        return Err(not_joined(&room, "marking it read").into());
    }
    let mark = services.log.mark_read(&room, &session.user, seq).await?;
    let frame = ServerFrame::Read {
        room: room.clone(),
        user: session.user.clone(),
        seq: mark.seq,
    }
    .to_json();
    if mark.moved {
        services.rooms.signal(&room, &frame, None);
    } else {
        out.send_text(frame).await?;
    }
    Ok(())
}

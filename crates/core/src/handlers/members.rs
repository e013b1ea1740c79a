//! `members {room}`: who is connected to a room right now.

use super::history::unknown_room;
use super::{HandlerError, Services};
use crate::ports::Outbox;
use crate::protocol::ServerFrame;
use crate::types::RoomId;

pub async fn handle(
    services: &Services,
    out: &mut dyn Outbox,
    room: RoomId,
) -> Result<(), HandlerError> {
    if services.log.head(&room).await?.is_none() {
        return Err(unknown_room(&room).into());
    }
    let mut members = services.rooms.members(&room).await?;
    let positions = services.log.read_positions(&room).await?;
    if !positions.is_empty() {
        for m in &mut members {
            if let Some((_, seq)) = positions.iter().find(|(u, _)| *u == m.user) {
                m.last_read = *seq;
            }
        }
    }
    out.send_text(ServerFrame::Members { room, members }.to_json())
        .await?;
    Ok(())
}

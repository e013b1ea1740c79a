//! `history {room, before?|after?, limit?}`: a page of the room's log.

use super::{HandlerError, Services};
use crate::error::ChatError;
use crate::ports::Outbox;
use crate::protocol::{HistoryQuery, ServerFrame};
use crate::types::RoomId;

pub async fn handle(
    services: &Services,
    out: &mut dyn Outbox,
    room: RoomId,
    query: HistoryQuery,
) -> Result<(), HandlerError> {
    if services.log.head(&room).await?.is_none() {
        return Err(unknown_room(&room).into());
    }
    let page = services.log.read(&room, query).await?;
    let frame = ServerFrame::History {
        room,
        messages: page.messages,
        more: page.more,
    };
    out.send_text(frame.to_json()).await?;
    Ok(())
}

pub(crate) fn unknown_room(room: &RoomId) -> ChatError {
    ChatError::not_found(format!(
        "room {room} does not exist: create it with {{\"action\":\"join\",\"room\":\"{room}\"}}"
    ))
}

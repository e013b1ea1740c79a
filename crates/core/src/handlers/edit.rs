//! `edit {room, seq, data, id?}`: the author replaces a message's text. The edit is an entry of
//! the room's log (its own seq, acked and deduplicated like a send); members get `edited`.

use std::borrow::Cow;

use super::{HandlerError, Services, Session, sendmessage};
use crate::ports::{NewEvent, Outbox};
use crate::types::{RoomId, Seq};

pub async fn handle(
    session: &mut Session,
    services: &Services,
    out: &mut dyn Outbox,
    room: RoomId,
    seq: Seq,
    data: Cow<'_, str>,
    id: Option<Cow<'_, str>>,
) -> Result<(), HandlerError> {
    let entry = sendmessage::prepare(session, Some(room), data, id)?;
    let event = NewEvent::Edit { target: seq };
    sendmessage::append_event(session, services, out, entry, event).await
}

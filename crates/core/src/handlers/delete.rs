//! `delete {room, seq, id?}`: the author deletes a message. The message becomes a tombstone (as
//! `DELETE /rooms/{room}/messages/{seq}` makes it) and the deletion is an entry of the room's
//! log, acked like a send; members get `deleted`, and a `join {after}` replays it.

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
    id: Option<Cow<'_, str>>,
) -> Result<(), HandlerError> {
    let entry = sendmessage::prepare(session, Some(room), Cow::Borrowed(""), id)?;
    let event = NewEvent::Delete { target: seq };
    sendmessage::append_event(session, services, out, entry, event).await
}

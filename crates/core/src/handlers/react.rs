//! `react {room, seq, emoji, on, id?}`: set or take back one reaction (one per user and emoji).
//! The reaction is an entry of the room's log, acked like a send; members get `reaction` with
//! the message's counts just after it, and history shows each message's current counts.

use std::borrow::Cow;

use super::{HandlerError, Services, Session, sendmessage};
use crate::ports::{NewEvent, Outbox};
use crate::types::{RoomId, Seq};

#[allow(clippy::too_many_arguments)] // reason: one argument per field of the frame
pub async fn handle(
    session: &mut Session,
    services: &Services,
    out: &mut dyn Outbox,
    room: RoomId,
    seq: Seq,
    emoji: Cow<'_, str>,
    on: bool,
    id: Option<Cow<'_, str>>,
) -> Result<(), HandlerError> {
    let entry = sendmessage::prepare(session, Some(room), Cow::Borrowed(""), id)?;
    let event = NewEvent::React {
        target: seq,
        emoji: emoji.into_owned(),
        on,
    };
    sendmessage::append_event(session, services, out, entry, event).await
}

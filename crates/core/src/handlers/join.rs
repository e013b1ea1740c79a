//! `join {room, after?}`: enter a room (creating it), and with `after` replay what was missed.
//!
//! No gap, no duplicate: the connection is registered with the fan-out *before* the log's head
//! is read. Every message committed before the head read is in the log (so the replay has it);
//! every message published after the registration is queued live; the overlap is dropped by
//! [`Session::accept_live`], which only passes seqs past what was delivered.

use super::{HandlerError, Services, Session};
use crate::error::{ChatError, StoreError};
use crate::ports::{GateEvent, GateRequest, Outbox};
use crate::protocol::{MAX_HISTORY_LIMIT, PresenceEvent, ServerFrame};
use crate::types::{RoomId, Seq};

pub async fn handle(
    session: &mut Session,
    services: &Services,
    out: &mut dyn Outbox,
    room: RoomId,
    after: Option<Seq>,
) -> Result<(), HandlerError> {
    let already_member = session.is_member(&room);
    let max_rooms = services.limits.max_rooms_per_connection;
    if !already_member && session.rooms.len() >= max_rooms {
        metrics::counter!("dynamowave_rate_limited_total", "scope" => "rooms").increment(1);
        return Err(ChatError::bad_request(format!(
            "too many rooms: a connection may be in at most {max_rooms} rooms at once \
             (max-rooms-per-connection); leave one before joining {room}"
        ))
        .into());
    }
    if !already_member && let Some(gate) = &services.join_gate {
        gate.check(GateRequest {
            event: GateEvent::Join,
            room: Some(&room),
            user: &session.user,
            connection: &session.id,
            source_ip: &session.identity.source_ip,
        })
        .await?;
    }
    let head = enter(session, services, &room).await?;
    let last_read = last_read(services, &room, &session.user).await?;
    out.send_text(
        ServerFrame::Joined {
            room: room.clone(),
            seq: head,
            last_read,
        }
        .to_json(),
    )
    .await?;
    if let Some(after) = after {
        let through = replay(session, services, out, &room, after, head).await?;
        // The replay covered everything up to `through`; live frames up to it are duplicates.
        session.set_delivered(&room, through);
    }
    if !already_member {
        services
            .rooms
            .presence(&room, PresenceEvent::Joined, &session.user, &session.id);
    }
    Ok(())
}

/// Makes the connection a member of `room` and returns the room's head at that moment. Without a
/// replay, delivery starts after the head (or where it was, for a connection already in).
pub(crate) async fn enter(
    session: &mut Session,
    services: &Services,
    room: &RoomId,
) -> Result<Seq, StoreError> {
    if services.log.head(room).await?.is_none() {
        services.log.create_room(room).await?;
    }
    services.rooms.join(&session.id, room);
    let head = match services.log.head(room).await {
        Ok(head) => head.unwrap_or(Seq::ZERO),
        Err(e) => {
            undo(session, services, room);
            return Err(e);
        }
    };
    if let Err(e) = services.connections.add_membership(&session.id, room).await {
        undo(session, services, room);
        return Err(e);
    }
    if session.delivered(room).is_none() {
        session.set_delivered(room, head);
    }
    Ok(head)
}

/// The user's read position in the room (`Seq::ZERO` when nothing is read yet).
async fn last_read(
    services: &Services,
    room: &RoomId,
    user: &crate::types::UserName,
) -> Result<Seq, StoreError> {
    let positions = services.log.read_positions(room).await?;
    Ok(positions
        .into_iter()
        .find(|(u, _)| u == user)
        .map_or(Seq::ZERO, |(_, seq)| seq))
}

fn undo(session: &Session, services: &Services, room: &RoomId) {
    if !session.is_member(room) {
        services.rooms.leave(&session.id, room);
    }
}

/// Replayed messages between two looks at the connection's live queue.
const PACE_EVERY: usize = 64;

/// Sends the entries `after+1 ..= head` (messages and edits, deletions, reactions) in pages, and past `head` as far as the live messages
/// the connection's writer dropped meanwhile ([`Outbox::pace_replay`]); returns the last seq
/// sent through.
async fn replay(
    session: &mut Session,
    services: &Services,
    out: &mut dyn Outbox,
    room: &RoomId,
    after: Seq,
    head: Seq,
) -> Result<Seq, HandlerError> {
    let mut cursor = after;
    let mut through = head;
    while cursor < through {
        let page = services
            .log
            .read_entries(room, cursor, MAX_HISTORY_LIMIT)
            .await?;
        let target = through;
        let mut past_target = false;
        for (i, m) in page.messages.into_iter().enumerate() {
            if m.seq > target {
                past_target = true;
                break;
            }
            cursor = m.seq;
            out.send_text(ServerFrame::entry(&m).to_json()).await?;
            if i % PACE_EVERY == PACE_EVERY - 1
                && let Some(dropped) = out.pace_replay(session, room).await?
            {
                through = through.max(dropped);
            }
        }
        if past_target || !page.more {
            // Everything through `target` is sent (what is missing was deleted).
            cursor = cursor.max(target);
        }
        if let Some(dropped) = out.pace_replay(session, room).await? {
            through = through.max(dropped);
        }
    }
    Ok(through)
}

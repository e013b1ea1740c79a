//! `typing {room}`: the room's other v1 members get `typing {room, user}`. Not stored; at most
//! one per user and room is forwarded every [`TYPING_INTERVAL`] (the rest are dropped without a
//! reply: a client sends one per keystroke burst), and clients show it for 5 s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{HandlerError, Services, Session, not_joined};
use crate::ports::Outbox;
use crate::protocol::ServerFrame;
use crate::types::{RoomId, UserName};

/// At most one `typing` per user and room is forwarded in this time.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(2);
/// Entries older than this are swept when the gate grows.
const SWEEP_AT: usize = 4096;

/// When each user last had a `typing` forwarded in each room: shared by all connections of
/// the server, so a user's several connections count together.
#[derive(Default)]
pub struct TypingGate {
    last: Mutex<HashMap<(RoomId, UserName), Instant>>,
}

impl TypingGate {
    /// Whether a `typing` from `user` in `room` may be forwarded now (and, if so, records it).
    pub fn admit(&self, room: &RoomId, user: &UserName, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() >= SWEEP_AT {
            last.retain(|_, at| now.duration_since(*at) < TYPING_INTERVAL);
        }
        match last.get_mut(&(room.clone(), user.clone())) {
            Some(at) if now.duration_since(*at) < TYPING_INTERVAL => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                last.insert((room.clone(), user.clone()), now);
                true
            }
        }
    }
}

pub async fn handle(
    session: &mut Session,
    services: &Services,
    _out: &mut dyn Outbox,
    room: RoomId,
) -> Result<(), HandlerError> {
    if !session.is_member(&room) {
        return Err(not_joined(&room, "typing in it").into());
    }
    if services.typing.admit(&room, &session.user, Instant::now()) {
        let frame = ServerFrame::Typing {
            room: room.clone(),
            user: session.user.clone(),
        }
        .to_json();
        services.rooms.signal(&room, &frame, Some(&session.id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_user_and_room_per_interval() {
        let gate = TypingGate::default();
        let (a, b) = (RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap());
        let ann = UserName::parse("ann").unwrap();
        let bob = UserName::parse("bob").unwrap();
        let t0 = Instant::now();
        assert!(gate.admit(&a, &ann, t0));
        assert!(!gate.admit(&a, &ann, t0 + Duration::from_millis(1999)));
        assert!(gate.admit(&b, &ann, t0), "another room counts apart");
        assert!(gate.admit(&a, &bob, t0), "another user counts apart");
        assert!(gate.admit(&a, &ann, t0 + TYPING_INTERVAL));
    }
}

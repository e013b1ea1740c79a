//! `$connect`: record the connection, put compat connections in the default room, greet v1 ones.
//!
//! The caller (the gateway) has already authenticated the client and registered its outbound
//! queue with the fan-out, so a `join` here starts delivery at once.

use super::{HandlerError, Services, Session, join};
use crate::ports::Outbox;
use crate::protocol::{Mode, PresenceEvent, SUBPROTOCOL_V1, ServerFrame};
use crate::types::RoomId;

pub async fn handle(
    session: &mut Session,
    services: &Services,
    out: &mut dyn Outbox,
) -> Result<(), HandlerError> {
    services.connections.insert(&session.record()).await?;
    match session.mode {
        Mode::Compat => {
            // The original broadcast to every connection; here that is the default room.
            let room = RoomId::default_room();
            join::enter(session, services, &room).await?;
            services
                .rooms
                .presence(&room, PresenceEvent::Joined, &session.user, &session.id);
        }
        Mode::V1 => {
            let hello = ServerFrame::Connected {
                connection_id: session.id.clone(),
                user: session.user.clone(),
                protocol: SUBPROTOCOL_V1.to_owned(),
                default_room: RoomId::default_room(),
                limits: services.limits,
            };
            out.send_text(hello.to_json()).await?;
        }
    }
    Ok(())
}

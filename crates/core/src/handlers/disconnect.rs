//! `$disconnect`: leave every room (telling the others) and delete the connection's row.
//!
//! It runs however the connection ended, and never fails: a store error is returned for the
//! caller to log, and the row is purged at the next start anyway.

use super::{Services, Session};
use crate::error::StoreError;
use crate::protocol::PresenceEvent;

pub async fn handle(session: &mut Session, services: &Services) -> Result<(), StoreError> {
    for room in session.rooms() {
        services.rooms.leave(&session.id, room);
        services
            .rooms
            .presence(room, PresenceEvent::Left, &session.user, &session.id);
    }
    session.rooms.clear();
    services.connections.remove(&session.id).await
}

//! Subjects, KV keys and headers: every name this store writes to NATS, in one place.
//!
//! Room names may hold `.`, NATS's token separator, but never `=`: a room's token is its name
//! with `.` written as `=`, readable in `nats stream view` and still one token. Connection ids,
//! users and message ids may hold anything, so their tokens are base64url (no padding).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dynamowave_core::{RoomId, Seq};

/// Header: who sent a message.
pub const USER: &str = "Dw-User";
/// Header: the client's idempotency key.
pub const ID: &str = "Dw-Id";
/// Header: commit time, ms since the epoch.
pub const TS: &str = "Dw-Ts";
/// Header on a tombstone: when the message was deleted.
pub const DELETED_AT: &str = "Dw-Deleted-At";
/// Header on a tombstone: the room's head when it was written (a tombstone can be the newest
/// entry of a room, and the head must not move back).
pub const HEAD: &str = "Dw-Head";
/// Header on an edit, deletion or reaction entry: what it did, as base64url JSON
/// (`{"kind":"react","target":3,"emoji":"👍","on":true,"counts":{"👍":2}}`).
pub const EVENT: &str = "Dw-Event";
/// Header on a message rewritten by an edit: when.
pub const EDITED_AT: &str = "Dw-Edited-At";
/// Header on a message with reactions: who reacted with what, as base64url JSON
/// (`{"👍":["ann","bob"]}`), so the next reaction can be applied to it.
pub const REACTIONS: &str = "Dw-Reactions";
/// The node a signal comes from (its own hub has delivered it already).
pub const NODE: &str = "Dw-Node";
/// The connection a signal is not for (the typist).
pub const EXCEPT: &str = "Dw-Except";

pub fn room_token(room: &RoomId) -> String {
    room.as_str().replace('.', "=")
}

pub fn room_from_token(token: &str) -> Option<RoomId> {
    RoomId::parse(&token.replace('=', ".")).ok()
}

pub fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

pub fn from_b64(s: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()
}

/// The stream and subject names of one cluster (one `prefix`, default `DW`).
#[derive(Clone, Debug)]
pub struct Names {
    /// `DW`: streams `DW_MESSAGES`, buckets `DW_CONNECTIONS`, `DW_IDS`, `DW_READ`,
    /// `DW_DEADLETTERS`.
    pub prefix: String,
    /// `dw`: the subject root.
    pub root: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_ascii_uppercase(),
            root: prefix.to_ascii_lowercase(),
        }
    }

    pub fn messages_stream(&self) -> String {
        format!("{}_MESSAGES", self.prefix)
    }

    pub fn connections_bucket(&self) -> String {
        format!("{}_CONNECTIONS", self.prefix)
    }

    pub fn ids_bucket(&self) -> String {
        format!("{}_IDS", self.prefix)
    }

    pub fn read_bucket(&self) -> String {
        format!("{}_READ", self.prefix)
    }

    /// The webhook dispatcher's lease (which node delivers).
    pub fn webhooks_bucket(&self) -> String {
        format!("{}_WEBHOOKS", self.prefix)
    }

    pub fn dead_letters_bucket(&self) -> String {
        format!("{}_DEADLETTERS", self.prefix)
    }

    /// Every message and tombstone: `dw.msg.<room>.<seq>`.
    pub fn all_messages(&self) -> String {
        format!("{}.msg.>", self.root)
    }

    /// One room's entries, for "the newest entry of the room".
    pub fn room_messages(&self, room: &RoomId) -> String {
        format!("{}.msg.{}.*", self.root, room_token(room))
    }

    pub fn message(&self, room: &RoomId, seq: Seq) -> String {
        format!("{}.msg.{}.{}", self.root, room_token(room), seq.0)
    }

    /// Parses `dw.msg.<room>.<seq>`.
    pub fn parse_message(&self, subject: &str) -> Option<(RoomId, Seq)> {
        let rest = subject.strip_prefix(&self.root)?.strip_prefix(".msg.")?;
        let (room, seq) = rest.rsplit_once('.')?;
        Some((room_from_token(room)?, Seq(seq.parse().ok()?)))
    }

    /// Every webhook event waiting for delivery (in the messages stream, so that an entry's
    /// event is written in the entry's own atomic batch).
    pub fn all_hooks(&self) -> String {
        format!("{}.hook.>", self.root)
    }

    /// The webhook event of entry `seq` of a room: `dw.hook.<room>.<seq>`.
    pub fn entry_hook(&self, room: &RoomId, seq: Seq) -> String {
        format!("{}.hook.{}.{}", self.root, room_token(room), seq.0)
    }

    /// A connection's webhook event (connect, disconnect, join, leave), written by `node`:
    /// `dw.hook.c.<node>.<token>` (one more token than an entry's, so the two never meet).
    pub fn connection_hook(&self, node: &str, token: &str) -> String {
        format!("{}.hook.c.{node}.{token}", self.root)
    }

    /// The readiness probe's own subject in the messages stream (not delivered to anyone).
    pub fn probe(&self, node: &str) -> String {
        format!("{}.probe.{node}", self.root)
    }

    /// Unstored frames to a room's members on every node: `dw.signal.<room>`.
    pub fn signal(&self, room: &RoomId) -> String {
        format!("{}.signal.{}", self.root, room_token(room))
    }

    pub fn all_signals(&self) -> String {
        format!("{}.signal.*", self.root)
    }

    pub fn parse_signal(&self, subject: &str) -> Option<RoomId> {
        let token = subject.strip_prefix(&self.root)?.strip_prefix(".signal.")?;
        room_from_token(token)
    }

    /// Where a node answers for its connections (`@connections` from other nodes).
    pub fn node_inbox(&self, node: &str) -> String {
        format!("{}.node.{node}.connections", self.root)
    }
}

/// A user's read position in a room: the `DW_READ` key `<room>.<user>`.
pub fn read_key(room: &RoomId, user: &str) -> String {
    format!("{}.{}", room_token(room), b64(user))
}

/// Every read position of a room, as a subject filter of the `DW_READ` bucket's stream.
pub fn read_keys_subject(bucket: &str, room: &RoomId) -> String {
    format!("$KV.{bucket}.{}.*", room_token(room))
}

/// The idempotency key of `(room, user, id)`: the `Nats-Msg-Id` and the `DW_IDS` key.
pub fn idempotency_key(room: &RoomId, user: &str, id: &str) -> String {
    format!("{}.{}.{}", room_token(room), b64(user), b64(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let names = Names::new("DW");
        let room = RoomId::parse("ops.eu-1").unwrap();
        let subject = names.message(&room, Seq(42));
        assert_eq!(subject, "dw.msg.ops=eu-1.42");
        assert_eq!(names.parse_message(&subject), Some((room, Seq(42))));
        assert_eq!(names.parse_message("dw.probe.n1"), None);
        assert_eq!(from_b64(&b64("zoë.*>")).as_deref(), Some("zoë.*>"));
    }
}

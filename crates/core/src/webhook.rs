//! Events for the product's backend (`--webhook-url`): what each one says, as JSON, the same in
//! every store. A store writes them to its [`WebhookOutbox`](crate::ports::WebhookOutbox) in
//! the same commit as what they report, so none is lost and they keep the commit order (so
//! the order of each room); the server's dispatcher POSTs them in batches
//! (`{"events":[...]}`, docs/protocol.md "Webhooks").

use serde::Serialize;

use crate::ports::ConnectionRecord;
use crate::protocol::{ChatMessage, EntryEvent, ReactionCounts};
use crate::types::{ConnectionId, RoomId, Seq, UserName};

#[derive(Serialize)]
#[serde(
    tag = "event",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
enum Event<'a> {
    Connect {
        connection_id: &'a ConnectionId,
        user: &'a UserName,
        mode: &'static str,
        source_ip: &'a str,
        user_agent: &'a str,
        ts: u64,
    },
    Disconnect {
        connection_id: &'a ConnectionId,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a UserName>,
        ts: u64,
    },
    Join {
        room: &'a RoomId,
        connection_id: &'a ConnectionId,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a UserName>,
        ts: u64,
    },
    Leave {
        room: &'a RoomId,
        connection_id: &'a ConnectionId,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a UserName>,
        ts: u64,
    },
    Message {
        room: &'a RoomId,
        seq: Seq,
        /// The client's idempotency key (the batch gives each event an `id` of its own).
        client_id: &'a str,
        user: &'a UserName,
        data: &'a str,
        ts: u64,
    },
    Edit {
        room: &'a RoomId,
        seq: Seq,
        event_seq: Seq,
        client_id: &'a str,
        user: &'a UserName,
        data: &'a str,
        ts: u64,
    },
    Delete {
        room: &'a RoomId,
        seq: Seq,
        event_seq: Seq,
        client_id: &'a str,
        user: &'a UserName,
        ts: u64,
    },
    Reaction {
        room: &'a RoomId,
        seq: Seq,
        event_seq: Seq,
        client_id: &'a str,
        user: &'a UserName,
        emoji: &'a str,
        on: bool,
        counts: &'a ReactionCounts,
        ts: u64,
    },
}

fn json(event: &Event<'_>) -> String {
    serde_json::to_string(event).expect("webhook events always serialize")
}

/// `message`, `edit`, `delete` or `reaction` for a committed entry of a room's log.
pub fn entry(m: &ChatMessage) -> String {
    let (room, id, user, ts) = (&m.room, m.id.as_str(), &m.user, m.ts);
    json(&match m.event.as_deref() {
        None => Event::Message {
            room,
            seq: m.seq,
            client_id: id,
            user,
            data: &m.data,
            ts,
        },
        Some(EntryEvent::Edit { target }) => Event::Edit {
            room,
            seq: *target,
            event_seq: m.seq,
            client_id: id,
            user,
            data: &m.data,
            ts,
        },
        Some(EntryEvent::Delete { target }) => Event::Delete {
            room,
            seq: *target,
            event_seq: m.seq,
            client_id: id,
            user,
            ts,
        },
        Some(EntryEvent::Reaction {
            target,
            emoji,
            on,
            counts,
        }) => Event::Reaction {
            room,
            seq: *target,
            event_seq: m.seq,
            client_id: id,
            user,
            emoji,
            on: *on,
            counts,
            ts,
        },
    })
}

/// A connection was opened (`$connect` stored it).
pub fn connect(r: &ConnectionRecord) -> String {
    json(&Event::Connect {
        connection_id: &r.id,
        user: &r.user,
        mode: r.mode.as_str(),
        source_ip: &r.source_ip,
        user_agent: &r.user_agent,
        ts: r.connected_at,
    })
}

/// A connection ended (`$disconnect` removed it); `user` when the store still knew it.
pub fn disconnect(id: &ConnectionId, user: Option<&UserName>, ts: u64) -> String {
    json(&Event::Disconnect {
        connection_id: id,
        user,
        ts,
    })
}

/// A connection joined a room it was not in.
pub fn join(room: &RoomId, id: &ConnectionId, user: Option<&UserName>, ts: u64) -> String {
    json(&Event::Join {
        room,
        connection_id: id,
        user,
        ts,
    })
}

/// A connection left a room it was in (with `leave`; a disconnect is one `disconnect`).
pub fn leave(room: &RoomId, id: &ConnectionId, user: Option<&UserName>, ts: u64) -> String {
    json(&Event::Leave {
        room,
        connection_id: id,
        user,
        ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Mode;

    #[test]
    fn events_name_themselves_and_use_camel_case() {
        let room = RoomId::parse("lobby").unwrap();
        let ann = UserName::parse("ann").unwrap();
        let m = ChatMessage::new(
            room.clone(),
            Seq(3),
            "c1".into(),
            ann.clone(),
            "hi".into(),
            7,
        );
        assert_eq!(
            entry(&m),
            r#"{"event":"message","room":"lobby","seq":3,"clientId":"c1","user":"ann","data":"hi","ts":7}"#
        );
        let mut r = m.clone();
        r.seq = Seq(4);
        r.data.clear();
        r.event = Some(Box::new(EntryEvent::Reaction {
            target: Seq(3),
            emoji: "👍".into(),
            on: true,
            counts: [("👍".to_owned(), 1)].into(),
        }));
        assert_eq!(
            entry(&r),
            r#"{"event":"reaction","room":"lobby","seq":3,"eventSeq":4,"clientId":"c1","user":"ann","emoji":"👍","on":true,"counts":{"👍":1},"ts":7}"#
        );
        let id = ConnectionId::parse("Kx3vQ9aLm2Pz7RtB").unwrap();
        let record = ConnectionRecord {
            id: id.clone(),
            user: ann.clone(),
            mode: Mode::V1,
            source_ip: "127.0.0.1".into(),
            user_agent: "wscat".into(),
            connected_at: 5,
        };
        assert_eq!(
            connect(&record),
            r#"{"event":"connect","connectionId":"Kx3vQ9aLm2Pz7RtB","user":"ann","mode":"v1","sourceIp":"127.0.0.1","userAgent":"wscat","ts":5}"#
        );
        assert_eq!(
            join(&room, &id, Some(&ann), 6),
            r#"{"event":"join","room":"lobby","connectionId":"Kx3vQ9aLm2Pz7RtB","user":"ann","ts":6}"#
        );
        assert_eq!(
            disconnect(&id, None, 8),
            r#"{"event":"disconnect","connectionId":"Kx3vQ9aLm2Pz7RtB","ts":8}"#
        );
    }
}

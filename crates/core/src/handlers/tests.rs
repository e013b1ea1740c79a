//! Unit tests of the handlers over the in-memory adapters, a recording fan-out and an outbox
//! that collects frames. The real server is tested end to end in the server crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;
use crate::memory::{MemoryConnections, MemoryLog};
use crate::ports::NoListener;
use crate::protocol::{Member, PresenceEvent};

#[derive(Default)]
struct Rooms(Mutex<HashMap<RoomId, Vec<ConnectionId>>>);

#[async_trait]
impl RoomMembership for Rooms {
    fn join(&self, c: &ConnectionId, r: &RoomId) {
        let mut map = self.0.lock().unwrap();
        let v = map.entry(r.clone()).or_default();
        if !v.contains(c) {
            v.push(c.clone());
        }
    }
    fn leave(&self, c: &ConnectionId, r: &RoomId) {
        if let Some(v) = self.0.lock().unwrap().get_mut(r) {
            v.retain(|x| x != c);
        }
    }
    async fn members(&self, r: &RoomId) -> Result<Vec<Member>, crate::error::StoreError> {
        let map = self.0.lock().unwrap();
        Ok(map
            .get(r)
            .into_iter()
            .flatten()
            .map(|c| Member {
                connection_id: c.clone(),
                user: UserName::parse("u").unwrap(),
                last_read: Seq::ZERO,
            })
            .collect())
    }
    fn presence(&self, _: &RoomId, _: PresenceEvent, _: &UserName, _: &ConnectionId) {}
    fn signal(&self, _: &RoomId, _: &str, _: Option<&ConnectionId>) {}
}

#[derive(Default)]
struct Frames(Vec<serde_json::Value>);

#[async_trait]
impl Outbox for Frames {
    async fn send_text(&mut self, text: String) -> Result<(), Disconnected> {
        self.0
            .push(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)));
        Ok(())
    }
}

fn services() -> Services {
    Services {
        log: Arc::new(MemoryLog::new(Arc::new(NoListener))),
        connections: Arc::new(MemoryConnections::default()),
        rooms: Arc::new(Rooms::default()),
        limits: Limits {
            max_frame_bytes: 1024,
            max_message_bytes: 4096,
            max_rooms_per_connection: 100,
        },
        typing: Arc::default(),
        join_gate: None,
    }
}

fn session(mode: Mode) -> Session {
    Session::new(
        ConnectionId::generate(),
        UserName::parse("ann").unwrap(),
        mode,
        Identity {
            source_ip: "127.0.0.1".into(),
            user_agent: "test".into(),
        },
    )
}

async fn run(s: &mut Session, svc: &Services, text: &str) -> Vec<serde_json::Value> {
    let mut out = Frames::default();
    dispatch(s, svc, text, &mut out).await.unwrap();
    out.0
}

#[tokio::test]
async fn v1_send_requires_join_then_acks() {
    let svc = services();
    let mut s = session(Mode::V1);
    let f = run(
        &mut s,
        &svc,
        r#"{"action":"sendmessage","room":"r","data":"x","id":"1"}"#,
    )
    .await;
    assert_eq!(f[0]["code"], "not_joined");
    assert_eq!(f[0]["id"], "1", "errors echo the request id");
    let f = run(&mut s, &svc, r#"{"action":"join","room":"r"}"#).await;
    assert_eq!(f[0]["type"], "joined");
    assert_eq!(f[0]["seq"], 0);
    let f = run(
        &mut s,
        &svc,
        r#"{"action":"sendmessage","room":"r","data":"x","id":"1"}"#,
    )
    .await;
    assert_eq!(
        (&f[0]["type"], &f[0]["seq"], &f[0]["duplicate"]),
        (&"ack".into(), &1.into(), &false.into())
    );
    let f = run(
        &mut s,
        &svc,
        r#"{"action":"sendmessage","room":"r","data":"x","id":"1"}"#,
    )
    .await;
    assert_eq!(
        (&f[0]["seq"], &f[0]["duplicate"]),
        (&1.into(), &true.into())
    );
}

#[tokio::test]
async fn join_after_replays_then_filters_live_duplicates() {
    let svc = services();
    let mut s = session(Mode::V1);
    run(&mut s, &svc, r#"{"action":"join","room":"r"}"#).await;
    for i in 0..5 {
        run(
            &mut s,
            &svc,
            &format!(r#"{{"action":"sendmessage","room":"r","data":"m{i}"}}"#),
        )
        .await;
    }
    let mut late = session(Mode::V1);
    let f = run(&mut late, &svc, r#"{"action":"join","room":"r","after":2}"#).await;
    assert_eq!(f[0]["type"], "joined");
    assert_eq!(f[0]["seq"], 5);
    let replayed: Vec<_> = f[1..].iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(replayed, vec![3, 4, 5]);
    let r = RoomId::parse("r").unwrap();
    assert!(!late.accept_live(&r, Seq(5)), "already replayed");
    assert!(late.accept_live(&r, Seq(6)));
    assert!(
        !late.accept_live(&RoomId::parse("other").unwrap(), Seq(1)),
        "not a member"
    );
    // A run of 5..=9 overlapping what was delivered: new past 6, and 9 is delivered now.
    assert_eq!(late.accept_live_run(&r, Seq(9)), Some(Seq(6)));
    assert_eq!(late.accept_live_run(&r, Seq(9)), None, "the same run again");
    assert!(late.accept_live(&r, Seq(10)));
}

#[tokio::test]
async fn compat_routes_everything_else_to_default() {
    let svc = services();
    let mut s = session(Mode::Compat);
    let mut out = Frames::default();
    connect::handle(&mut s, &svc, &mut out).await.unwrap();
    assert!(out.0.is_empty(), "compat clients get no greeting");
    for text in [
        "not json",
        r#"{"action":"join","room":"x"}"#,
        r#"{"action":"nope"}"#,
    ] {
        let f = run(&mut s, &svc, text).await;
        let reply = f[0].as_str().unwrap();
        assert!(
            reply.starts_with("Use the sendmessage route to send a message. Your info:{"),
            "{reply}"
        );
    }
    let f = run(&mut s, &svc, r#"{"action":"sendmessage","data":7}"#).await;
    assert_eq!(f[0]["code"], "bad_request");
    let f = run(&mut s, &svc, r#"{"action":"sendmessage","message":"hi"}"#).await;
    assert!(f.is_empty(), "compat sends get no ack");
    let head = svc.log.head(&RoomId::default_room()).await.unwrap();
    assert_eq!(head, Some(Seq(1)));
}

#[tokio::test]
async fn unknown_rooms_and_leaving_are_errors() {
    let svc = services();
    let mut s = session(Mode::V1);
    let f = run(&mut s, &svc, r#"{"action":"history","room":"ghost"}"#).await;
    assert_eq!(f[0]["code"], "not_found");
    let f = run(&mut s, &svc, r#"{"action":"members","room":"ghost"}"#).await;
    assert_eq!(f[0]["code"], "not_found");
    let f = run(&mut s, &svc, r#"{"action":"leave","room":"ghost"}"#).await;
    assert_eq!(f[0]["code"], "not_joined");
    let f = run(&mut s, &svc, "{oops").await;
    assert_eq!(f[0]["code"], "bad_request");
}

#[tokio::test]
async fn a_restored_session_is_the_one_that_was_recorded() {
    // The AWS shape rebuilds the session from its row on every frame: it must act the same.
    let services = services();
    let mut first = session(Mode::V1);
    let mut out = Frames::default();
    assert!(
        connect::handle(&mut first, &services, &mut out)
            .await
            .is_ok()
    );
    dispatch(
        &mut first,
        &services,
        r#"{"action":"join","room":"a"}"#,
        &mut out,
    )
    .await
    .unwrap();
    let (record, rooms) = services.connections.list().await.unwrap().remove(0);
    assert_eq!(record, first.record());
    let mut again = Session::restore(record, rooms);
    assert!(again.is_member(&RoomId::parse("a").unwrap()));
    assert_eq!(
        (again.id.clone(), again.connected_at),
        (first.id.clone(), first.connected_at)
    );
    let mut out = Frames::default();
    let send = r#"{"action":"sendmessage","room":"a","data":"hi","id":"1"}"#;
    dispatch(&mut again, &services, send, &mut out)
        .await
        .unwrap();
    assert_eq!(out.0[0]["type"], "ack");
    // A second join of a room it is in is not a new membership (no presence, no room count).
    dispatch(
        &mut again,
        &services,
        r#"{"action":"join","room":"a"}"#,
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(again.rooms().count(), 1);
}

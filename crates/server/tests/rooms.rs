//! v1 mode: rooms, ordering, acks, idempotent retries, history, members, presence.

mod common;

use common::{TestServer, WAIT, until};
use dynamowave_core::protocol::{PresenceEvent, ServerFrame};

fn seq_of(frame: &ServerFrame) -> Option<(String, u64)> {
    match frame {
        ServerFrame::Message(m) => Some((m.data.clone(), m.seq.0)),
        _ => None,
    }
}

#[tokio::test]
async fn connected_frame_names_the_connection() {
    let server = TestServer::start().await;
    let c = server.v1("alice").await;
    match &c.connected {
        ServerFrame::Connected {
            connection_id,
            user,
            protocol,
            default_room,
            limits,
        } => {
            assert_eq!(connection_id.as_str().len(), 16);
            assert_eq!(user.as_str(), "alice");
            assert_eq!(protocol, "dynamowave.v1");
            assert_eq!(default_room.as_str(), "general");
            assert_eq!(
                (limits.max_frame_bytes, limits.max_message_bytes),
                (32 * 1024, 128 * 1024)
            );
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn three_clients_see_the_same_order() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for name in ["ann", "bob", "cat"] {
        let mut c = server.v1(name).await;
        c.join("lobby", None).await.unwrap();
        until(&mut c, |f| matches!(f, ServerFrame::Joined { .. })).await;
        clients.push(c);
    }
    // Everyone sends without waiting, so the server interleaves them.
    for round in 0..20 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_message("lobby", &format!("c{i}-{round}"), &format!("{i}-{round}"))
                .await
                .unwrap();
        }
    }
    let mut views = Vec::new();
    for c in &mut clients {
        let mut seen = Vec::new();
        let mut acks = 0;
        while seen.len() < 60 || acks < 20 {
            match c.next_within(WAIT).await.unwrap() {
                ServerFrame::Message(m) => seen.push((m.seq.0, m.data.clone())),
                ServerFrame::Ack { duplicate, .. } => {
                    assert!(!duplicate);
                    acks += 1;
                }
                ServerFrame::Presence { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        views.push(seen);
    }
    let seqs: Vec<u64> = views[0].iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=60).collect::<Vec<_>>(),
        "seq is strictly increasing from 1 with no gap"
    );
    assert_eq!(views[0], views[1], "every member sees the same order");
    assert_eq!(views[1], views[2]);
    server.stop().await;
}

#[tokio::test]
async fn ack_comes_after_commit_and_retries_are_idempotent() {
    let server = TestServer::start().await;
    let mut sender = server.v1("ann").await;
    let mut reader = server.v1("bob").await;
    for c in [&mut sender, &mut reader] {
        c.join("r", None).await.unwrap();
        until(c, |f| matches!(f, ServerFrame::Joined { .. })).await;
    }

    let (ack, _) = sender.send_and_ack("r", "once", "key-1").await.unwrap();
    let ServerFrame::Ack {
        id,
        room,
        seq,
        ts,
        duplicate,
    } = ack
    else {
        unreachable!()
    };
    assert_eq!(
        (id.as_str(), room.as_str(), seq.0, duplicate),
        ("key-1", "r", 1, false)
    );
    assert!(ts > 0);

    // The ack means committed: history (read from the store) has it already.
    let http = reqwest::Client::new();
    let page: serde_json::Value = common::get_json(&http, server.http("/rooms/r/messages")).await;
    assert_eq!(page["messages"][0]["data"], "once");

    // A retry with the same id gets the original back and stores nothing.
    let (again, _) = sender
        .send_and_ack("r", "once (retry)", "key-1")
        .await
        .unwrap();
    assert!(
        matches!(again, ServerFrame::Ack { seq, duplicate: true, ts: t, .. } if seq.0 == 1 && t == ts)
    );
    sender.send_and_ack("r", "next", "key-2").await.unwrap();

    // The reader got "once" exactly once, then "next" with seq 2.
    let (first, _) = until(&mut reader, |f| matches!(f, ServerFrame::Message(_))).await;
    let (second, _) = until(&mut reader, |f| matches!(f, ServerFrame::Message(_))).await;
    assert_eq!(seq_of(&first), Some(("once".into(), 1)));
    assert_eq!(seq_of(&second), Some(("next".into(), 2)));

    // The same id from another user is another message.
    let (ack, _) = reader.send_and_ack("r", "bob's", "key-1").await.unwrap();
    assert!(matches!(ack, ServerFrame::Ack { seq, duplicate: false, .. } if seq.0 == 3));
    server.stop().await;
}

#[tokio::test]
async fn history_pages_backwards_and_forwards() {
    let server = TestServer::start().await;
    let mut c = server.v1("ann").await;
    c.join("h", None).await.unwrap();
    for i in 1..=25 {
        c.send_and_ack("h", &format!("m{i}"), &format!("id{i}"))
            .await
            .unwrap();
    }
    let page = |frame: ServerFrame| match frame {
        ServerFrame::History { messages, more, .. } => {
            (messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(), more)
        }
        other => panic!("{other:?}"),
    };
    let mut get = async |before, after, limit| {
        c.history("h", before, after, limit).await.unwrap();
        page(
            until(&mut c, |f| matches!(f, ServerFrame::History { .. }))
                .await
                .0,
        )
    };
    assert_eq!(get(None, None, Some(10)).await, ((16..=25).collect(), true));
    assert_eq!(
        get(Some(16), None, Some(10)).await,
        ((6..=15).collect(), true)
    );
    assert_eq!(
        get(Some(6), None, Some(10)).await,
        ((1..=5).collect(), false)
    );
    assert_eq!(
        get(None, Some(20), Some(10)).await,
        ((21..=25).collect(), false)
    );
    assert_eq!(get(None, Some(0), Some(3)).await, (vec![1, 2, 3], true));
    assert_eq!(
        get(None, None, None).await,
        ((1..=25).collect(), false),
        "default limit is 50"
    );
    server.stop().await;
}

#[tokio::test]
async fn members_presence_and_leave() {
    let server = TestServer::start().await;
    let mut ann = server.v1("ann").await;
    ann.join("m", None).await.unwrap();
    until(&mut ann, |f| matches!(f, ServerFrame::Joined { .. })).await;
    let mut bob = server.v1("bob").await;
    bob.join("m", None).await.unwrap();
    until(&mut bob, |f| matches!(f, ServerFrame::Joined { .. })).await;

    let (p, _) = until(&mut ann, |f| matches!(f, ServerFrame::Presence { .. })).await;
    assert!(
        matches!(p, ServerFrame::Presence { event: PresenceEvent::Joined, ref user, .. } if user.as_str() == "bob")
    );

    ann.members("m").await.unwrap();
    let (m, _) = until(&mut ann, |f| matches!(f, ServerFrame::Members { .. })).await;
    let ServerFrame::Members { members, .. } = m else {
        unreachable!()
    };
    let mut names: Vec<_> = members.iter().map(|m| m.user.as_str().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);

    bob.leave("m").await.unwrap();
    until(&mut bob, |f| matches!(f, ServerFrame::Left { .. })).await;
    let (p, _) = until(&mut ann, |f| matches!(f, ServerFrame::Presence { .. })).await;
    assert!(matches!(
        p,
        ServerFrame::Presence {
            event: PresenceEvent::Left,
            ..
        }
    ));

    // After leaving, bob neither receives nor may send.
    ann.send_and_ack("m", "bob is gone", "1").await.unwrap();
    bob.send_message("m", "still here?", "b1").await.unwrap();
    let frame = bob.next_within(WAIT).await.unwrap();
    assert!(
        matches!(&frame, ServerFrame::Error { code, id: Some(id), .. } if code.as_str() == "not_joined" && id == "b1"),
        "{frame:?}"
    );

    // A disconnect is a leave too.
    drop(bob);
    ann.members("m").await.unwrap();
    loop {
        let (m, _) = until(&mut ann, |f| matches!(f, ServerFrame::Members { .. })).await;
        let ServerFrame::Members { members, .. } = m else {
            unreachable!()
        };
        if members.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ann.members("m").await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn default_route_in_v1_gives_info() {
    let server = TestServer::start().await;
    let mut c = server.v1("ann").await;
    c.send_raw(r#"{"action":"whoami"}"#).await.unwrap();
    match c.next_within(WAIT).await.unwrap() {
        ServerFrame::Info {
            message,
            connection,
        } => {
            assert!(message.starts_with("Use the sendmessage route to send a message."));
            assert_eq!(connection.connection_id.as_str(), c.connection_id());
            assert_eq!(connection.identity.source_ip, "127.0.0.1");
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

//! Edits, deletions, reactions, read receipts and typing, against the real server (SQLite
//! store): every frame of docs/protocol.md's "Events on messages" section, resume across them,
//! and that they survive a restart.

mod common;

use common::{TestServer, WAIT, until};
use dynamowave_client::Client;
use dynamowave_core::error::ErrorCode;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;

async fn joined(server: &TestServer, name: &str, room: &str) -> Client {
    let mut c = server.v1(name).await;
    c.join(room, None).await.unwrap();
    until(&mut c, |f| matches!(f, ServerFrame::Joined { .. })).await;
    c
}

/// Sends and waits for the ack of `id`; returns the ack's seq.
async fn acked(c: &mut Client, id: &str) -> u64 {
    let (frame, _) = until(c, |f| {
        matches!(f, ServerFrame::Ack { id: got, .. } if got == id)
            || matches!(f, ServerFrame::Error { id: Some(got), .. } if got == id)
    })
    .await;
    match frame {
        ServerFrame::Ack { seq, .. } => seq.0,
        other => panic!("expected the ack of {id}, got {other:?}"),
    }
}

async fn error_for(c: &mut Client, id: &str) -> (ErrorCode, String) {
    let (frame, _) = until(c, |f| {
        matches!(f, ServerFrame::Error { id: Some(got), .. } if got == id)
            || matches!(f, ServerFrame::Ack { id: got, .. } if got == id)
    })
    .await;
    match frame {
        ServerFrame::Error { code, message, .. } => (code, message),
        other => panic!("expected an error for {id}, got {other:?}"),
    }
}

fn counts(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(e, n)| ((*e).to_owned(), *n)).collect()
}

#[tokio::test]
async fn the_author_edits_and_every_member_sees_it() {
    let server = TestServer::start().await;
    let mut ann = joined(&server, "ann", "r").await;
    let mut bob = joined(&server, "bob", "r").await;
    ann.send_message("r", "helo", "m1").await.unwrap();
    let seq = acked(&mut ann, "m1").await;
    ann.edit("r", seq, "hello", "e1").await.unwrap();
    let event_seq = acked(&mut ann, "e1").await;
    assert_eq!(event_seq, seq + 1, "an edit takes the next seq of the room");
    for c in [&mut ann, &mut bob] {
        let (frame, _) = until(c, |f| matches!(f, ServerFrame::Edited { .. })).await;
        match frame {
            ServerFrame::Edited {
                room,
                seq: s,
                data,
                user,
                edited_at,
                event_seq: e,
            } => {
                assert_eq!(
                    (room.as_str(), s.0, data.as_str(), user.as_str()),
                    ("r", seq, "hello", "ann")
                );
                assert_eq!(e.0, event_seq);
                assert!(edited_at > 0);
            }
            _ => unreachable!(),
        }
    }
    // History shows the message as it is now, and only messages.
    bob.history("r", None, None, None).await.unwrap();
    let (frame, _) = until(&mut bob, |f| matches!(f, ServerFrame::History { .. })).await;
    let ServerFrame::History { messages, .. } = frame else {
        unreachable!()
    };
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].data, "hello");
    assert!(messages[0].edited_at.is_some());
    // A retried id is a duplicate; someone else's edit is refused; so is an unknown seq.
    ann.edit("r", seq, "hello", "e1").await.unwrap();
    let (frame, _) = until(&mut ann, |f| matches!(f, ServerFrame::Ack { .. })).await;
    assert!(matches!(frame, ServerFrame::Ack { duplicate: true, seq: s, .. } if s.0 == event_seq));
    bob.edit("r", seq, "mine now", "b1").await.unwrap();
    let (code, message) = error_for(&mut bob, "b1").await;
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    assert!(message.contains("only the author"), "{message}");
    ann.edit("r", 99, "x", "e2").await.unwrap();
    assert_eq!(error_for(&mut ann, "e2").await.0, ErrorCode::NotFound);
    ann.send_raw(r#"{"action":"edit","room":"r","seq":1,"id":"e3"}"#)
        .await
        .unwrap();
    let (code, message) = error_for(&mut ann, "e3").await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("`data`"), "{message}");
    server.stop().await;
}

#[tokio::test]
async fn deletion_from_the_socket_and_compat_clients_see_no_events() {
    let server = TestServer::start().await;
    let mut ann = joined(&server, "ann", "general").await;
    let mut compat = server.compat().await;
    // Its own broadcast back: the compat client is in the room now.
    compat.send_message("here").await.unwrap();
    assert_eq!(compat.next_within(WAIT).await.unwrap(), "here");
    ann.send_message("general", "oops", "m1").await.unwrap();
    let seq = acked(&mut ann, "m1").await;
    assert_eq!(compat.next_within(WAIT).await.unwrap(), "oops");
    ann.edit("general", seq, "oops!", "e1").await.unwrap();
    acked(&mut ann, "e1").await;
    ann.react("general", seq, "👍", true, "r1").await.unwrap();
    acked(&mut ann, "r1").await;
    ann.delete("general", seq, "d1").await.unwrap();
    let d = acked(&mut ann, "d1").await;
    let (frame, _) = until(&mut ann, |f| matches!(f, ServerFrame::Deleted { .. })).await;
    assert!(
        matches!(frame, ServerFrame::Deleted { seq: s, event_seq: e, .. } if s.0 == seq && e.0 == d)
    );
    ann.send_message("general", "next", "m2").await.unwrap();
    acked(&mut ann, "m2").await;
    assert_eq!(
        compat.next_within(WAIT).await.unwrap(),
        "next",
        "the AWS sample's clients get message texts only"
    );
    ann.history("general", None, None, None).await.unwrap();
    let (frame, _) = until(&mut ann, |f| matches!(f, ServerFrame::History { .. })).await;
    let ServerFrame::History { messages, .. } = frame else {
        unreachable!()
    };
    assert_eq!(
        messages.iter().map(|m| m.data.as_str()).collect::<Vec<_>>(),
        ["here", "next"]
    );
    // Deleted: no more edits or a second delete.
    ann.delete("general", seq, "d2").await.unwrap();
    assert_eq!(error_for(&mut ann, "d2").await.0, ErrorCode::NotFound);
    // The management API sees the socket's deletion as its tombstone.
    let body: serde_json::Value = reqwest::Client::new()
        .delete(server.http(&format!("/rooms/general/messages/{seq}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["alreadyDeleted"], true, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn reactions_count_one_per_user_and_emoji() {
    let server = TestServer::start().await;
    let mut ann = joined(&server, "ann", "r").await;
    let mut bob = joined(&server, "bob", "r").await;
    let mut watcher = joined(&server, "watcher", "r").await;
    ann.send_message("r", "party?", "m1").await.unwrap();
    let seq = acked(&mut ann, "m1").await;
    bob.react("r", seq, "🎉", true, "b1").await.unwrap();
    acked(&mut bob, "b1").await;
    bob.react("r", seq, "🎉", true, "b2").await.unwrap();
    acked(&mut bob, "b2").await;
    ann.react("r", seq, "🎉", true, "a1").await.unwrap();
    acked(&mut ann, "a1").await;
    let mut last = None;
    for _ in 0..3 {
        let (frame, _) = until(&mut watcher, |f| matches!(f, ServerFrame::Reaction { .. })).await;
        last = Some(frame);
    }
    match last.unwrap() {
        ServerFrame::Reaction {
            seq: s,
            emoji,
            user,
            on,
            counts: c,
            ..
        } => {
            assert_eq!(
                (s.0, emoji.as_str(), user.as_str(), on),
                (seq, "🎉", "ann", true)
            );
            assert_eq!(
                c,
                counts(&[("🎉", 2)]),
                "bob's second 🎉 did not count twice"
            );
        }
        _ => unreachable!(),
    }
    bob.react("r", seq, "🎉", false, "b3").await.unwrap();
    acked(&mut bob, "b3").await;
    bob.history("r", None, None, None).await.unwrap();
    let (frame, _) = until(&mut bob, |f| matches!(f, ServerFrame::History { .. })).await;
    let ServerFrame::History { messages, .. } = frame else {
        unreachable!()
    };
    assert_eq!(messages[0].reactions, counts(&[("🎉", 1)]));
    // Bad reactions are told what to fix.
    bob.send_raw(r#"{"action":"react","room":"r","seq":1,"emoji":"a b","id":"x1"}"#)
        .await
        .unwrap();
    assert_eq!(error_for(&mut bob, "x1").await.0, ErrorCode::BadRequest);
    bob.send_raw(r#"{"action":"react","room":"r","seq":1,"emoji":"👍","on":"yes","id":"x2"}"#)
        .await
        .unwrap();
    let (code, message) = error_for(&mut bob, "x2").await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("`on`"), "{message}");
    let mut cy = server.v1("cy").await;
    cy.react("r", seq, "👍", true, "c1").await.unwrap();
    assert_eq!(error_for(&mut cy, "c1").await.0, ErrorCode::NotJoined);
    server.stop().await;
}

#[tokio::test]
async fn a_resumed_join_replays_edits_reactions_and_deletions_gap_free() {
    let server = TestServer::start().await;
    let mut ann = joined(&server, "ann", "r").await;
    for i in 1..=3 {
        ann.send_message("r", &format!("m{i}"), &format!("m{i}"))
            .await
            .unwrap();
        acked(&mut ann, &format!("m{i}")).await;
    }
    // Bob was here through seq 3, then away.
    ann.edit("r", 1, "m1 (edited)", "e1").await.unwrap();
    acked(&mut ann, "e1").await;
    ann.react("r", 2, "👍", true, "r1").await.unwrap();
    acked(&mut ann, "r1").await;
    ann.delete("r", 3, "d1").await.unwrap();
    acked(&mut ann, "d1").await;
    ann.send_message("r", "m7", "m7").await.unwrap();
    let head = acked(&mut ann, "m7").await;
    assert_eq!(head, 7);

    let mut bob = server.v1("bob").await;
    bob.join("r", Some(3)).await.unwrap();
    let (joined, _) = until(&mut bob, |f| matches!(f, ServerFrame::Joined { .. })).await;
    assert!(matches!(joined, ServerFrame::Joined { seq, .. } if seq.0 == 7));
    let mut seqs = Vec::new();
    let mut frames = Vec::new();
    while seqs.last() != Some(&7) {
        let frame = bob.next_within(WAIT).await.unwrap();
        let seq = match &frame {
            ServerFrame::Message(m) => m.seq.0,
            ServerFrame::Edited { event_seq, .. }
            | ServerFrame::Reaction { event_seq, .. }
            | ServerFrame::Deleted { event_seq, .. } => event_seq.0,
            other => panic!("unexpected {other:?}"),
        };
        seqs.push(seq);
        frames.push(frame);
    }
    assert_eq!(seqs, [4, 5, 6, 7], "every entry after 3, in order, once");
    assert!(
        matches!(&frames[0], ServerFrame::Edited { seq, data, .. } if seq.0 == 1 && data == "m1 (edited)")
    );
    assert!(
        matches!(&frames[1], ServerFrame::Reaction { seq, counts: c, .. } if seq.0 == 2 && *c == counts(&[("👍", 1)]))
    );
    assert!(matches!(&frames[2], ServerFrame::Deleted { seq, .. } if seq.0 == 3));
    assert!(matches!(&frames[3], ServerFrame::Message(m) if m.data == "m7"));
    // From the start, messages come as they are now, deleted ones not at all.
    let mut cy = server.v1("cy").await;
    cy.join("r", Some(0)).await.unwrap();
    until(&mut cy, |f| matches!(f, ServerFrame::Joined { .. })).await;
    let first = cy.next_within(WAIT).await.unwrap();
    assert!(
        matches!(&first, ServerFrame::Message(m) if m.seq.0 == 1 && m.data == "m1 (edited)" && m.edited_at.is_some()),
        "{first:?}"
    );
    let second = cy.next_within(WAIT).await.unwrap();
    assert!(
        matches!(&second, ServerFrame::Message(m) if m.seq.0 == 2 && m.reactions == counts(&[("👍", 1)])),
        "{second:?}"
    );
    let third = cy.next_within(WAIT).await.unwrap();
    assert!(
        matches!(&third, ServerFrame::Edited { event_seq, .. } if event_seq.0 == 4),
        "{third:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn read_positions_move_forward_and_reach_every_member() {
    let server = TestServer::start().await;
    let mut ann = joined(&server, "ann", "r").await;
    let mut bob = joined(&server, "bob", "r").await;
    for i in 1..=4 {
        ann.send_message("r", "x", &format!("m{i}")).await.unwrap();
        acked(&mut ann, &format!("m{i}")).await;
    }
    bob.read("r", 3).await.unwrap();
    for c in [&mut ann, &mut bob] {
        let (frame, _) = until(c, |f| matches!(f, ServerFrame::Read { .. })).await;
        assert!(
            matches!(frame, ServerFrame::Read { user, seq, .. } if user.as_str() == "bob" && seq.0 == 3)
        );
    }
    // Backwards: nothing moves, and only the sender hears where it is.
    bob.read("r", 1).await.unwrap();
    let (frame, _) = until(&mut bob, |f| matches!(f, ServerFrame::Read { .. })).await;
    assert!(matches!(frame, ServerFrame::Read { seq, .. } if seq.0 == 3));
    bob.read("r", 9).await.unwrap();
    let (frame, _) = until(&mut bob, |f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(
        matches!(
            frame,
            ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{frame:?}"
    );
    // A second connection of bob's learns the position from `joined`; members list it.
    let mut bob2 = server.v1("bob").await;
    bob2.join("r", None).await.unwrap();
    let (frame, _) = until(&mut bob2, |f| matches!(f, ServerFrame::Joined { .. })).await;
    assert!(
        matches!(frame, ServerFrame::Joined { last_read, .. } if last_read.0 == 3),
        "{frame:?}"
    );
    ann.members("r").await.unwrap();
    let (frame, _) = until(&mut ann, |f| matches!(f, ServerFrame::Members { .. })).await;
    let ServerFrame::Members { members, .. } = frame else {
        unreachable!()
    };
    for m in &members {
        let expected = if m.user.as_str() == "bob" { 3 } else { 0 };
        assert_eq!(m.last_read.0, expected, "{m:?}");
    }
    assert_eq!(members.len(), 3);
    // Not a member: refused.
    let mut cy = server.v1("cy").await;
    cy.read("r", 1).await.unwrap();
    let frame = cy.next_within(WAIT).await.unwrap();
    assert!(
        matches!(
            frame,
            ServerFrame::Error {
                code: ErrorCode::NotJoined,
                ..
            }
        ),
        "{frame:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn typing_reaches_the_others_at_most_once_per_two_seconds() {
    let server = TestServer::start().await;
    let mut ann = joined(&server, "ann", "r").await;
    let mut bob = joined(&server, "bob", "r").await;
    for _ in 0..5 {
        ann.typing("r").await.unwrap();
    }
    ann.send_message("r", "done typing", "m1").await.unwrap();
    acked(&mut ann, "m1").await;
    let (_, before) = until(&mut bob, |f| matches!(f, ServerFrame::Message(_))).await;
    let typing: Vec<_> = before
        .iter()
        .filter(|f| matches!(f, ServerFrame::Typing { .. }))
        .collect();
    assert_eq!(typing.len(), 1, "{before:?}");
    assert!(
        matches!(typing[0], ServerFrame::Typing { user, room } if user.as_str() == "ann" && room.as_str() == "r")
    );
    // The typist does not hear itself.
    ann.send_message("r", "sentinel", "m2").await.unwrap();
    let (_, before) = until(
        &mut ann,
        |f| matches!(f, ServerFrame::Ack { id, .. } if id == "m2"),
    )
    .await;
    assert!(
        !before
            .iter()
            .any(|f| matches!(f, ServerFrame::Typing { .. })),
        "{before:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn edits_reactions_and_read_positions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), ServerConfig::unthrottled()).await;
    let mut ann = joined(&server, "ann", "r").await;
    ann.send_message("r", "v1", "m1").await.unwrap();
    acked(&mut ann, "m1").await;
    ann.edit("r", 1, "v2", "e1").await.unwrap();
    acked(&mut ann, "e1").await;
    ann.react("r", 1, "❤️", true, "r1").await.unwrap();
    acked(&mut ann, "r1").await;
    ann.read("r", 3).await.unwrap();
    until(&mut ann, |f| matches!(f, ServerFrame::Read { .. })).await;
    drop(ann);
    server.stop().await;

    let server = TestServer::start_in(dir.path(), ServerConfig::unthrottled()).await;
    let mut ann = server.v1("ann").await;
    ann.join("r", None).await.unwrap();
    let (frame, _) = until(&mut ann, |f| matches!(f, ServerFrame::Joined { .. })).await;
    assert!(
        matches!(frame, ServerFrame::Joined { seq, last_read, .. } if seq.0 == 3 && last_read.0 == 3),
        "{frame:?}"
    );
    ann.history("r", None, None, None).await.unwrap();
    let (frame, _) = until(&mut ann, |f| matches!(f, ServerFrame::History { .. })).await;
    let ServerFrame::History { messages, .. } = frame else {
        unreachable!()
    };
    assert_eq!(messages[0].data, "v2");
    assert_eq!(messages[0].reactions, counts(&[("❤️", 1)]));
    // The id of the edit is still taken.
    ann.edit("r", 1, "v2", "e1").await.unwrap();
    let (frame, _) = until(&mut ann, |f| matches!(f, ServerFrame::Ack { .. })).await;
    assert!(
        matches!(
            frame,
            ServerFrame::Ack {
                duplicate: true,
                ..
            }
        ),
        "{frame:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_management_api_deletes_as_the_author_so_members_hear_it() {
    let server = TestServer::start().await;
    let mut ann = joined(&server, "ann", "general").await;
    let mut bob = joined(&server, "bob", "general").await;
    ann.send_message("general", "regret", "m1").await.unwrap();
    let seq = acked(&mut ann, "m1").await;
    let delete = || async {
        let response = reqwest::Client::new()
            .delete(server.http(&format!("/rooms/general/messages/{seq}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<serde_json::Value>().await.unwrap()
    };
    let first = delete().await;
    assert_eq!(first["alreadyDeleted"], false, "{first}");
    let (frame, _) = until(&mut bob, |f| matches!(f, ServerFrame::Deleted { .. })).await;
    let ServerFrame::Deleted {
        seq: s, event_seq, ..
    } = frame
    else {
        unreachable!()
    };
    assert_eq!(
        (s.0, event_seq.0),
        (seq, seq + 1),
        "an entry with the next seq"
    );
    let again = delete().await;
    assert_eq!(again["alreadyDeleted"], true, "{again}");
    assert_eq!(again["deletedAt"], first["deletedAt"]);
    // A resume from before it replays the deletion.
    let mut cy = server.v1("cy").await;
    cy.join("general", Some(seq)).await.unwrap();
    let (frame, _) = until(&mut cy, |f| matches!(f, ServerFrame::Deleted { .. })).await;
    assert!(matches!(frame, ServerFrame::Deleted { seq: s, .. } if s.0 == seq));
    server.stop().await;
}

//! Reading ahead of commits: a client's sends are queued to the log without waiting for each
//! fsync, and what the client sees is as if its frames were handled one at a time: acks in
//! order with consecutive seqs, a `history` after the sends includes them all, and an error
//! for a later frame comes after the earlier acks.

mod common;

use common::{TestServer, WAIT};
use dynamowave_core::ErrorCode;
use dynamowave_core::protocol::ServerFrame;

const SENDS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_in_flight_are_acked_in_order_before_the_next_reply() {
    let server = TestServer::start().await;
    let mut ann = server.v1("ann").await;
    ann.join("r", None).await.unwrap();
    // Back to back, then a history request and a send to a room ann is not in.
    for i in 1..=SENDS {
        ann.send_message("r", &format!("m{i}"), &format!("id{i}"))
            .await
            .unwrap();
    }
    ann.history("r", None, Some(0), Some(500)).await.unwrap();
    ann.send_message("elsewhere", "x", "late").await.unwrap();

    let mut acks = Vec::new();
    let mut live = Vec::new();
    let history = loop {
        match ann.next_within(WAIT).await.unwrap() {
            ServerFrame::Ack {
                id, seq, duplicate, ..
            } => {
                assert!(!duplicate);
                acks.push((id, seq.0));
            }
            ServerFrame::Message(m) => live.push(m.seq.0),
            ServerFrame::History { messages, .. } => break messages,
            ServerFrame::Joined { .. } | ServerFrame::Presence { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let expected: Vec<(String, u64)> = (1..=SENDS).map(|i| (format!("id{i}"), i)).collect();
    assert_eq!(
        acks, expected,
        "every ack, in send order, before the history reply"
    );
    let stored: Vec<u64> = history.iter().map(|m| m.seq.0).collect();
    assert_eq!(
        stored,
        (1..=SENDS).collect::<Vec<_>>(),
        "the history has every send"
    );
    assert!(history.iter().all(|m| m.data == format!("m{}", m.seq.0)));

    // The error for the last frame, then the rest of the live messages.
    loop {
        match ann.next_within(WAIT).await.unwrap() {
            ServerFrame::Error { id, code, .. } => {
                assert_eq!((id.as_deref(), code), (Some("late"), ErrorCode::NotJoined));
                break;
            }
            ServerFrame::Message(m) => live.push(m.seq.0),
            other => panic!("unexpected {other:?}"),
        }
    }
    while live.len() < SENDS as usize {
        match ann.next_within(WAIT).await.unwrap() {
            ServerFrame::Message(m) => live.push(m.seq.0),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        live,
        (1..=SENDS).collect::<Vec<_>>(),
        "live delivery in order, once each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_id_in_flight_is_a_duplicate() {
    let server = TestServer::start().await;
    let mut ann = server.v1("ann").await;
    ann.join("r", None).await.unwrap();
    for id in ["a", "b", "a", "c"] {
        ann.send_message("r", id, id).await.unwrap();
    }
    let mut acks = Vec::new();
    while acks.len() < 4 {
        if let ServerFrame::Ack {
            id, seq, duplicate, ..
        } = ann.next_within(WAIT).await.unwrap()
        {
            acks.push((id, seq.0, duplicate));
        }
    }
    assert_eq!(
        acks,
        [
            ("a".to_owned(), 1, false),
            ("b".to_owned(), 2, false),
            ("a".to_owned(), 1, true),
            ("c".to_owned(), 3, false),
        ]
    );
}

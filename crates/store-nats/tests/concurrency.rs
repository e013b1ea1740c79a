//! Two nodes (two stores on one stream) appending, reacting and marking read in one room at
//! once, and idempotency past JetStream's duplicate window: against a real nats-server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use dynamowave_core::conformance::{NoHub, RecordingListener};
use dynamowave_core::ports::{Backend, CommitListener, Fanout, MessageLog, NewEvent, NewMessage};
use dynamowave_core::protocol::HistoryQuery;
use dynamowave_core::{RoomId, Seq, UserName};
use dynamowave_store_nats::{NatsBackend, NatsConfig};
use tokio::task::JoinSet;

async fn node(config: NatsConfig, listener: Arc<dyn CommitListener>) -> Arc<dyn MessageLog> {
    let hub = Arc::new(NoHub);
    let fanout = Fanout {
        listener,
        rooms: hub.clone(),
        local: hub,
    };
    Box::new(NatsBackend::new(config))
        .open(fanout)
        .await
        .unwrap()
        .log
}

fn msg(user: &str, id: &str) -> NewMessage {
    NewMessage {
        room: RoomId::parse("hot.room").unwrap(),
        id: id.into(),
        user: UserName::parse(user).unwrap(),
        data: format!("from {user}"),
        event: None,
    }
}

#[tokio::test]
async fn two_nodes_hammering_one_room_get_every_seq_once() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let (la, lb) = (
        Arc::new(RecordingListener::default()),
        Arc::new(RecordingListener::default()),
    );
    let a = node(NatsConfig::new(nats.url()), la.clone()).await;
    let b = node(NatsConfig::new(nats.url()), lb.clone()).await;
    const PER_WRITER: usize = 60;
    let mut tasks = JoinSet::new();
    for (n, log) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_WRITER {
                let appended = log
                    .append(msg(&format!("w{n}"), &i.to_string()))
                    .await
                    .unwrap();
                assert!(!appended.duplicate);
                seqs.push(appended.message.seq.0);
            }
            seqs
        });
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    let total = 4 * PER_WRITER as u64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "no gap, no reuse");
    // Both nodes' fan-outs saw every message once, in seq order.
    for listener in [la, lb] {
        let seen: Vec<u64> = listener
            .wait_for(total as usize)
            .await
            .iter()
            .map(|m| m.seq.0)
            .collect();
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    }
    let room = RoomId::parse("hot.room").unwrap();
    assert_eq!(b.head(&room).await.unwrap(), Some(Seq(total)));
    let page = a
        .read(
            &room,
            HistoryQuery::After {
                seq: Seq(0),
                limit: 1000,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.messages.len() as u64, total);
    // A retry on the other node is a duplicate with the original seq.
    let first = a.append(msg("w0", "0")).await.unwrap();
    let again = b.append(msg("w0", "0")).await.unwrap();
    assert!(first.duplicate && again.duplicate);
    assert_eq!(first.message, again.message);
}

#[tokio::test]
async fn ids_are_remembered_past_the_duplicate_window() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let mut config = NatsConfig::new(nats.url());
    config.duplicate_window = Duration::from_secs(1);
    let log = node(config.clone(), Arc::new(RecordingListener::default())).await;
    let first = log.append(msg("ann", "late-retry")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Another node, after JetStream has forgotten the Nats-Msg-Id.
    config.node_id = "other".into();
    let other = node(config, Arc::new(RecordingListener::default())).await;
    let retry = other.append(msg("ann", "late-retry")).await.unwrap();
    assert!(retry.duplicate, "the id index still knows it");
    assert_eq!(retry.message, first.message);
    let next = other.append(msg("ann", "new")).await.unwrap();
    assert_eq!(next.message.seq, first.message.seq.next());
}

fn react(user: &str, id: &str, emoji: &str) -> NewMessage {
    NewMessage {
        event: Some(NewEvent::React {
            target: Seq(1),
            emoji: emoji.into(),
            on: true,
        }),
        data: String::new(),
        ..msg(user, id)
    }
}

/// Two nodes reacting to one message at once (and editing it, and sending): every reaction is
/// counted once, entries are gap-free, both fan-outs see every entry, and history shows the
/// message as the entries say. This is what the atomic batch with its expected version is for.
#[tokio::test]
async fn two_nodes_reacting_to_one_message_lose_no_reaction() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let (la, lb) = (
        Arc::new(RecordingListener::default()),
        Arc::new(RecordingListener::default()),
    );
    let a = node(NatsConfig::new(nats.url()), la.clone()).await;
    let b = node(NatsConfig::new(nats.url()), lb.clone()).await;
    a.append(msg("author", "m1")).await.unwrap();
    const PER_WRITER: usize = 25;
    let mut tasks = JoinSet::new();
    for (n, log) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.spawn(async move {
            for i in 0..PER_WRITER {
                let user = format!("u{n}-{i}");
                let emoji = if i % 2 == 0 { "👍" } else { "🎉" };
                log.append(react(&user, "r", emoji)).await.unwrap();
                if i % 5 == 0 {
                    log.append(msg(&user, "plain")).await.unwrap();
                }
            }
        });
    }
    tasks.spawn({
        let b = b.clone();
        async move {
            for i in 0..10 {
                let edit = NewMessage {
                    event: Some(NewEvent::Edit { target: Seq(1) }),
                    data: format!("edit {i}"),
                    ..msg("author", &format!("e{i}"))
                };
                b.append(edit).await.unwrap();
            }
        }
    });
    tasks.join_all().await;
    let reactions = 4 * PER_WRITER as u64;
    let total = 1 + reactions + 4 * (PER_WRITER as u64 / 5) + 10;
    let room = RoomId::parse("hot.room").unwrap();
    assert_eq!(a.head(&room).await.unwrap(), Some(Seq(total)));
    for listener in [la, lb] {
        let seen: Vec<u64> = listener
            .wait_for(total as usize)
            .await
            .iter()
            .map(|m| m.seq.0)
            .collect();
        assert_eq!(
            seen,
            (1..=total).collect::<Vec<_>>(),
            "every entry, in order"
        );
    }
    let page = b
        .read(&room, HistoryQuery::Latest { limit: 1000 })
        .await
        .unwrap();
    let first = page.messages.iter().find(|m| m.seq == Seq(1)).unwrap();
    assert_eq!(first.data, "edit 9", "the last edit wins");
    assert_eq!(
        first.reactions.values().sum::<u64>(),
        reactions,
        "no reaction lost: {:?}",
        first.reactions
    );
    assert_eq!(first.reactions["👍"], 4 * PER_WRITER.div_ceil(2) as u64);
    let entries = a.read_entries(&room, Seq(0), 1000).await.unwrap();
    assert_eq!(entries.messages.len() as u64, total, "messages and entries");
    // A retried reaction on the other node is the first one's duplicate.
    let again = a.append(react("u1-0", "r", "👍")).await.unwrap();
    assert!(again.duplicate);
    assert!(again.message.event.is_some());
}

/// Read positions moved from two nodes at once end at the highest.
#[tokio::test]
async fn read_positions_from_two_nodes_only_move_forward() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let a = node(
        NatsConfig::new(nats.url()),
        Arc::new(RecordingListener::default()),
    )
    .await;
    let b = node(
        NatsConfig::new(nats.url()),
        Arc::new(RecordingListener::default()),
    )
    .await;
    for i in 0..50 {
        a.append(msg("author", &i.to_string())).await.unwrap();
    }
    let room = RoomId::parse("hot.room").unwrap();
    let reader = UserName::parse("reader").unwrap();
    let mut tasks = JoinSet::new();
    for (n, log) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (room, reader) = (room.clone(), reader.clone());
        tasks.spawn(async move {
            // Node 0 marks 1, 3, 5, ...; node 1 marks 2, 4, 6, ...
            for seq in (1 + n as u64..=50).step_by(2) {
                let mark = log.mark_read(&room, &reader, Seq(seq)).await.unwrap();
                assert!(mark.seq >= Seq(seq));
            }
        });
    }
    tasks.join_all().await;
    assert_eq!(
        b.read_positions(&room).await.unwrap(),
        vec![(reader.clone(), Seq(50))]
    );
}

//! The DynamoDB store against the conformance suite every store passes, on a real moto server;
//! and what only a shared store has: writers in different processes racing for one room.

mod common;

use std::sync::Arc;

use common::{Moto, fresh_tables};
use dynamowave_core::conformance::{self, RecordingListener};
use dynamowave_core::ports::{
    CommitListener, ConnectionRecord, ConnectionStore, MessageLog, NewEvent, NewMessage, NoListener,
};
use dynamowave_core::protocol::{EntryEvent, HistoryQuery, Mode};
use dynamowave_core::types::{ConnectionId, RoomId, Seq, UserName};
use dynamowave_lambda::dynamo::{DynamoStore, RoomMember, create_tables};

async fn store(moto: &Moto, listener: Arc<dyn CommitListener>) -> DynamoStore {
    let client = moto.dynamodb().await;
    let tables = fresh_tables();
    create_tables(&client, &tables).await.unwrap();
    DynamoStore::new(client, tables, listener)
}

#[tokio::test]
async fn message_log_conforms() {
    let Some(moto) = Moto::start() else { return };
    let moto = &moto;
    conformance::message_log(|listener| async move {
        Arc::new(store(moto, listener).await) as Arc<dyn MessageLog>
    })
    .await;
}

#[tokio::test]
async fn events_conform() {
    let Some(moto) = Moto::start() else { return };
    let moto = &moto;
    conformance::events(|listener| async move {
        Arc::new(store(moto, listener).await) as Arc<dyn MessageLog>
    })
    .await;
}

#[tokio::test]
async fn connection_store_conforms() {
    let Some(moto) = Moto::start() else { return };
    let moto = &moto;
    conformance::connection_store(|| async move {
        Arc::new(store(moto, Arc::new(NoListener)).await) as Arc<dyn ConnectionStore>
    })
    .await;
}

fn record(id: &str, user: &str, mode: Mode) -> ConnectionRecord {
    ConnectionRecord {
        id: ConnectionId::parse(id).unwrap(),
        user: UserName::parse(user).unwrap(),
        mode,
        source_ip: "10.0.0.1".into(),
        user_agent: "test".into(),
        connected_at: dynamowave_core::types::now_ms(),
    }
}

#[tokio::test]
async fn the_room_index_answers_members_and_rows_carry_a_ttl() {
    let Some(moto) = Moto::start() else { return };
    let store = store(&moto, Arc::new(NoListener)).await;
    let room = RoomId::parse("lobby").unwrap();
    let (a, b) = (
        record("A=", "ann", Mode::V1),
        record("B=", "bob", Mode::Compat),
    );
    store.insert(&a).await.unwrap();
    store.insert(&b).await.unwrap();
    store.add_membership(&a.id, &room).await.unwrap();
    store.add_membership(&b.id, &room).await.unwrap();
    // A connection that is not recorded cannot join (a join racing its disconnect).
    let ghost = ConnectionId::parse("ghost").unwrap();
    store.add_membership(&ghost, &room).await.unwrap();
    let mut members = store.room_members(&room).await.unwrap();
    members.sort_by(|x, y| x.connection_id.cmp(&y.connection_id));
    assert_eq!(
        members,
        vec![
            RoomMember {
                connection_id: a.id.clone(),
                user: a.user.clone(),
                mode: Mode::V1
            },
            RoomMember {
                connection_id: b.id.clone(),
                user: b.user.clone(),
                mode: Mode::Compat
            },
        ]
    );

    let stored = store.connection(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (
            stored.record,
            stored.rooms,
            stored.greeted,
            stored.allowed_rooms
        ),
        (a.clone(), vec![room.clone()], false, None)
    );
    assert!(store.mark_greeted(&a.id).await.unwrap(), "the first greets");
    assert!(!store.mark_greeted(&a.id).await.unwrap(), "once only");
    assert!(!store.mark_greeted(&ghost).await.unwrap());
    store
        .restrict_rooms(&a.id, std::slice::from_ref(&room))
        .await
        .unwrap();
    let stored = store.connection(&a.id).await.unwrap().unwrap();
    assert_eq!(stored.allowed_rooms, Some(vec![room.clone()]));

    // Every item has a TTL near connectedAt + 2 h 10 min, the room index entries too.
    let scan = store
        .client()
        .scan()
        .table_name(&store.tables().connections)
        .send()
        .await
        .unwrap();
    let items = scan.items.unwrap();
    assert_eq!(
        items.len(),
        2 + 2 * 2,
        "two rows, two index and two reverse entries"
    );
    for item in &items {
        let ttl: u64 = item["expiresAt"].as_n().unwrap().parse().unwrap();
        assert_eq!(ttl, a.connected_at / 1000 + 7800, "{item:?}");
    }

    store.remove(&a.id).await.unwrap();
    let left = store.room_members(&room).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].connection_id, b.id);
    assert!(store.connection(&a.id).await.unwrap().is_none());
}

#[tokio::test]
async fn every_query_and_scan_reads_all_pages() {
    let Some(moto) = Moto::start() else { return };
    let client = moto.dynamodb().await;
    let tables = fresh_tables();
    create_tables(&client, &tables).await.unwrap();
    // Three items a page: 20 members, their rows and a connection in 5 rooms span many pages.
    let store = DynamoStore::with_page_size(client, tables, 3);
    let room = RoomId::parse("big").unwrap();
    for i in 0..20 {
        let r = record(&format!("conn-{i:02}"), &format!("u{i}"), Mode::V1);
        store.insert(&r).await.unwrap();
        store.add_membership(&r.id, &room).await.unwrap();
    }
    let first = ConnectionId::parse("conn-00").unwrap();
    for r in ["r1", "r2", "r3", "r4", "r5"] {
        store
            .add_membership(&first, &RoomId::parse(r).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(store.room_members(&room).await.unwrap().len(), 20);
    assert_eq!(store.list().await.unwrap().len(), 20);
    assert_eq!(
        store.connection(&first).await.unwrap().unwrap().rooms.len(),
        6
    );
    store.remove(&first).await.unwrap();
    assert_eq!(store.room_members(&room).await.unwrap().len(), 19);
    for r in ["r1", "r5"] {
        let members = store
            .room_members(&RoomId::parse(r).unwrap())
            .await
            .unwrap();
        assert!(members.is_empty(), "$disconnect left {r}");
    }
    assert_eq!(store.purge_stale().await.unwrap(), 19);
    // Read positions are a Query of the room's partition, paged the same way.
    let log = RoomId::parse("log").unwrap();
    for i in 0..3 {
        store
            .append(conformance::msg("log", "ann", &format!("m{i}"), "x"))
            .await
            .unwrap();
    }
    for i in 0..10 {
        let u = UserName::parse(&format!("u{i}")).unwrap();
        store.mark_read(&log, &u, Seq(1 + i % 3)).await.unwrap();
    }
    assert_eq!(store.read_positions(&log).await.unwrap().len(), 10);
    // History and replay page past event entries and tombstones, 3 items at a time.
    for i in 0..7 {
        store
            .append(conformance::event(
                "log",
                "bob",
                &format!("r{i}"),
                "",
                conformance::react(2, "👍", i % 2 == 0),
            ))
            .await
            .unwrap();
    }
    let page = store
        .read(&log, HistoryQuery::Latest { limit: 3 })
        .await
        .unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(!page.more);
    assert_eq!(
        page.messages[1].reactions,
        conformance::counts(&[("👍", 1)])
    );
    let replay = store.read_entries(&log, Seq(0), 100).await.unwrap();
    assert_eq!(replay.messages.len(), 10);
}

#[tokio::test]
async fn writers_in_two_processes_share_one_gap_free_sequence() {
    let Some(moto) = Moto::start() else { return };
    let client = moto.dynamodb().await;
    let tables = fresh_tables();
    create_tables(&client, &tables).await.unwrap();
    // Two stores on the same tables: two Lambda execution environments.
    let listeners = [
        Arc::new(RecordingListener::default()),
        Arc::new(RecordingListener::default()),
    ];
    let stores: Vec<DynamoStore> = listeners
        .iter()
        .map(|l| DynamoStore::new(client.clone(), tables.clone(), l.clone()))
        .collect();
    let room = RoomId::parse("race").unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, store) in stores.iter().enumerate() {
        for t in 0..3 {
            let (store, room) = (store.clone(), room.clone());
            tasks.spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..20 {
                    let a = store
                        .append(NewMessage {
                            room: room.clone(),
                            id: format!("{w}-{t}-{i}"),
                            user: UserName::parse("ann").unwrap(),
                            data: "x".into(),
                            event: None,
                        })
                        .await
                        .unwrap();
                    assert!(!a.duplicate);
                    seqs.push(a.message.seq.0);
                }
                seqs
            });
        }
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=120).collect::<Vec<_>>(), "no gap, no reuse");
    // Each process's listener saw its own commits, in seq order, once.
    let mut seen = 0;
    for l in &listeners {
        let s: Vec<u64> = l.seen().iter().map(|m| m.seq.0).collect();
        assert!(s.windows(2).all(|w| w[0] < w[1]), "in order: {s:?}");
        seen += s.len();
    }
    assert_eq!(seen, 120);
    let page = stores[0]
        .read(
            &room,
            HistoryQuery::After {
                seq: Seq(0),
                limit: 500,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 120);
    // A retry through the other process is a duplicate.
    let again = stores[1]
        .append(NewMessage {
            room: room.clone(),
            id: "0-0-0".into(),
            user: UserName::parse("ann").unwrap(),
            data: "x".into(),
            event: None,
        })
        .await
        .unwrap();
    assert!(again.duplicate);
}

#[tokio::test]
async fn events_from_two_processes_on_one_message_lose_no_update() {
    let Some(moto) = Moto::start() else { return };
    let client = moto.dynamodb().await;
    let tables = fresh_tables();
    create_tables(&client, &tables).await.unwrap();
    // Two stores on the same tables: their room locks do not see each other, so only the
    // conditions on the head and on the message's `rev` keep the reactions and edits apart.
    let stores: Vec<DynamoStore> = (0..2)
        .map(|_| DynamoStore::new(client.clone(), tables.clone(), Arc::new(NoListener)))
        .collect();
    let room = RoomId::parse("race").unwrap();
    stores[0]
        .append(conformance::msg("race", "ann", "m1", "v0"))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, store) in stores.iter().enumerate() {
        for t in 0..4 {
            let store = store.clone();
            tasks.spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..5 {
                    let user = format!("u{w}{t}{i}");
                    let r = store
                        .append(conformance::event(
                            "race",
                            &user,
                            "r",
                            "",
                            conformance::react(1, "👍", true),
                        ))
                        .await
                        .unwrap();
                    seqs.push(r.message.seq.0);
                    // The author edits in between, from both processes.
                    if t == 0 {
                        let e = store
                            .append(conformance::event(
                                "race",
                                "ann",
                                &format!("e{w}{i}"),
                                &format!("v{w}{i}"),
                                NewEvent::Edit { target: Seq(1) },
                            ))
                            .await
                            .unwrap();
                        seqs.push(e.message.seq.0);
                    }
                }
                seqs
            });
        }
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (2..=51).collect::<Vec<_>>(), "no gap, no reuse");
    let page = stores[1]
        .read(&room, HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    let m = &page.messages[0];
    assert_eq!(
        m.reactions,
        conformance::counts(&[("👍", 40)]),
        "every reaction counted"
    );
    // The text is the last edit's, the one with the highest seq.
    let entries = stores[0].read_entries(&room, Seq(1), 100).await.unwrap();
    assert_eq!(entries.messages.len(), 50);
    let last_edit = entries
        .messages
        .iter()
        .rev()
        .find(|e| matches!(e.event.as_deref(), Some(EntryEvent::Edit { .. })))
        .unwrap();
    assert_eq!(m.data, last_edit.data);
    assert_eq!(m.edited_at, Some(last_edit.ts));
    // Each reaction entry carries the counts just after it: they rise one by one in seq order.
    let counts: Vec<u64> = entries
        .messages
        .iter()
        .filter_map(|e| match e.event.as_deref() {
            Some(EntryEvent::Reaction { counts, .. }) => Some(counts["👍"]),
            _ => None,
        })
        .collect();
    assert_eq!(counts, (1..=40).collect::<Vec<_>>());
}

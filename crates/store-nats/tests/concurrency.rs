//! Two nodes (two stores on one stream) appending to one room at once, and idempotency past
//! JetStream's duplicate window: against a real nats-server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use dynamowave_core::conformance::RecordingListener;
use dynamowave_core::ports::{
    Backend, CommitListener, ConnectionDescription, Fanout, LocalConnections, MessageLog,
    NewMessage, PostError, RoomMembership,
};
use dynamowave_core::protocol::{HistoryQuery, Member, PresenceEvent};
use dynamowave_core::{ConnectionId, RoomId, Seq, UserName};
use dynamowave_store_nats::{NatsBackend, NatsConfig};
use tokio::task::JoinSet;

struct NoHub;

#[async_trait::async_trait]
impl RoomMembership for NoHub {
    fn join(&self, _: &ConnectionId, _: &RoomId) {}
    fn leave(&self, _: &ConnectionId, _: &RoomId) {}
    async fn members(&self, _: &RoomId) -> Result<Vec<Member>, dynamowave_core::ports::StoreError> {
        Ok(Vec::new())
    }
    fn presence(&self, _: &RoomId, _: PresenceEvent, _: &UserName, _: &ConnectionId) {}
    fn signal(&self, _: &RoomId, _: &str, _: Option<&ConnectionId>) {}
}

impl LocalConnections for NoHub {
    fn post(&self, _: &ConnectionId, _: String) -> Result<(), PostError> {
        Err(PostError::Gone)
    }
    fn describe(&self, _: &ConnectionId) -> Option<ConnectionDescription> {
        None
    }
    fn close(&self, _: &ConnectionId, _: u16, _: &str) -> bool {
        false
    }
}

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

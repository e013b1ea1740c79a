//! The cluster's webhook outbox against a real nats-server: an entry's event is queued with the
//! entry, and of two nodes only the lease holder hands out events to deliver.

mod common;

use std::sync::Arc;

use dynamowave_core::conformance::{NoHub, RecordingListener, msg};
use dynamowave_core::ports::{Backend, Fanout, Stores};
use dynamowave_store_nats::{NatsBackend, NatsConfig};
use serde_json::Value;

async fn node(url: &str, prefix: &str) -> Stores {
    let mut config = NatsConfig::new(url);
    config.prefix = prefix.into();
    config.webhooks = true;
    let hub = Arc::new(NoHub);
    let fanout = Fanout {
        listener: Arc::new(RecordingListener::default()),
        rooms: hub.clone(),
        local: hub,
    };
    Box::new(NatsBackend::new(config))
        .open(fanout)
        .await
        .unwrap()
}

#[tokio::test]
async fn one_node_at_a_time_hands_out_the_events_queued_with_their_entries() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let (a, b) = (node(&nats.url(), "WH").await, node(&nats.url(), "WH").await);
    for i in 1..=3 {
        a.log
            .append(msg("r", "ann", &format!("m{i}"), "hi"))
            .await
            .unwrap();
    }
    b.log.append(msg("r", "bob", "m4", "yo")).await.unwrap();
    let (oa, ob) = (a.outbox.clone().unwrap(), b.outbox.clone().unwrap());
    let from_a = oa.pending(10).await.unwrap();
    let from_b = ob.pending(10).await.unwrap();
    let (leader, events, other) = match (from_a.is_empty(), from_b.is_empty()) {
        (false, true) => (&oa, from_a, from_b),
        (true, false) => (&ob, from_b, from_a),
        _ => panic!("exactly one node leads: a has {from_a:?}, b has {from_b:?}"),
    };
    assert!(other.is_empty());
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.body).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "both nodes' entries, in commit order");
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    // A batch: the limit, then the rest after removing it.
    let first_two = leader.pending(2).await.unwrap();
    assert_eq!(first_two, events[..2]);
    assert_eq!(leader.remove_through(first_two[1].id).await.unwrap(), 2);
    assert_eq!(leader.pending(10).await.unwrap(), events[2..]);
    assert_eq!(leader.depth().await.unwrap(), 2);
    leader.remove_through(events[3].id).await.unwrap();
    assert!(leader.pending(10).await.unwrap().is_empty());
    assert_eq!(leader.depth().await.unwrap(), 0);
}

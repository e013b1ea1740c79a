//! The store conformance suite on the JetStream store, against a real nats-server.

mod common;

use std::sync::Arc;

use dynamowave_core::conformance;
use dynamowave_core::ports::{
    Backend, CommitListener, ConnectionDescription, Fanout, LocalConnections, PostError, Stores,
};
use dynamowave_core::protocol::{Member, PresenceEvent};
use dynamowave_core::{ConnectionId, RoomId, UserName};
use dynamowave_store_nats::{NatsBackend, NatsConfig};

/// A fan-out with no connections: only the commit listener matters here.
struct NoHub;

#[async_trait::async_trait]
impl dynamowave_core::ports::RoomMembership for NoHub {
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

/// A fresh cluster store: every case gets its own stream prefix on the one server.
async fn open(url: &str, listener: Arc<dyn CommitListener>) -> Stores {
    let hub = Arc::new(NoHub);
    let mut config = NatsConfig::new(url);
    config.prefix = format!("T{}", dynamowave_core::types::random_token(8));
    let fanout = Fanout {
        listener,
        rooms: hub.clone(),
        local: hub,
    };
    Box::new(NatsBackend::new(config))
        .open(fanout)
        .await
        .unwrap()
}

struct Discard;
impl CommitListener for Discard {
    fn committed(&self, _: &[Arc<dynamowave_core::protocol::ChatMessage>]) {}
}

#[tokio::test]
async fn jetstream_log_passes_the_conformance_suite() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let url = nats.url();
    conformance::message_log(|listener| {
        let url = url.clone();
        async move { open(&url, listener).await.log }
    })
    .await;
}

#[tokio::test]
async fn jetstream_log_passes_the_events_suite() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let url = nats.url();
    conformance::events(|listener| {
        let url = url.clone();
        async move { open(&url, listener).await.log }
    })
    .await;
}

#[tokio::test]
async fn kv_connections_pass_the_conformance_suite() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let url = nats.url();
    conformance::connection_store(|| {
        let url = url.clone();
        async move { open(&url, Arc::new(Discard)).await.connections }
    })
    .await;
}

#[tokio::test]
async fn kv_dead_letters_pass_the_conformance_suite() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    let url = nats.url();
    conformance::dead_letters(|| {
        let url = url.clone();
        async move { open(&url, Arc::new(Discard)).await.dead_letters }
    })
    .await;
}

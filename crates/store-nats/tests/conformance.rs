//! The store conformance suite on the JetStream store, against a real nats-server.

mod common;

use std::sync::Arc;

use dynamowave_core::conformance::{self, NoHub};
use dynamowave_core::ports::{Backend, CommitListener, Fanout, Stores};
use dynamowave_store_nats::{NatsBackend, NatsConfig};

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

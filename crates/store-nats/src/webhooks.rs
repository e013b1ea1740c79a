//! Webhooks in a cluster: the outbox is the `dw.hook.>` subjects of the messages stream.
//!
//! - An entry's event (`message`, `edit`, `delete`, `reaction`) is `dw.hook.<room>.<seq>`,
//!   published in the **same atomic batch** as the entry ([`crate::log`]), so it is queued if
//!   and only if the entry was committed.
//! - A connection's event (`connect`, `disconnect`, `join`, `leave`) is
//!   `dw.hook.c.<node>.<token>`, published by the node that changed the row, right after the
//!   row's KV write ([`HookEvents`]): the row lives in another stream (the `DW_CONNECTIONS`
//!   bucket), which one batch cannot span, so a node that dies between the two loses that one
//!   event (docs/cluster.md).
//!
//! Outbox ids are stream sequences: increasing in commit order across the cluster. One node at
//! a time delivers: [`StreamOutbox::pending`] answers nothing on a node that does not hold the
//! lease (a key of the `DW_WEBHOOKS` bucket naming the node and until when, renewed by
//! compare-and-set), so a batch is not POSTed by every node. A holder that stalls past its lease
//! is replaced; the two may then POST the same events (at least once; receivers dedupe by id).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::jetstream::{self, consumer, kv};
use async_trait::async_trait;
use bytes::Bytes;
use dynamowave_core::ports::{OutboxEntry, StoreError, WebhookOutbox};
use dynamowave_core::types::{now_ms, random_token};
use futures_util::StreamExt as _;

use crate::backend;
use crate::names::Names;

/// The lease's key in the `DW_WEBHOOKS` bucket.
const LEASE_KEY: &str = "dispatcher";
/// How often a node asks again for `depth` (the dispatcher asks on every empty poll).
const DEPTH_EVERY: Duration = Duration::from_secs(1);

/// Publishes connections' webhook events (a store opened with webhooks on).
#[derive(Clone)]
pub struct HookEvents {
    js: jetstream::Context,
    names: Names,
    node: String,
}

impl HookEvents {
    pub fn new(js: jetstream::Context, names: Names, node: String) -> Self {
        HookEvents { js, names, node }
    }

    /// Queues `body`, after the row change it reports was written. A NATS that refuses it
    /// three times loses it (said in the log): the change itself has happened.
    pub async fn connection(&self, body: String) {
        let subject = self
            .names
            .connection_hook(&self.node, &random_token(16).to_ascii_lowercase());
        let body = Bytes::from(body);
        for attempt in 1..=3 {
            let sent = match self.js.publish(subject.clone(), body.clone()).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(()) => return,
                Err(error) if attempt == 3 => {
                    tracing::error!(%error, "webhooks: a connection event could not be queued and is lost");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * attempt)).await,
            }
        }
    }
}

/// The cluster's webhook outbox ([`WebhookOutbox`]) on the messages stream.
pub struct StreamOutbox {
    client: async_nats::Client,
    stream: Stream,
    names: Names,
    lease: kv::Store,
    node: String,
    lease_ttl: Duration,
    /// Until when this node holds the lease, by its own clock.
    held_until: Mutex<Option<Instant>>,
    depth: Mutex<Option<(Instant, u64)>>,
}

impl StreamOutbox {
    pub fn new(
        client: async_nats::Client,
        stream: Stream,
        names: Names,
        lease: kv::Store,
        node: String,
        lease_ttl: Duration,
    ) -> Self {
        StreamOutbox {
            client,
            stream,
            names,
            lease,
            node,
            lease_ttl,
            held_until: Mutex::new(None),
            depth: Mutex::new(None),
        }
    }

    /// Whether this node is the one that delivers: takes the lease when it is free or expired,
    /// renews it when less than two thirds of it is left.
    async fn lead(&self) -> Result<bool, StoreError> {
        let held = *self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some_and(|until| Instant::now() + self.lease_ttl * 2 / 3 < until) {
            return Ok(true);
        }
        let now = now_ms();
        let value = || {
            Bytes::from(format!(
                "{} {}",
                self.node,
                now + self.lease_ttl.as_millis() as u64
            ))
        };
        let entry = self
            .lease
            .entry(LEASE_KEY)
            .await
            .map_err(|e| backend("reading the webhook lease", e))?;
        let won = match entry {
            None => self.lease.create(LEASE_KEY, value()).await.is_ok(),
            Some(entry) => {
                let text = String::from_utf8_lossy(&entry.value);
                let (holder, until) = text.split_once(' ').unwrap_or(("", "0"));
                let free = holder == self.node
                    || until.parse::<u64>().unwrap_or(0) < now
                    || entry.operation != kv::Operation::Put;
                // Compare-and-set: of two nodes taking a free lease, one wins.
                free && self
                    .lease
                    .update(LEASE_KEY, value(), entry.revision)
                    .await
                    .is_ok()
            }
        };
        *self.held_until.lock().unwrap_or_else(|e| e.into_inner()) =
            won.then(|| Instant::now() + self.lease_ttl);
        Ok(won)
    }

    /// The hook events from stream sequence `start` on, at most `limit` (`None`: all there are,
    /// counted only).
    async fn read_from(
        &self,
        start: u64,
        limit: Option<usize>,
    ) -> Result<(u64, Vec<OutboxEntry>), StoreError> {
        let config = consumer::push::OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            filter_subject: self.names.all_hooks(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        };
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| backend("reading the webhook outbox", e))?;
        let pending = consumer.cached_info().num_pending;
        let Some(limit) = limit else {
            return Ok((pending, Vec::new()));
        };
        let want = (pending as usize).min(limit);
        let mut entries = Vec::with_capacity(want);
        if want == 0 {
            return Ok((pending, entries));
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| backend("reading the webhook outbox", e))?;
        while entries.len() < want {
            let message = match tokio::time::timeout(Duration::from_secs(5), messages.next()).await
            {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(backend("reading the webhook outbox", e)),
                Ok(None) | Err(_) => break,
            };
            let id = message
                .info()
                .map_err(|e| backend("reading the webhook outbox", e))?
                .stream_sequence;
            let body = String::from_utf8(message.payload.to_vec())
                .map_err(|_| StoreError::Backend(format!("webhook event {id} is not UTF-8")))?;
            entries.push(OutboxEntry { id, body });
        }
        Ok((pending, entries))
    }
}

#[async_trait]
impl WebhookOutbox for StreamOutbox {
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        if !self.lead().await? {
            return Ok(Vec::new());
        }
        // One direct get says whether there is anything (the usual answer when idle: no)
        // before a consumer is made to read a batch.
        let first = match self
            .stream
            .direct_get_next_for_subject(self.names.all_hooks(), None)
            .await
        {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(backend("reading the webhook outbox", e)),
        };
        Ok(self.read_from(first, Some(limit)).await?.1)
    }

    async fn remove_through(&self, id: u64) -> Result<u64, StoreError> {
        let purged = self
            .stream
            .purge()
            .filter(self.names.all_hooks())
            .sequence(id + 1)
            .await
            .map_err(|e| backend("removing delivered webhook events", e))?;
        *self.depth.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(purged.purged)
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        if let Some((at, depth)) = *self.depth.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < DEPTH_EVERY
        {
            return Ok(depth);
        }
        let (depth, _) = self.read_from(1, None).await?;
        *self.depth.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), depth));
        Ok(depth)
    }
}

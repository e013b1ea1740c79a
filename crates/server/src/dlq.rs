//! Dead letters: what the server took responsibility for and could not deliver, kept durably
//! by the store (the core's [`DeadLetters`] port; in SQLite, the `dead_letters` table) with the
//! reason, the time and the payload, until an operator replays or purges it.
//!
//! Where they come from. Chat messages never need one: a `sendmessage` is acked only after its
//! commit, and a member that misses a live delivery resumes from history. What has no history
//! to fall back on is a `POST /@connections/{id}` payload, so that is what is dead-lettered:
//! - the connection is gone when the post arrives (the caller also gets 410 Gone);
//! - the post was accepted (200) but the connection ended before the frame was written and
//!   flushed (slow-consumer close, write timeout, the client went away, shutdown).
//!
//! A third kind: a batch of webhook events the product's backend kept refusing
//! (`crate::webhooks`); its replay POSTs it to the configured `--webhook-url` again.
//!
//! Replay re-posts the payload to the original connection or to one the operator names. It is
//! idempotent: an entry is claimed (marked replayed) in the store before the delivery is tried,
//! so a second replay of the same id delivers nothing and says when it was replayed; a failed
//! delivery releases the claim and counts the attempt.

use std::sync::Arc;

use dynamowave_core::ConnectionId;
use dynamowave_core::ports::{
    Claim, DeadLetter, DeadLetterKind, DeadLetters, NewDeadLetter, Purge, StoreError,
};
use dynamowave_core::retry::RetryPolicy;

use crate::hub::{Hub, SendError};

/// How a replay ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// Delivered (queued to the live connection) now.
    Delivered { to: String },
    /// An earlier replay delivered it; nothing was sent again.
    Already { at: u64, to: String },
}

/// Why a replay failed. The entry stays pending (except `NotFound`).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("dead letter {0} does not exist")]
    NotFound(u64),
    #[error("connection {0} is not connected; the dead letter stays pending")]
    Gone(String),
    #[error(
        "connection {0} is not reading (its outbound queue is full); the dead letter stays pending"
    )]
    Full(String),
    #[error(
        "dead letter {0} is a webhook batch: it is replayed to the webhook URL, not to a connection"
    )]
    NotForAConnection(u64),
    #[error(
        "dead letter {0} is a webhook batch and this server has no --webhook-url to send it to"
    )]
    NoWebhook(u64),
    #[error("the webhook backend did not take dead letter {0} ({1}); it stays pending")]
    Webhook(u64, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The dead-letter queue: the store's dead letters, and replay through the hub.
pub struct DeadLetterQueue {
    store: Arc<dyn DeadLetters>,
    hub: Arc<Hub>,
    retry: RetryPolicy,
    /// Where webhook batches are replayed to (`--webhook-url`).
    webhook: Option<Arc<crate::webhooks::WebhookClient>>,
}

impl DeadLetterQueue {
    pub fn new(store: Arc<dyn DeadLetters>, hub: Arc<Hub>) -> Self {
        DeadLetterQueue {
            store,
            hub,
            retry: RetryPolicy::default(),
            webhook: None,
        }
    }

    /// Replays webhook batches with `client`.
    pub fn with_webhook(mut self, client: Option<Arc<crate::webhooks::WebhookClient>>) -> Self {
        self.webhook = client;
        self
    }

    /// Records an entry (with the store's retries). When even that fails the payload is lost;
    /// the error is logged with what would let an operator find it, never the payload itself.
    pub async fn add(&self, entry: NewDeadLetter) -> Result<u64, StoreError> {
        // The payload is shared, so the copy kept for retries is cheap. A failed add stored
        // nothing (the port's contract), so a retried entry is recorded once.
        let result = self.retry.run(|| self.store.add(entry.clone())).await;
        let (target, reason, bytes) = (&entry.target, &entry.reason, entry.payload.len());
        match &result {
            Ok(id) => {
                tracing::warn!(id, kind = entry.kind.as_str(), %target, %reason, bytes, "dead-lettered")
            }
            Err(e) => {
                tracing::error!(error = %e, %target, %reason, bytes, "could not record a dead letter; the payload is lost")
            }
        }
        result
    }

    pub async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.store.get(id).await
    }

    pub async fn list(
        &self,
        after: u64,
        limit: usize,
        pending_only: bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.store.list(after, limit, pending_only).await
    }

    /// Entries not replayed yet. Also sets the `dynamowave_dlq_depth` gauge: `/metrics` calls
    /// this before it renders, so the gauge is exact at every scrape without being refreshed
    /// on each change.
    pub async fn depth(&self) -> Result<u64, StoreError> {
        let depth = self.store.depth().await?;
        metrics::gauge!("dynamowave_dlq_depth").set(depth as f64);
        Ok(depth)
    }

    pub async fn purge(&self, which: Purge) -> Result<u64, StoreError> {
        self.store.purge(which).await
    }

    /// Re-posts entry `id` to `to` (its original connection when `None`). See the module docs.
    pub async fn replay(&self, id: u64, to: Option<ConnectionId>) -> Result<Replayed, ReplayError> {
        let Some(stored) = self.store.get(id).await? else {
            return Err(ReplayError::NotFound(id));
        };
        if stored.kind == DeadLetterKind::Webhook {
            if to.is_some() {
                return Err(ReplayError::NotForAConnection(id));
            }
            return self.replay_webhook(id).await;
        }
        let target = match &to {
            Some(c) => c.as_str().to_owned(),
            None => stored.target,
        };
        let entry = match self.store.claim(id, target.clone()).await? {
            Claim::Claimed(entry) => entry,
            Claim::AlreadyReplayed { at, to } => return Ok(Replayed::Already { at, to }),
            Claim::NotFound => return Err(ReplayError::NotFound(id)),
        };
        let handle = ConnectionId::parse(&target)
            .ok()
            .and_then(|c| self.hub.connection(&c));
        let sent = match handle {
            Some(h) => h.post(&entry.payload),
            None => Err(SendError::Gone),
        };
        let failure = match sent {
            Ok(()) => return Ok(Replayed::Delivered { to: target }),
            Err(SendError::Gone) => ReplayError::Gone(target),
            Err(SendError::Full) => ReplayError::Full(target),
        };
        self.store.release(id, failure.to_string()).await?;
        Err(failure)
    }

    /// A webhook batch, POSTed to the configured URL once more (claimed first, as a post).
    async fn replay_webhook(&self, id: u64) -> Result<Replayed, ReplayError> {
        let Some(client) = &self.webhook else {
            return Err(ReplayError::NoWebhook(id));
        };
        let entry = match self.store.claim(id, client.url().to_owned()).await? {
            Claim::Claimed(entry) => entry,
            Claim::AlreadyReplayed { at, to } => return Ok(Replayed::Already { at, to }),
            Claim::NotFound => return Err(ReplayError::NotFound(id)),
        };
        match client.post(&entry.payload).await {
            Ok(()) => Ok(Replayed::Delivered {
                to: client.url().to_owned(),
            }),
            Err(reason) => {
                let failure = ReplayError::Webhook(id, reason);
                self.store.release(id, failure.to_string()).await?;
                Err(failure)
            }
        }
    }
}

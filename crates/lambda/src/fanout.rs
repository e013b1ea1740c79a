//! Posting to connections: a committed message to its room's members, presence to the room's
//! other v1 members, replies to the caller.
//!
//! Only the room's members are posted to (one Query of the room index, not the original's scan
//! of every connection), `concurrency` posts at a time (not the original's one after another).
//! A 410 means the *recipient's* row is stale: it is deleted (the AWS sample deletes the
//! sender's). Other failures are retried with backoff, then dead-lettered to SQS.

use std::sync::Arc;
use std::time::Duration;

use dynamowave_core::ports::ConnectionStore;
use dynamowave_core::protocol::{ChatMessage, Mode, ServerFrame};
use dynamowave_core::types::{ConnectionId, RoomId, now_ms};
use futures_util::StreamExt;
use rand::Rng;

use crate::connections_api::{ConnectionsApi, PostFailure};
use crate::dead_letters::{DeadLetter, SqsDeadLetters};
use crate::dynamo::{DynamoStore, RoomMember};

/// How one post ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostOutcome {
    Delivered,
    /// The connection is gone (410).
    Gone,
    /// It kept failing and is in the dead-letter queue (or, with no queue, in the log).
    DeadLettered,
}

pub struct Fanout {
    pub api: ConnectionsApi,
    pub dlq: Option<SqsDeadLetters>,
    pub store: DynamoStore,
    /// The `@connections` base URL.
    pub endpoint: Arc<str>,
    pub concurrency: usize,
    pub attempts: u32,
    pub backoff: Duration,
}

/// Counts of one fan-out, logged per message.
#[derive(Default)]
struct Tally {
    delivered: usize,
    gone: usize,
    dead_lettered: usize,
}

impl Fanout {
    /// Posts `payload` to one connection: retried with backoff and full jitter, then
    /// dead-lettered. Gone is reported at once (a 410 does not heal).
    pub async fn post(&self, id: &ConnectionId, user: Option<&str>, payload: &[u8]) -> PostOutcome {
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match self.api.post(&self.endpoint, id.as_str(), payload).await {
                Ok(()) => return PostOutcome::Delivered,
                Err(PostFailure::Gone) => return PostOutcome::Gone,
                Err(PostFailure::TooLarge) => {
                    last = "payload too large (API Gateway's limit is 128 KB)".into();
                    break;
                }
                Err(PostFailure::Failed(e)) => {
                    tracing::debug!(connection = %id, attempt, error = %e, "post failed");
                    last = e;
                }
            }
            if attempt < self.attempts {
                let jittered = rand::rng().random_range(0..=wait.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(jittered)).await;
                wait *= 4;
            }
        }
        self.dead_letter(id, user, payload, last).await;
        PostOutcome::DeadLettered
    }

    async fn dead_letter(
        &self,
        id: &ConnectionId,
        user: Option<&str>,
        payload: &[u8],
        reason: String,
    ) {
        let letter = DeadLetter {
            kind: "post_to_connection".into(),
            endpoint: self.endpoint.to_string(),
            target: id.to_string(),
            user: user.map(str::to_owned),
            reason,
            payload: String::from_utf8_lossy(payload).into_owned(),
            created_at: now_ms(),
            attempts: self.attempts,
        };
        let Some(dlq) = &self.dlq else {
            tracing::error!(connection = %id, reason = %letter.reason, "post failed and no DLQ_URL is set: dropped");
            return;
        };
        if let Err(e) = dlq.send(&letter).await {
            // Nowhere left to keep it: say everything needed to replay it by hand.
            tracing::error!(connection = %id, error = %e, letter = ?letter, "dead letter not queued");
        } else {
            tracing::warn!(connection = %id, reason = %letter.reason, "post dead-lettered");
        }
    }

    /// A 410 from a recipient: its `$disconnect` never ran; remove its rows now.
    async fn remove_stale(&self, id: &ConnectionId) {
        match self.store.remove(id).await {
            Ok(()) => tracing::info!(connection = %id, "stale connection removed (410 Gone)"),
            Err(e) => tracing::warn!(connection = %id, error = %e, "stale connection not removed"),
        }
    }

    /// Posts a committed message to every member of its room, each in its own form (compat:
    /// the raw text, as the original; v1: a `message` frame), each form encoded once.
    pub async fn message(&self, message: &Arc<ChatMessage>) {
        let members = match self.store.room_members(&message.room).await {
            Ok(members) => members,
            Err(e) => {
                // Committed and acked: members catch up with `join {after}` / history.
                tracing::error!(room = %message.room, seq = message.seq.0, error = %e, "no fan-out: the room index could not be read");
                return;
            }
        };
        let v1 = ServerFrame::entry(message).to_json();
        // Edits, deletions and reactions have no compat form (the AWS sample's raw text).
        let members: Vec<RoomMember> = if message.is_message() {
            members
        } else {
            members.into_iter().filter(|m| m.mode == Mode::V1).collect()
        };
        let compat = message.data.as_bytes();
        let tally = self
            .post_all(&members, |m| match m.mode {
                Mode::Compat => compat,
                Mode::V1 => v1.as_bytes(),
            })
            .await;
        tracing::info!(
            room = %message.room,
            seq = message.seq.0,
            members = members.len(),
            delivered = tally.delivered,
            gone = tally.gone,
            dead_lettered = tally.dead_lettered,
            "fan-out"
        );
    }

    /// A frame that is not stored (presence, read receipts, typing) to the room's v1 members
    /// other than `except`; not dead-lettered: a lost presence frame is corrected by the next
    /// `members`, a read position by the next `join`, and typing expires anyway.
    pub async fn signal(&self, room: &RoomId, except: Option<&ConnectionId>, frame: String) {
        let members = match self.store.room_members(room).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "no presence: the room index could not be read");
                return;
            }
        };
        let targets: Vec<RoomMember> = members
            .into_iter()
            .filter(|m| m.mode == Mode::V1 && Some(&m.connection_id) != except)
            .collect();
        let payload = frame.as_bytes();
        futures_util::stream::iter(&targets)
            .for_each_concurrent(self.concurrency, |m| async move {
                match self.api.post(&self.endpoint, m.connection_id.as_str(), payload).await {
                    Ok(()) => {}
                    Err(PostFailure::Gone) => self.remove_stale(&m.connection_id).await,
                    Err(e) => tracing::debug!(connection = %m.connection_id, error = ?e, "presence not posted"),
                }
            })
            .await;
    }

    async fn post_all<'p>(
        &self,
        members: &[RoomMember],
        payload: impl Fn(&RoomMember) -> &'p [u8],
    ) -> Tally {
        let outcomes: Vec<PostOutcome> = futures_util::stream::iter(members)
            .map(|m| {
                let body = payload(m);
                async move {
                    let outcome = self
                        .post(&m.connection_id, Some(m.user.as_str()), body)
                        .await;
                    if outcome == PostOutcome::Gone {
                        self.remove_stale(&m.connection_id).await;
                    }
                    outcome
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut tally = Tally::default();
        for o in outcomes {
            match o {
                PostOutcome::Delivered => tally.delivered += 1,
                PostOutcome::Gone => tally.gone += 1,
                PostOutcome::DeadLettered => tally.dead_lettered += 1,
            }
        }
        tally
    }
}

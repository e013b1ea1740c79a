//! Retries of transient store failures: a [`MessageLog`] wrapper that tries again with
//! exponential backoff and full jitter, within a bound. When the bound is reached the error goes
//! to the caller, who tells the client `unavailable` with `retryAfterMs`: never a silent drop,
//! never an ack for an unsaved message.
//!
//! Retrying an append is safe even when a failure was reported after the data reached the disk:
//! the store deduplicates on `(room, user, id)` and returns the first commit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use crate::ports::{
    Appended, Deletion, MessageLog, NewMessage, QueuedAppend, ReadMark, StoreError,
};
use crate::protocol::{HistoryQuery, Page};
use crate::types::{RoomId, Seq, UserName};

/// How hard to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The first backoff's upper bound; it doubles on every retry.
    pub base: Duration,
    /// The largest backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// Four tries within about a second: long enough to ride out a busy disk or a checkpoint,
    /// short enough that a client waiting for its ack hears about a real outage quickly.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(50),
            cap: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based): uniform in [0, min(cap, base·2^(retry-1))].
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << (retry - 1).min(16))
            .min(self.cap);
        ceiling.mul_f64(rand::rng().random::<f64>())
    }

    /// Runs `op` until it succeeds, fails for good, or the attempts are used up.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                // Closed is not transient: the server is shutting down.
                Err(StoreError::Backend(_)) if attempt < self.attempts => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A [`MessageLog`] that retries its inner log's transient failures.
pub struct RetryingLog {
    inner: Arc<dyn MessageLog>,
    policy: RetryPolicy,
}

impl RetryingLog {
    pub fn new(inner: Arc<dyn MessageLog>, policy: RetryPolicy) -> Self {
        RetryingLog { inner, policy }
    }
}

#[async_trait]
impl MessageLog for RetryingLog {
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        // One copy per message (not per recipient), kept for the retries.
        self.policy.run(|| self.inner.append(message.clone())).await
    }

    /// A queued append that fails transiently is retried with `append`: it then commits
    /// after appends queued later (no loss, no duplicate: its id is kept).
    fn queue_append(&self, message: NewMessage) -> Result<QueuedAppend, NewMessage> {
        let queued = self.inner.queue_append(message.clone())?;
        let (inner, policy) = (self.inner.clone(), self.policy);
        Ok(Box::pin(async move {
            match queued.await {
                Err(StoreError::Backend(_)) if policy.attempts > 1 => {
                    tokio::time::sleep(policy.backoff(1)).await;
                    let retry = RetryPolicy {
                        attempts: policy.attempts - 1,
                        ..policy
                    };
                    retry.run(|| inner.append(message.clone())).await
                }
                other => other,
            }
        }))
    }

    async fn create_room(&self, room: &RoomId) -> Result<Seq, StoreError> {
        self.policy.run(|| self.inner.create_room(room)).await
    }

    async fn head(&self, room: &RoomId) -> Result<Option<Seq>, StoreError> {
        self.policy.run(|| self.inner.head(room)).await
    }

    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<Page, StoreError> {
        self.policy.run(|| self.inner.read(room, query)).await
    }

    async fn delete(&self, room: &RoomId, seq: Seq) -> Result<Deletion, StoreError> {
        self.policy.run(|| self.inner.delete(room, seq)).await
    }

    async fn read_entries(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.policy
            .run(|| self.inner.read_entries(room, after, limit))
            .await
    }

    async fn mark_read(
        &self,
        room: &RoomId,
        user: &UserName,
        seq: Seq,
    ) -> Result<ReadMark, StoreError> {
        self.policy
            .run(|| self.inner.mark_read(room, user, seq))
            .await
    }

    async fn read_positions(&self, room: &RoomId) -> Result<Vec<(UserName, Seq)>, StoreError> {
        self.policy.run(|| self.inner.read_positions(room)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::memory::MemoryLog;
    use crate::ports::NoListener;
    use crate::types::UserName;

    /// Fails the first `failures` appends, then passes them on.
    struct Flaky {
        inner: MemoryLog,
        failures: AtomicU32,
        calls: AtomicU32,
    }

    #[async_trait]
    impl MessageLog for Flaky {
        async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let left = self.failures.load(Ordering::Relaxed);
            if left > 0 {
                self.failures.store(left - 1, Ordering::Relaxed);
                return Err(StoreError::Backend("disk I/O error (injected)".into()));
            }
            self.inner.append(m).await
        }
        async fn create_room(&self, room: &RoomId) -> Result<Seq, StoreError> {
            self.inner.create_room(room).await
        }
        async fn head(&self, room: &RoomId) -> Result<Option<Seq>, StoreError> {
            self.inner.head(room).await
        }
        async fn read(&self, room: &RoomId, q: HistoryQuery) -> Result<Page, StoreError> {
            self.inner.read(room, q).await
        }
        async fn delete(&self, room: &RoomId, seq: Seq) -> Result<Deletion, StoreError> {
            self.inner.delete(room, seq).await
        }
    }

    fn flaky(failures: u32) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: MemoryLog::new(Arc::new(NoListener)),
            failures: AtomicU32::new(failures),
            calls: AtomicU32::new(0),
        })
    }

    fn message() -> NewMessage {
        NewMessage::message(
            RoomId::parse("r").unwrap(),
            "m1".into(),
            UserName::parse("ann").unwrap(),
            "hi".into(),
        )
    }

    const QUICK: RetryPolicy = RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
    };

    #[tokio::test]
    async fn transient_failures_within_the_bound_are_ridden_out() {
        let store = flaky(3);
        let log = RetryingLog::new(store.clone(), QUICK);
        let appended = log
            .append(message())
            .await
            .expect("the fourth try succeeds");
        assert_eq!(appended.message.seq, Seq(1));
        assert_eq!(store.calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn past_the_bound_the_caller_is_told_and_nothing_is_stored() {
        let store = flaky(4);
        let log = RetryingLog::new(store.clone(), QUICK);
        let err = log.append(message()).await.unwrap_err();
        assert_eq!(
            store.calls.load(Ordering::Relaxed),
            4,
            "exactly `attempts` tries"
        );
        let client_error = crate::ChatError::from(err);
        assert_eq!(client_error.code, crate::ErrorCode::Unavailable);
        assert!(client_error.retry_after_ms.is_some());
        assert_eq!(
            store
                .inner
                .head(&RoomId::parse("r").unwrap())
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_closed_store_is_not_retried() {
        let policy = QUICK;
        let mut calls = 0;
        let result: Result<(), _> = policy
            .run(|| {
                calls += 1;
                async { Err(StoreError::Closed) }
            })
            .await;
        assert!(matches!(result, Err(StoreError::Closed)));
        assert_eq!(calls, 1);
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let p = RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        };
        for _ in 0..200 {
            assert!(p.backoff(1) <= Duration::from_millis(10));
            assert!(p.backoff(2) <= Duration::from_millis(20));
            assert!(p.backoff(8) <= Duration::from_millis(50), "capped");
        }
    }
}

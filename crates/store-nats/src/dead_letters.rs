//! [`KvDeadLetters`]: the dead-letter queue in a JetStream KV bucket (`DW_DEADLETTERS`), one key
//! `e.<id>` per entry holding the entry as JSON.
//!
//! Ids are the revisions of writes to the bucket's `seq` key: unique, increasing, never reused
//! (a stream sequence never goes back). A claim is a compare-and-set on the entry's revision,
//! so of two nodes replaying one entry at once exactly one wins.

use async_nats::jetstream::kv;
use async_trait::async_trait;
use dynamowave_core::ports::{Claim, DeadLetter, DeadLetters, NewDeadLetter, Purge};
use dynamowave_core::types::now_ms;
use futures_util::StreamExt as _;

use crate::{StoreError, backend};

pub struct KvDeadLetters {
    kv: kv::Store,
}

fn key(id: u64) -> String {
    format!("e.{id}")
}

impl KvDeadLetters {
    pub fn new(kv: kv::Store) -> Self {
        KvDeadLetters { kv }
    }

    /// The entry and its revision.
    async fn load(&self, id: u64) -> Result<Option<(DeadLetter, u64)>, StoreError> {
        let entry = self
            .kv
            .entry(key(id))
            .await
            .map_err(|e| backend("reading a dead letter", e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let letter = serde_json::from_slice(&e.value).map_err(|err| {
                    StoreError::Backend(format!("dead letter {id} is not readable: {err}"))
                })?;
                Ok(Some((letter, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `letter` if the entry is still at `revision`; `false` when it moved.
    async fn replace(&self, letter: &DeadLetter, revision: u64) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(letter).map_err(|e| StoreError::Backend(e.to_string()))?;
        match self.kv.update(key(letter.id), bytes.into(), revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(backend("updating a dead letter", e)),
        }
    }

    /// Every id, ascending.
    async fn ids(&self) -> Result<Vec<u64>, StoreError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| backend("listing dead letters", e))?;
        let mut ids = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| backend("listing dead letters", e))?;
            if let Some(id) = k.strip_prefix("e.").and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    async fn all(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for id in self.ids().await? {
            if let Some((letter, _)) = self.load(id).await? {
                out.push(letter);
            }
        }
        Ok(out)
    }

    async fn remove(&self, id: u64) -> Result<(), StoreError> {
        // A purge leaves a marker; the bucket keeps one value per key, so it is all that stays.
        self.kv
            .purge(key(id))
            .await
            .map_err(|e| backend("purging a dead letter", e))
    }
}

#[async_trait]
impl DeadLetters for KvDeadLetters {
    async fn add(&self, e: NewDeadLetter) -> Result<u64, StoreError> {
        let id = self
            .kv
            .put("seq", bytes::Bytes::new())
            .await
            .map_err(|e| backend("numbering a dead letter", e))?;
        let letter = DeadLetter {
            id,
            created_at: now_ms(),
            kind: e.kind,
            target: e.target,
            user: e.user,
            reason: e.reason,
            payload: e.payload.to_string(),
            attempts: 1,
            last_error: None,
            replayed_at: None,
            replayed_to: None,
        };
        let bytes = serde_json::to_vec(&letter).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.kv
            .create(key(id), bytes.into())
            .await
            .map_err(|e| backend("recording a dead letter", e))?;
        Ok(id)
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.load(id).await?.map(|(letter, _)| letter))
    }

    async fn list(
        &self,
        after: u64,
        limit: usize,
        pending_only: bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for id in self.ids().await?.into_iter().filter(|&id| id > after) {
            if out.len() == limit {
                break;
            }
            if let Some((letter, _)) = self.load(id).await?
                && (!pending_only || letter.replayed_at.is_none())
            {
                out.push(letter);
            }
        }
        Ok(out)
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        Ok(self
            .all()
            .await?
            .iter()
            .filter(|l| l.replayed_at.is_none())
            .count() as u64)
    }

    async fn claim(&self, id: u64, to: String) -> Result<Claim, StoreError> {
        loop {
            let Some((letter, revision)) = self.load(id).await? else {
                return Ok(Claim::NotFound);
            };
            if let (Some(at), Some(to)) = (letter.replayed_at, &letter.replayed_to) {
                return Ok(Claim::AlreadyReplayed { at, to: to.clone() });
            }
            let mut claimed = letter.clone();
            claimed.replayed_at = Some(now_ms());
            claimed.replayed_to = Some(to.clone());
            if self.replace(&claimed, revision).await? {
                return Ok(Claim::Claimed(letter));
            }
        }
    }

    async fn release(&self, id: u64, error: String) -> Result<(), StoreError> {
        loop {
            let Some((mut letter, revision)) = self.load(id).await? else {
                return Ok(());
            };
            letter.replayed_at = None;
            letter.replayed_to = None;
            letter.attempts += 1;
            letter.last_error = Some(error.clone());
            if self.replace(&letter, revision).await? {
                return Ok(());
            }
        }
    }

    async fn purge(&self, which: Purge) -> Result<u64, StoreError> {
        let doomed: Vec<u64> = match which {
            Purge::One(id) => match self.load(id).await? {
                Some(_) => vec![id],
                None => vec![],
            },
            Purge::Replayed => self
                .all()
                .await?
                .into_iter()
                .filter(|l| l.replayed_at.is_some())
                .map(|l| l.id)
                .collect(),
            Purge::All => self.ids().await?,
        };
        for &id in &doomed {
            self.remove(id).await?;
        }
        Ok(doomed.len() as u64)
    }
}

//! The room logs on the messages and message-ids tables.
//!
//! An append is one TransactWriteItems of three items: the id (`attribute_not_exists`: a retried
//! id is found, not stored twice), the room's head (`head = :expected`: two writers that read the
//! same head cannot both commit the next seq) and the message. DynamoDB applies all three or
//! none, so seqs have no gap and no reuse however many Lambdas write to one room.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use dynamowave_core::ports::{Appended, Deletion, MessageLog, NewMessage, StoreError, refusal};
use dynamowave_core::protocol::{ChatMessage, HistoryQuery, Page};
use dynamowave_core::types::{RoomId, Seq, UserName, now_ms, random_token};
use rand::Rng;

use super::{DynamoStore, Item, backend, get_n, get_n_opt, get_s, malformed, n, s};

/// Head conflicts are retried this many times (with jittered backoff) before the append fails
/// as `unavailable`, which the client retries with the same id.
const MAX_ATTEMPTS: u32 = 40;

/// The codes of a cancelled transaction, one per item in request order (`None`,
/// `ConditionalCheckFailed`, `TransactionConflict`, ...).
pub(super) fn cancelled_codes(e: &TransactWriteItemsError) -> Vec<String> {
    match e {
        TransactWriteItemsError::TransactionCanceledException(c) => c
            .cancellation_reasons()
            .iter()
            .map(|r| r.code().unwrap_or("None").to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

fn id_key(room: &RoomId, user: &UserName, id: &str) -> String {
    // U+001F cannot appear in a room or user name, so the key is unambiguous.
    format!("{room}\u{1f}{user}\u{1f}{id}")
}

fn message_key(room: &RoomId, seq: u64) -> Item {
    Item::from([
        ("room".to_owned(), s(room.as_str())),
        ("seq".to_owned(), n(seq)),
    ])
}

fn message_of(room: &RoomId, item: &Item) -> Result<ChatMessage, StoreError> {
    Ok(ChatMessage::new(
        room.clone(),
        Seq(get_n(item, "seq")?),
        get_s(item, "id")?.to_owned(),
        UserName::parse(get_s(item, "user")?).map_err(|_| malformed("user"))?,
        get_s(item, "data")?.to_owned(),
        get_n(item, "ts")?,
    ))
}

enum Attempt {
    Committed(Arc<ChatMessage>),
    /// The id was committed before (by this or another writer).
    IdTaken,
    /// Another writer moved the head first.
    HeadMoved,
}

impl DynamoStore {
    async fn get_message_item(&self, room: &RoomId, seq: u64) -> Result<Option<Item>, StoreError> {
        let got = self
            .client()
            .get_item()
            .table_name(&self.tables().messages)
            .set_key(Some(message_key(room, seq)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem messages", e))?;
        Ok(got.item)
    }

    /// The committed message for `(room, user, id)`, if there is one.
    async fn committed_as(
        &self,
        room: &RoomId,
        key: &str,
    ) -> Result<Option<Arc<ChatMessage>>, StoreError> {
        let got = self
            .client()
            .get_item()
            .table_name(&self.tables().message_ids)
            .key("key", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem message-ids", e))?;
        let Some(item) = got.item else {
            return Ok(None);
        };
        let seq = get_n(&item, "seq")?;
        let message = self.get_message_item(room, seq).await?.ok_or_else(|| {
            StoreError::Backend(format!(
                "message id {key:?} names seq {seq} of room {room}, which has no item"
            ))
        })?;
        Ok(Some(Arc::new(message_of(room, &message)?)))
    }

    async fn try_append(&self, m: &NewMessage, key: &str) -> Result<Attempt, StoreError> {
        let head = self.head(&m.room).await?;
        let seq = head.map_or(1, |h| h.0 + 1);
        let ts = now_ms();
        let t = &self.tables();
        let build = |e| backend("building a transaction", e);
        let id_item = Put::builder()
            .table_name(&t.message_ids)
            .item("key", s(key))
            .item("seq", n(seq))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", "key")
            .build()
            .map_err(build)?;
        let head_item = match head {
            Some(h) => TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&t.messages)
                        .set_key(Some(message_key(&m.room, 0)))
                        .update_expression("SET head = :next")
                        .condition_expression("head = :expected")
                        .expression_attribute_values(":next", n(seq))
                        .expression_attribute_values(":expected", n(h.0))
                        .build()
                        .map_err(build)?,
                )
                .build(),
            None => TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&t.messages)
                        .set_item(Some(message_key(&m.room, 0)))
                        .item("head", n(seq))
                        .item("createdAt", n(ts))
                        .condition_expression("attribute_not_exists(room)")
                        .build()
                        .map_err(build)?,
                )
                .build(),
        };
        let message_item = Put::builder()
            .table_name(&t.messages)
            .set_item(Some(message_key(&m.room, seq)))
            .item("id", s(m.id.as_str()))
            .item("user", s(m.user.as_str()))
            .item("data", s(m.data.as_str()))
            .item("ts", n(ts))
            .condition_expression("attribute_not_exists(room)")
            .build()
            .map_err(build)?;
        let written = self
            .client()
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(id_item).build())
            .transact_items(head_item)
            .transact_items(TransactWriteItem::builder().put(message_item).build())
            // The SDK resends the same token when it retries a request whose answer was lost:
            // DynamoDB then reports the first commit as a success instead of a conflict.
            .client_request_token(random_token(32))
            .send()
            .await;
        match written {
            Ok(_) => Ok(Attempt::Committed(Arc::new(ChatMessage::new(
                m.room.clone(),
                Seq(seq),
                m.id.clone(),
                m.user.clone(),
                m.data.clone(),
                ts,
            )))),
            Err(e) => {
                let codes = e
                    .as_service_error()
                    .map(cancelled_codes)
                    .unwrap_or_default();
                match codes.first().map(String::as_str) {
                    Some("ConditionalCheckFailed") => Ok(Attempt::IdTaken),
                    Some(_) if codes.iter().any(|c| c != "None") => Ok(Attempt::HeadMoved),
                    _ => Err(backend("TransactWriteItems append", e)),
                }
            }
        }
    }

    fn room_lock(&self, room: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .room_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Drop locks no one holds, so a long-lived process does not keep one per room ever seen.
        if locks.len() > 1024 {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(room.clone()).or_default().clone()
    }
}

#[async_trait]
impl MessageLog for DynamoStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        if m.event.is_some() {
            return Err(refusal::unsupported(
                "editing, deleting and reacting to messages",
                "AWS (DynamoDB)",
            ));
        }
        let key = id_key(&m.room, &m.user, &m.id);
        let lock = self.room_lock(&m.room);
        let _serial = lock.lock().await;
        if let Some(message) = self.committed_as(&m.room, &key).await? {
            return Ok(Appended {
                message,
                duplicate: true,
            });
        }
        let mut backoff_ms = 5u64;
        for _ in 0..MAX_ATTEMPTS {
            match self.try_append(&m, &key).await? {
                Attempt::Committed(message) => {
                    self.inner
                        .listener
                        .committed(std::slice::from_ref(&message));
                    return Ok(Appended {
                        message,
                        duplicate: false,
                    });
                }
                Attempt::IdTaken => {
                    if let Some(message) = self.committed_as(&m.room, &key).await? {
                        return Ok(Appended {
                            message,
                            duplicate: true,
                        });
                    }
                }
                Attempt::HeadMoved => {
                    // Full jitter, so writers that collided do not collide again in step.
                    let wait = rand::rng().random_range(0..=backoff_ms);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    backoff_ms = (backoff_ms * 2).min(200);
                }
            }
        }
        Err(StoreError::Backend(format!(
            "room {}: {MAX_ATTEMPTS} appends in a row lost the race for the next seq",
            m.room
        )))
    }

    async fn create_room(&self, room: &RoomId) -> Result<Seq, StoreError> {
        if let Some(head) = self.head(room).await? {
            return Ok(head);
        }
        let created = self
            .client()
            .put_item()
            .table_name(&self.tables().messages)
            .set_item(Some(message_key(room, 0)))
            .item("head", n(0))
            .item("createdAt", n(now_ms()))
            .condition_expression("attribute_not_exists(room)")
            .send()
            .await;
        match created {
            Ok(_) => Ok(Seq::ZERO),
            // Someone else created it first: read what it holds now.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(self.head(room).await?.unwrap_or(Seq::ZERO))
            }
            Err(e) => Err(backend("PutItem room", e)),
        }
    }

    async fn head(&self, room: &RoomId) -> Result<Option<Seq>, StoreError> {
        self.get_message_item(room, 0)
            .await?
            .map(|item| get_n(&item, "head").map(Seq))
            .transpose()
    }

    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<Page, StoreError> {
        let limit = query.limit();
        let (condition, bound, forward) = match query {
            HistoryQuery::Latest { .. } => ("room = :r AND seq > :b", 0, false),
            HistoryQuery::Before { seq, .. } if seq.0 <= 1 => return Ok(Page::default()),
            HistoryQuery::Before { seq, .. } => {
                ("room = :r AND seq BETWEEN :one AND :b", seq.0 - 1, false)
            }
            HistoryQuery::After { seq, .. } => ("room = :r AND seq > :b", seq.0, true),
        };
        // One more than the page, to know whether there is more. Tombstones are filtered out
        // after DynamoDB's Limit applies, so keep paging until the page is full.
        let want = limit + 1;
        let mut found = Vec::with_capacity(want.min(64));
        let mut start = None;
        loop {
            let mut q = self
                .client()
                .query()
                .table_name(&self.tables().messages)
                .key_condition_expression(condition)
                .filter_expression("attribute_not_exists(deletedAt)")
                .expression_attribute_values(":r", s(room.as_str()))
                .expression_attribute_values(":b", n(bound))
                .scan_index_forward(forward)
                .consistent_read(true)
                .limit((want - found.len()).min(1000) as i32)
                .set_exclusive_start_key(start);
            if condition.contains(":one") {
                q = q.expression_attribute_values(":one", n(1));
            }
            let page = q.send().await.map_err(|e| backend("Query messages", e))?;
            for item in page.items.unwrap_or_default() {
                found.push(Arc::new(message_of(room, &item)?));
            }
            start = page.last_evaluated_key;
            if found.len() >= want || start.is_none() {
                break;
            }
        }
        let more = found.len() > limit;
        found.truncate(limit);
        if !forward {
            found.reverse();
        }
        Ok(Page {
            messages: found,
            more,
        })
    }

    async fn delete(&self, room: &RoomId, seq: Seq) -> Result<Deletion, StoreError> {
        if seq == Seq::ZERO {
            return Ok(Deletion::NotFound);
        }
        let at = now_ms();
        let updated = self
            .client()
            .update_item()
            .table_name(&self.tables().messages)
            .set_key(Some(message_key(room, seq.0)))
            .update_expression("SET deletedAt = :at")
            .condition_expression("attribute_exists(room) AND attribute_not_exists(deletedAt)")
            .expression_attribute_values(":at", n(at))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(Deletion::Deleted { at }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                match self.get_message_item(room, seq.0).await? {
                    None => Ok(Deletion::NotFound),
                    Some(item) => match get_n_opt(&item, "deletedAt")? {
                        Some(at) => Ok(Deletion::AlreadyDeleted { at }),
                        // Deleted and restored in between cannot happen: treat as a failure.
                        None => Err(StoreError::Backend(format!(
                            "room {room} seq {seq}: delete refused but not deleted"
                        ))),
                    },
                }
            }
            Err(e) => Err(backend("UpdateItem delete", e)),
        }
    }
}

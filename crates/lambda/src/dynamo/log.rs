//! The room logs on the messages and message-ids tables, and read positions on their own table.
//!
//! An append is one TransactWriteItems of three items: the id (`attribute_not_exists`: a retried
//! id is found, not stored twice), the room's head (`head = :expected`: two writers that read the
//! same head cannot both commit the next seq) and the message. DynamoDB applies all three or
//! none, so seqs have no gap and no reuse however many Lambdas write to one room.
//!
//! An event entry (edit, deletion, reaction) is the same three items plus a fourth: the update
//! of the message it names to its new state (`data` + `editedAt`, `deletedAt`, or `reactions`),
//! conditional on the message's `rev` as it was read and on it not being deleted. So the entry
//! and the change stand or fall together, and two events on one message from two processes
//! cannot both apply to the same state: the one that loses re-reads the message, is checked
//! again (`check_event`) and retries. Reads then need no fold: a message's item is its current
//! state, and the entry items are the log `join {after}` replays.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use dynamowave_core::ports::{
    Appended, Deletion, EventTarget, MessageLog, NewEvent, NewMessage, ReadMark, StoreError,
    check_event, refusal,
};
use dynamowave_core::protocol::{
    ChatMessage, EntryEvent, HistoryQuery, MAX_EMOJIS_PER_MESSAGE, Page, ReactionCounts,
};
use dynamowave_core::types::{RoomId, Seq, UserName, now_ms, random_token};
use rand::Rng;

use super::{DynamoStore, Item, backend, get_n, get_n_opt, get_s, malformed, n, s};

/// `kind` of an event entry's item (a message has none).
const EDIT: &str = "edit";
const DELETE: &str = "delete";
const REACTION: &str = "reaction";

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

/// An entry as stored: a message in its current state (edited text and `edited_at`, reaction
/// counts), or an event entry with what it did (a reaction with the counts it committed with).
fn entry_of(room: &RoomId, item: &Item) -> Result<ChatMessage, StoreError> {
    let mut entry = ChatMessage::new(
        room.clone(),
        Seq(get_n(item, "seq")?),
        get_s(item, "id")?.to_owned(),
        UserName::parse(get_s(item, "user")?).map_err(|_| malformed("user"))?,
        get_s(item, "data")?.to_owned(),
        get_n(item, "ts")?,
    );
    match item.get("kind") {
        None => {
            entry.edited_at = get_n_opt(item, "editedAt")?;
            entry.reactions = counts_of(&reactions_of(item)?);
        }
        Some(AttributeValue::S(kind)) => {
            let target = Seq(get_n(item, "target")?);
            entry.event = Some(Box::new(match kind.as_str() {
                EDIT => EntryEvent::Edit { target },
                DELETE => EntryEvent::Delete { target },
                REACTION => EntryEvent::Reaction {
                    target,
                    emoji: get_s(item, "emoji")?.to_owned(),
                    on: match item.get("on") {
                        Some(AttributeValue::Bool(on)) => *on,
                        _ => return Err(malformed("on")),
                    },
                    counts: stored_counts(item)?,
                },
                other => {
                    return Err(StoreError::Backend(format!(
                        "room {room} seq {}: an entry of unknown kind {other:?} (from a newer version?)",
                        entry.seq
                    )));
                }
            }));
        }
        Some(_) => return Err(malformed("kind")),
    }
    Ok(entry)
}

/// Who reacted with what to a message: `reactions`, a map of emoji to the string set of users
/// (an emoji nobody reacts with any more is removed: DynamoDB has no empty sets).
fn reactions_of(item: &Item) -> Result<BTreeMap<String, BTreeSet<String>>, StoreError> {
    match item.get("reactions") {
        None => Ok(BTreeMap::new()),
        Some(AttributeValue::M(map)) => map
            .iter()
            .map(|(emoji, users)| match users {
                AttributeValue::Ss(users) => Ok((emoji.clone(), users.iter().cloned().collect())),
                _ => Err(malformed("reactions")),
            })
            .collect(),
        Some(_) => Err(malformed("reactions")),
    }
}

fn counts_of(reactions: &BTreeMap<String, BTreeSet<String>>) -> ReactionCounts {
    reactions
        .iter()
        .filter(|(_, users)| !users.is_empty())
        .map(|(emoji, users)| (emoji.clone(), users.len() as u64))
        .collect()
}

/// A reaction entry's `counts`: the message's counts just after it, stored with it (later
/// reactions do not change them).
fn stored_counts(item: &Item) -> Result<ReactionCounts, StoreError> {
    match item.get("counts") {
        Some(AttributeValue::M(map)) => map
            .iter()
            .map(|(emoji, count)| match count {
                AttributeValue::N(c) => c
                    .parse()
                    .map(|c| (emoji.clone(), c))
                    .map_err(|_| malformed("counts")),
                _ => Err(malformed("counts")),
            })
            .collect(),
        _ => Err(malformed("counts")),
    }
}

fn target_of(event: &NewEvent) -> Seq {
    match event {
        NewEvent::Edit { target }
        | NewEvent::Delete { target }
        | NewEvent::React { target, .. } => *target,
    }
}

/// What a failed append or event transaction means: its id was taken (the first item's
/// condition), it lost a race worth another attempt, or a failure to report.
fn refused_attempt(
    e: aws_sdk_dynamodb::error::SdkError<TransactWriteItemsError>,
    what: &str,
) -> Result<Attempt, StoreError> {
    let codes = e
        .as_service_error()
        .map(cancelled_codes)
        .unwrap_or_default();
    match codes.first().map(String::as_str) {
        Some("ConditionalCheckFailed") => Ok(Attempt::IdTaken),
        _ if lost_a_race(&codes) => Ok(Attempt::HeadMoved),
        _ => Err(backend(what, e)),
    }
}

/// Whether a cancelled transaction lost a race (a condition another writer made false, or a
/// concurrent transaction on one of its items) and is worth another attempt after a fresh read.
fn lost_a_race(codes: &[String]) -> bool {
    codes.iter().any(|c| c != "None")
        && codes.iter().all(|c| {
            matches!(
                c.as_str(),
                "None"
                    | "ConditionalCheckFailed"
                    | "TransactionConflict"
                    | "ThrottlingError"
                    | "ProvisionedThroughputExceeded"
            )
        })
}

enum Attempt {
    Committed(Arc<ChatMessage>),
    /// The id was committed before (by this or another writer).
    IdTaken,
    /// Another writer moved the head (or, for an event, changed its message) first.
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
        Ok(Some(Arc::new(entry_of(room, &message)?)))
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
            Ok(_) => Ok(Attempt::Committed(Arc::new(m.committed(Seq(seq), ts)))),
            Err(e) => refused_attempt(e, "TransactWriteItems append"),
        }
    }

    /// One attempt at an event entry: read the head and the message it names, check it as
    /// every store does, then commit the entry and the message's new state in one transaction.
    async fn try_event(
        &self,
        m: &NewMessage,
        event: &NewEvent,
        key: &str,
    ) -> Result<Attempt, StoreError> {
        let head = self.head(&m.room).await?;
        let target = target_of(event);
        // Seq 0 is the room's head item, not an entry.
        let item = match target {
            Seq::ZERO => None,
            Seq(t) => self.get_message_item(&m.room, t).await?,
        };
        let found = item
            .as_ref()
            .map(|item| {
                let author =
                    UserName::parse(get_s(item, "user")?).map_err(|_| malformed("user"))?;
                Ok::<_, StoreError>((
                    author,
                    !item.contains_key("kind"),
                    item.contains_key("deletedAt"),
                ))
            })
            .transpose()?;
        check_event(
            &m.room,
            event,
            &m.user,
            found
                .as_ref()
                .map(|(author, is_message, deleted)| EventTarget {
                    author,
                    is_message: *is_message,
                    deleted: *deleted,
                }),
        )?;
        let (Some(head), Some(item)) = (head, item) else {
            return Err(StoreError::Backend(format!(
                "room {} has message {target} but no head item",
                m.room
            )));
        };
        let rev = get_n_opt(&item, "rev")?.unwrap_or(0);
        let seq = head.0 + 1;
        let ts = now_ms();
        let t = &self.tables();
        let build = |e| backend("building a transaction", e);

        // The message's new state, and what the entry records.
        let mut names = HashMap::from([
            ("#rev".to_owned(), "rev".to_owned()),
            ("#kind".to_owned(), "kind".to_owned()),
        ]);
        let mut values = HashMap::from([(":next".to_owned(), n(rev + 1))]);
        let mut entry = Put::builder()
            .table_name(&t.messages)
            .set_item(Some(message_key(&m.room, seq)))
            .item("id", s(m.id.as_str()))
            .item("user", s(m.user.as_str()))
            .item("data", s(m.data.as_str()))
            .item("ts", n(ts))
            .item("target", n(target.0))
            .condition_expression("attribute_not_exists(room)");
        let (update, committed) = match event {
            NewEvent::Edit { target } => {
                names.insert("#data".into(), "data".into());
                values.insert(":data".into(), s(m.data.as_str()));
                values.insert(":ts".into(), n(ts));
                entry = entry.item("kind", s(EDIT));
                (
                    "SET #data = :data, editedAt = :ts, #rev = :next",
                    EntryEvent::Edit { target: *target },
                )
            }
            NewEvent::Delete { target } => {
                values.insert(":ts".into(), n(ts));
                entry = entry.item("kind", s(DELETE));
                (
                    "SET deletedAt = :ts, #rev = :next",
                    EntryEvent::Delete { target: *target },
                )
            }
            NewEvent::React { target, emoji, on } => {
                let mut reactions = reactions_of(&item)?;
                if *on
                    && !reactions.contains_key(emoji)
                    && reactions.len() >= MAX_EMOJIS_PER_MESSAGE
                {
                    return Err(refusal::too_many_emojis(&m.room, *target));
                }
                if *on {
                    reactions
                        .entry(emoji.clone())
                        .or_default()
                        .insert(m.user.to_string());
                } else if let Some(users) = reactions.get_mut(emoji) {
                    users.remove(m.user.as_str());
                    if users.is_empty() {
                        reactions.remove(emoji);
                    }
                }
                let counts = counts_of(&reactions);
                entry = entry
                    .item("kind", s(REACTION))
                    .item("emoji", s(emoji.as_str()))
                    .item("on", AttributeValue::Bool(*on))
                    .item(
                        "counts",
                        AttributeValue::M(counts.iter().map(|(e, c)| (e.clone(), n(*c))).collect()),
                    );
                let committed = EntryEvent::Reaction {
                    target: *target,
                    emoji: emoji.clone(),
                    on: *on,
                    counts,
                };
                if reactions.is_empty() {
                    // The last reaction taken back: no attribute rather than an empty map.
                    ("SET #rev = :next REMOVE reactions", committed)
                } else {
                    values.insert(
                        ":reactions".into(),
                        AttributeValue::M(
                            reactions
                                .into_iter()
                                .map(|(e, users)| {
                                    (e, AttributeValue::Ss(users.into_iter().collect()))
                                })
                                .collect(),
                        ),
                    );
                    ("SET reactions = :reactions, #rev = :next", committed)
                }
            }
        };
        // The state this attempt read: still a message, not deleted, and no other event
        // applied since (every event bumps `rev`).
        let condition = if rev == 0 {
            "attribute_exists(room) AND attribute_not_exists(deletedAt) \
             AND attribute_not_exists(#kind) AND attribute_not_exists(#rev)"
        } else {
            values.insert(":rev".into(), n(rev));
            "attribute_exists(room) AND attribute_not_exists(deletedAt) \
             AND attribute_not_exists(#kind) AND #rev = :rev"
        };
        let target_item = Update::builder()
            .table_name(&t.messages)
            .set_key(Some(message_key(&m.room, target.0)))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(build)?;
        let id_item = Put::builder()
            .table_name(&t.message_ids)
            .item("key", s(key))
            .item("seq", n(seq))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", "key")
            .build()
            .map_err(build)?;
        // The room exists (its message does), so the head is always an update here.
        let head_item = Update::builder()
            .table_name(&t.messages)
            .set_key(Some(message_key(&m.room, 0)))
            .update_expression("SET head = :next")
            .condition_expression("head = :expected")
            .expression_attribute_values(":next", n(seq))
            .expression_attribute_values(":expected", n(head.0))
            .build()
            .map_err(build)?;
        let written = self
            .client()
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(id_item).build())
            .transact_items(TransactWriteItem::builder().update(head_item).build())
            .transact_items(
                TransactWriteItem::builder()
                    .put(entry.build().map_err(build)?)
                    .build(),
            )
            .transact_items(TransactWriteItem::builder().update(target_item).build())
            // As for a message: a resent request is reported as the first commit.
            .client_request_token(random_token(32))
            .send()
            .await;
        match written {
            Ok(_) => {
                let mut message = m.committed(Seq(seq), ts);
                message.event = Some(Box::new(committed));
                Ok(Attempt::Committed(Arc::new(message)))
            }
            // The head moved or the message changed: read both again.
            Err(e) => refused_attempt(e, "TransactWriteItems event"),
        }
    }

    /// One page of `room`'s entries in seq order from `bound` (see `read`), keeping those
    /// `filter` lets through: DynamoDB applies `Limit` before the filter, so this pages on
    /// until it has `want` or the room is exhausted.
    async fn query_entries(
        &self,
        room: &RoomId,
        condition: &str,
        bound: u64,
        forward: bool,
        filter: &str,
        want: usize,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
        let mut found = Vec::with_capacity(want.min(64));
        let mut start = None;
        loop {
            let mut q = self
                .client()
                .query()
                .table_name(&self.tables().messages)
                .key_condition_expression(condition)
                .filter_expression(filter)
                .expression_attribute_values(":r", s(room.as_str()))
                .expression_attribute_values(":b", n(bound))
                .scan_index_forward(forward)
                .consistent_read(true)
                .limit((want - found.len()).min(1000) as i32)
                .set_exclusive_start_key(start);
            if condition.contains(":one") {
                q = q.expression_attribute_values(":one", n(1));
            }
            if filter.contains("#kind") {
                q = q.expression_attribute_names("#kind", "kind");
            }
            let page = q.send().await.map_err(|e| backend("Query messages", e))?;
            for item in page.items.unwrap_or_default() {
                found.push(Arc::new(entry_of(room, &item)?));
            }
            start = page.last_evaluated_key;
            if found.len() >= want || start.is_none() {
                return Ok(found);
            }
        }
    }

    fn read_position_key(room: &RoomId, user: &UserName) -> Item {
        Item::from([
            ("room".to_owned(), s(room.as_str())),
            ("user".to_owned(), s(user.as_str())),
        ])
    }

    /// `user`'s read position in `room` now (0: none).
    async fn read_position(&self, room: &RoomId, user: &UserName) -> Result<Seq, StoreError> {
        let got = self
            .client()
            .get_item()
            .table_name(&self.tables().read_positions)
            .set_key(Some(Self::read_position_key(room, user)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem read-positions", e))?;
        Ok(Seq(got
            .item
            .map(|item| get_n(&item, "seq"))
            .transpose()?
            .unwrap_or(0)))
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
        // Messages and event entries share the key: a retry gets back whatever was stored.
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
            let attempt = match &m.event {
                None => self.try_append(&m, &key).await?,
                Some(event) => self.try_event(&m, event, &key).await?,
            };
            match attempt {
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
        // One more than the page, to know whether there is more. History holds messages only:
        // tombstones and event entries are filtered out.
        let mut found = self
            .query_entries(
                room,
                condition,
                bound,
                forward,
                "attribute_not_exists(deletedAt) AND attribute_not_exists(#kind)",
                limit + 1,
            )
            .await?;
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

    async fn read_entries(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Page, StoreError> {
        // Every event entry (one tombstoned through the management API too: it is not a
        // message), and the messages that are not deleted, in their items' current state.
        let mut found = self
            .query_entries(
                room,
                "room = :r AND seq > :b",
                after.0,
                true,
                "attribute_exists(#kind) OR attribute_not_exists(deletedAt)",
                limit + 1,
            )
            .await?;
        let more = found.len() > limit;
        found.truncate(limit);
        Ok(Page {
            messages: found,
            more,
        })
    }

    async fn mark_read(
        &self,
        room: &RoomId,
        user: &UserName,
        seq: Seq,
    ) -> Result<ReadMark, StoreError> {
        let head = self.head(room).await?.unwrap_or(Seq::ZERO);
        if seq > head {
            return Err(refusal::read_past_head(room, seq, head));
        }
        if seq == Seq::ZERO {
            // Nothing is before every position: nothing to write.
            return Ok(ReadMark {
                seq: self.read_position(room, user).await?,
                moved: false,
            });
        }
        // Forward only, whoever else moves it at the same time (another tab, another Lambda).
        let updated = self
            .client()
            .update_item()
            .table_name(&self.tables().read_positions)
            .set_key(Some(Self::read_position_key(room, user)))
            .update_expression("SET #s = :s, updatedAt = :now")
            .condition_expression("attribute_not_exists(#s) OR #s < :s")
            .expression_attribute_names("#s", "seq")
            .expression_attribute_values(":s", n(seq.0))
            .expression_attribute_values(":now", n(now_ms()))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(ReadMark { seq, moved: true }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(ReadMark {
                    seq: self.read_position(room, user).await?,
                    moved: false,
                })
            }
            Err(e) => Err(backend("UpdateItem read-positions", e)),
        }
    }

    async fn read_positions(&self, room: &RoomId) -> Result<Vec<(UserName, Seq)>, StoreError> {
        let mut positions = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client()
                .query()
                .table_name(&self.tables().read_positions)
                .key_condition_expression("room = :r")
                .expression_attribute_values(":r", s(room.as_str()))
                .consistent_read(true)
                .set_limit(self.inner.page_size)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| backend("Query read-positions", e))?;
            for item in page.items.unwrap_or_default() {
                let user = UserName::parse(get_s(&item, "user")?).map_err(|_| malformed("user"))?;
                positions.push((user, Seq(get_n(&item, "seq")?)));
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(positions);
            }
        }
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

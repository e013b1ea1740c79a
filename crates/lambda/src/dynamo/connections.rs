//! The connections table: connection rows, their rooms, and the room index the fan-out reads.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, DeleteRequest, Put, TransactWriteItem, WriteRequest,
};
use dynamowave_core::ports::{ConnectionRecord, ConnectionStore, StoreError};
use dynamowave_core::protocol::Mode;
use dynamowave_core::types::{ConnectionId, RoomId, UserName};

use super::{CONNECTION_TTL_SECS, DynamoStore, Item, backend, get_n, get_s, malformed, s};

/// A connection as an invocation finds it: its row, its rooms and whether the v1 hello was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredConnection {
    pub record: ConnectionRecord,
    pub rooms: Vec<RoomId>,
    /// The `connected` frame went out (v1: `$connect` cannot post, so the first frame's
    /// invocation sends it).
    pub greeted: bool,
    /// A token's `rooms` claim; `None`: any room.
    pub allowed_rooms: Option<Vec<RoomId>>,
}

/// One entry of a room's index: who to post to and in which form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomMember {
    pub connection_id: ConnectionId,
    pub user: UserName,
    pub mode: Mode,
}

fn connection_pk(id: &ConnectionId) -> String {
    format!("c#{id}")
}

fn room_pk(room: &RoomId) -> String {
    format!("r#{room}")
}

fn membership_sk(room: &RoomId) -> String {
    format!("r#{room}")
}

const ROW_SK: &str = "#";

fn expires_at(connected_at_ms: u64) -> u64 {
    connected_at_ms / 1000 + CONNECTION_TTL_SECS
}

fn mode_of(item: &Item) -> Result<Mode, StoreError> {
    match get_s(item, "mode")? {
        "compat" => Ok(Mode::Compat),
        "v1" => Ok(Mode::V1),
        _ => Err(malformed("mode")),
    }
}

fn record_of(item: &Item) -> Result<ConnectionRecord, StoreError> {
    let parse = |name: &str| get_s(item, name).map(str::to_owned);
    Ok(ConnectionRecord {
        id: ConnectionId::parse(get_s(item, "connectionId")?)
            .map_err(|_| malformed("connectionId"))?,
        user: UserName::parse(get_s(item, "user")?).map_err(|_| malformed("user"))?,
        mode: mode_of(item)?,
        source_ip: parse("sourceIp")?,
        user_agent: parse("userAgent")?,
        connected_at: get_n(item, "connectedAt")?,
    })
}

fn room_of_sk(sk: &str) -> Option<RoomId> {
    sk.strip_prefix("r#").and_then(|r| RoomId::parse(r).ok())
}

impl DynamoStore {
    fn key(pk: String, sk: String) -> Item {
        Item::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
    }

    /// Every item of a partition, all pages.
    async fn partition(&self, pk: String) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client()
                .query()
                .table_name(&self.tables().connections)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk.clone()))
                .consistent_read(true)
                .set_limit(self.inner.page_size)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| backend("Query connections", e))?;
            items.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// The connection's row and rooms, `None` when it is not (or no longer) recorded.
    pub async fn connection(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<StoredConnection>, StoreError> {
        let items = self.partition(connection_pk(id)).await?;
        let mut found = None;
        let mut rooms = Vec::new();
        for item in &items {
            let sk = get_s(item, "sk")?;
            if sk == ROW_SK {
                found = Some(item);
            } else if let Some(room) = room_of_sk(sk) {
                rooms.push(room);
            }
        }
        let Some(row) = found else {
            return Ok(None);
        };
        let record = record_of(row)?;
        self.remember(&record);
        let allowed_rooms = match row.get("allowedRooms") {
            Some(AttributeValue::L(list)) => Some(
                list.iter()
                    .filter_map(|v| v.as_s().ok().and_then(|r| RoomId::parse(r).ok()))
                    .collect(),
            ),
            _ => None,
        };
        Ok(Some(StoredConnection {
            record,
            rooms,
            greeted: matches!(row.get("greeted"), Some(AttributeValue::Bool(true))),
            allowed_rooms,
        }))
    }

    /// Records that the v1 hello was sent; `true` only for the call that flipped it, so two
    /// concurrent first frames greet once.
    pub async fn mark_greeted(&self, id: &ConnectionId) -> Result<bool, StoreError> {
        let updated = self
            .client()
            .update_item()
            .table_name(&self.tables().connections)
            .set_key(Some(Self::key(connection_pk(id), ROW_SK.into())))
            .update_expression("SET greeted = :t")
            .condition_expression("attribute_exists(pk) AND greeted = :f")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(backend("UpdateItem greeted", e)),
        }
    }

    /// Limits the connection to these rooms (a token's `rooms` claim), stored on its row so
    /// every later invocation applies it.
    pub async fn restrict_rooms(
        &self,
        id: &ConnectionId,
        rooms: &[RoomId],
    ) -> Result<(), StoreError> {
        let list = rooms.iter().map(|r| s(r.as_str())).collect();
        self.client()
            .update_item()
            .table_name(&self.tables().connections)
            .set_key(Some(Self::key(connection_pk(id), ROW_SK.into())))
            .update_expression("SET allowedRooms = :rooms")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":rooms", AttributeValue::L(list))
            .send()
            .await
            .map_err(|e| backend("UpdateItem allowedRooms", e))?;
        Ok(())
    }

    /// The room's members now: one Query of the room index (paginated), no table scan.
    pub async fn room_members(&self, room: &RoomId) -> Result<Vec<RoomMember>, StoreError> {
        self.partition(room_pk(room))
            .await?
            .iter()
            .map(|item| {
                Ok(RoomMember {
                    connection_id: ConnectionId::parse(get_s(item, "sk")?)
                        .map_err(|_| malformed("sk"))?,
                    user: UserName::parse(get_s(item, "user")?).map_err(|_| malformed("user"))?,
                    mode: mode_of(item)?,
                })
            })
            .collect()
    }

    fn remember(&self, record: &ConnectionRecord) {
        let mut known = self.inner.known.lock().unwrap_or_else(|e| e.into_inner());
        // An execution environment serves many connections over its life: keep the cache small.
        if known.len() >= 10_000 {
            known.clear();
        }
        known.insert(
            record.id.clone(),
            (
                record.user.clone(),
                record.mode,
                expires_at(record.connected_at),
            ),
        );
    }

    /// Deletes items by key, 25 per BatchWriteItem, retrying what DynamoDB left unprocessed.
    async fn delete_keys(&self, keys: Vec<Item>) -> Result<(), StoreError> {
        let table = &self.tables().connections;
        for chunk in keys.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|key| {
                    let delete = DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .map_err(|e| backend("building a delete", e))?;
                    Ok(WriteRequest::builder().delete_request(delete).build())
                })
                .collect::<Result<_, StoreError>>()?;
            let mut backoff = std::time::Duration::from_millis(20);
            for attempt in 0.. {
                let out = self
                    .client()
                    .batch_write_item()
                    .request_items(table, requests)
                    .send()
                    .await
                    .map_err(|e| backend("BatchWriteItem connections", e))?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(table))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                if attempt >= 8 {
                    return Err(StoreError::Backend(format!(
                        "BatchWriteItem left {} deletes unprocessed after 8 retries",
                        requests.len()
                    )));
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        Ok(())
    }

    /// Every item of the table (operator tools only: the handlers never scan).
    async fn scan_all(&self) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client()
                .scan()
                .table_name(&self.tables().connections)
                .consistent_read(true)
                .set_limit(self.inner.page_size)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| backend("Scan connections", e))?;
            items.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }
}

#[async_trait]
impl ConnectionStore for DynamoStore {
    async fn insert(&self, r: &ConnectionRecord) -> Result<(), StoreError> {
        let mut item = Self::key(connection_pk(&r.id), ROW_SK.into());
        item.extend([
            ("connectionId".to_owned(), s(r.id.as_str())),
            ("user".to_owned(), s(r.user.as_str())),
            ("mode".to_owned(), s(r.mode.as_str())),
            ("sourceIp".to_owned(), s(r.source_ip.as_str())),
            ("userAgent".to_owned(), s(r.user_agent.as_str())),
            ("connectedAt".to_owned(), super::n(r.connected_at)),
            ("greeted".to_owned(), AttributeValue::Bool(false)),
            ("expiresAt".to_owned(), super::n(expires_at(r.connected_at))),
        ]);
        self.client()
            .put_item()
            .table_name(&self.tables().connections)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| backend("PutItem connection", e))?;
        self.remember(r);
        Ok(())
    }

    async fn remove(&self, id: &ConnectionId) -> Result<(), StoreError> {
        let items = self.partition(connection_pk(id)).await?;
        let mut keys = Vec::with_capacity(items.len() * 2);
        for item in &items {
            let sk = get_s(item, "sk")?;
            if let Some(room) = room_of_sk(sk) {
                keys.push(Self::key(room_pk(&room), id.to_string()));
            }
            keys.push(Self::key(connection_pk(id), sk.to_owned()));
        }
        self.delete_keys(keys).await?;
        self.inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    async fn add_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError> {
        let known = self
            .inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let (user, mode, expires) = match known {
            Some(known) => known,
            None => match self.connection(id).await? {
                Some(c) => (
                    c.record.user,
                    c.record.mode,
                    expires_at(c.record.connected_at),
                ),
                // Not recorded (already disconnected): nothing to join, as in every store.
                None => return Ok(()),
            },
        };
        let table = &self.tables().connections;
        let mut index = Self::key(room_pk(room), id.to_string());
        index.extend([
            ("user".to_owned(), s(user.as_str())),
            ("mode".to_owned(), s(mode.as_str())),
            ("expiresAt".to_owned(), super::n(expires)),
        ]);
        let mut reverse = Self::key(connection_pk(id), membership_sk(room));
        reverse.insert("expiresAt".to_owned(), super::n(expires));
        let put = |item: Item| {
            Put::builder()
                .table_name(table)
                .set_item(Some(item))
                .build()
                .map(|p| TransactWriteItem::builder().put(p).build())
                .map_err(|e| backend("building a put", e))
        };
        // The row must still exist, or a join racing a disconnect would leave an index entry
        // that nothing removes before its TTL.
        let check = ConditionCheck::builder()
            .table_name(table)
            .set_key(Some(Self::key(connection_pk(id), ROW_SK.into())))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(|e| backend("building a condition check", e))?;
        let written = self
            .client()
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .transact_items(put(index)?)
            .transact_items(put(reverse)?)
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|e| {
                    e.is_transaction_canceled_exception()
                        && super::log::cancelled_codes(e).first().map(String::as_str)
                            == Some("ConditionalCheckFailed")
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(backend("TransactWriteItems membership", e)),
        }
    }

    async fn remove_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError> {
        self.delete_keys(vec![
            Self::key(room_pk(room), id.to_string()),
            Self::key(connection_pk(id), membership_sk(room)),
        ])
        .await
    }

    async fn list(&self) -> Result<Vec<(ConnectionRecord, Vec<RoomId>)>, StoreError> {
        let mut rows: BTreeMap<String, (Option<ConnectionRecord>, Vec<RoomId>)> = BTreeMap::new();
        for item in self.scan_all().await? {
            let pk = get_s(&item, "pk")?;
            let Some(id) = pk.strip_prefix("c#") else {
                continue;
            };
            let entry = rows.entry(id.to_owned()).or_default();
            let sk = get_s(&item, "sk")?;
            if sk == ROW_SK {
                entry.0 = Some(record_of(&item)?);
            } else if let Some(room) = room_of_sk(sk) {
                entry.1.push(room);
            }
        }
        Ok(rows
            .into_values()
            .filter_map(|(record, mut rooms)| {
                rooms.sort();
                record.map(|r| (r, rooms))
            })
            .collect())
    }

    async fn purge_stale(&self) -> Result<u64, StoreError> {
        let items = self.scan_all().await?;
        let mut purged = 0;
        let mut keys = Vec::with_capacity(items.len());
        for item in &items {
            let (pk, sk) = (get_s(item, "pk")?, get_s(item, "sk")?);
            if pk.starts_with("c#") && sk == ROW_SK {
                purged += 1;
            }
            keys.push(Self::key(pk.to_owned(), sk.to_owned()));
        }
        self.delete_keys(keys).await?;
        Ok(purged)
    }
}

//! The DynamoDB store: the core's [`MessageLog`](dynamowave_core::ports::MessageLog) and
//! [`ConnectionStore`](dynamowave_core::ports::ConnectionStore) on four tables.
//!
//! # Layout
//!
//! - `mod.rs`: [`Tables`], [`DynamoStore`], [`create_tables`] (as deploy/aws/template.yaml
//!   defines them) and the attribute and error helpers.
//! - `connections.rs`: the connections table, with a room index so a room's members are one
//!   Query (the original scans the whole table per message).
//! - `log.rs`: the room logs: per-room seqs with no gap and no reuse under concurrent writers
//!   (one transaction per append, conditional on the head), idempotent by `(room, user, id)`;
//!   edits, deletions and reactions (event entries, in the same transaction as the change to
//!   the message they name); read positions.
//!
//! # Items
//!
//! Connections (`pk` + `sk`, TTL on `expiresAt`):
//!
//! | pk | sk | what |
//! |---|---|---|
//! | `c#{connectionId}` | `#` | the connection: user, mode, sourceIp, userAgent, connectedAt, greeted, allowedRooms |
//! | `c#{connectionId}` | `r#{room}` | a room it is in (so `$disconnect` finds its rooms with one Query) |
//! | `r#{room}` | `{connectionId}` | the room index: user and mode of each member, for the fan-out |
//!
//! Messages (`room` + `seq`): the item with seq 0 holds the room's `head`; seq 1.. are the
//! room's entries:
//!
//! | entry | attributes |
//! |---|---|
//! | a message | `id`, `user`, `data`, `ts`; as it is now: `editedAt` (and the edited `data`), `deletedAt` (a tombstone, the item stays), `reactions` (map emoji -> string set of users), `rev` (bumped by every event, the condition of the next) |
//! | an event entry | `id`, `user`, `data`, `ts`, `kind` (`edit`, `delete`, `reaction`), `target` (the message's seq); a reaction also `emoji`, `on` and `counts` (map emoji -> count just after it) |
//!
//! MessageIds (`key` = room, user and id joined by U+001F): the seq an id was committed as.
//!
//! ReadPositions (`room` + `user`): how far the user has read the room (`seq`, `updatedAt`).

mod connections;
mod log;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use dynamowave_core::ports::{CommitListener, StoreError};
use dynamowave_core::protocol::Mode;
use dynamowave_core::types::{ConnectionId, RoomId, UserName};

pub use connections::{RoomMember, StoredConnection};

/// A connection row lives 2 hours (API Gateway's limit) and 10 minutes: if `$disconnect` never
/// ran (a crashed invocation), DynamoDB's TTL removes the row and its room index entries.
pub const CONNECTION_TTL_SECS: u64 = 2 * 3600 + 600;

/// The four table names, as the template names them and passes them to the functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub connections: String,
    pub messages: String,
    pub message_ids: String,
    pub read_positions: String,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            connections: "dynamowave-connections".into(),
            messages: "dynamowave-messages".into(),
            message_ids: "dynamowave-message-ids".into(),
            read_positions: "dynamowave-read-positions".into(),
        }
    }
}

impl Tables {
    /// `CONNECTIONS_TABLE`, `MESSAGES_TABLE`, `MESSAGE_IDS_TABLE`, `READ_POSITIONS_TABLE`,
    /// each defaulting to [`Tables::default`]'s name.
    pub fn from_env() -> Self {
        let d = Tables::default();
        let var = |name: &str, default: String| std::env::var(name).unwrap_or(default);
        Tables {
            connections: var("CONNECTIONS_TABLE", d.connections),
            messages: var("MESSAGES_TABLE", d.messages),
            message_ids: var("MESSAGE_IDS_TABLE", d.message_ids),
            read_positions: var("READ_POSITIONS_TABLE", d.read_positions),
        }
    }

    /// The same names with a prefix: one set of tables per test.
    pub fn prefixed(prefix: &str) -> Self {
        let d = Tables::default();
        Tables {
            connections: format!("{prefix}{}", d.connections),
            messages: format!("{prefix}{}", d.messages),
            message_ids: format!("{prefix}{}", d.message_ids),
            read_positions: format!("{prefix}{}", d.read_positions),
        }
    }
}

/// The store. Cheap to clone; one per process (a Lambda execution environment keeps it across
/// invocations).
#[derive(Clone)]
pub struct DynamoStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    tables: Tables,
    listener: Arc<dyn CommitListener>,
    /// Appends to one room from this process are serialized, so the listener sees this
    /// process's commits in seq order (other processes' commits it never sees).
    room_locks: Mutex<HashMap<RoomId, Arc<tokio::sync::Mutex<()>>>>,
    /// User, mode and row expiry of connections this process inserted or read, so
    /// `add_membership` need not read the row again to fill the room index.
    known: Mutex<HashMap<ConnectionId, (UserName, Mode, u64)>>,
    /// `Limit` of every Query and Scan of the connections table: `None` is DynamoDB's 1 MB
    /// pages; tests set a small one so that every loop over pages runs more than once.
    page_size: Option<i32>,
}

impl DynamoStore {
    pub fn new(client: Client, tables: Tables, listener: Arc<dyn CommitListener>) -> Self {
        DynamoStore {
            inner: Arc::new(Inner {
                client,
                tables,
                listener,
                room_locks: Mutex::new(HashMap::new()),
                known: Mutex::new(HashMap::new()),
                page_size: None,
            }),
        }
    }

    /// The same store reading the connections table `items` at a time (see `page_size`).
    pub fn with_page_size(client: Client, tables: Tables, items: i32) -> Self {
        let store = DynamoStore::new(client, tables, Arc::new(dynamowave_core::ports::NoListener));
        let mut inner = Arc::into_inner(store.inner).expect("just made");
        inner.page_size = Some(items);
        DynamoStore {
            inner: Arc::new(inner),
        }
    }

    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// A DynamoDB client from the environment: region, credentials and `AWS_ENDPOINT_URL` (an
/// emulator such as moto) as the AWS SDK reads them.
pub async fn client_from_env() -> Client {
    Client::new(&aws_config::load_from_env().await)
}

/// Creates the four tables as deploy/aws/template.yaml does (on-demand, TTL on the
/// connections table) and waits until they are active. Tables that exist are left alone.
pub async fn create_tables(client: &Client, tables: &Tables) -> Result<(), StoreError> {
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| backend("building a key schema", e))
    };
    let attr = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .map_err(|e| backend("building an attribute definition", e))
    };
    use KeyType::{Hash, Range};
    use ScalarAttributeType::{N, S};
    let specs = [
        (
            &tables.connections,
            vec![key("pk", Hash)?, key("sk", Range)?],
            vec![attr("pk", S)?, attr("sk", S)?],
        ),
        (
            &tables.messages,
            vec![key("room", Hash)?, key("seq", Range)?],
            vec![attr("room", S)?, attr("seq", N)?],
        ),
        (
            &tables.message_ids,
            vec![key("key", Hash)?],
            vec![attr("key", S)?],
        ),
        (
            &tables.read_positions,
            vec![key("room", Hash)?, key("user", Range)?],
            vec![attr("room", S)?, attr("user", S)?],
        ),
    ];
    for (name, keys, attrs) in specs {
        let created = client
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_key_schema(Some(keys))
            .set_attribute_definitions(Some(attrs))
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(e) => return Err(backend("CreateTable", e)),
        }
    }
    for name in [
        &tables.connections,
        &tables.messages,
        &tables.message_ids,
        &tables.read_positions,
    ] {
        wait_active(client, name).await?;
    }
    let ttl = TimeToLiveSpecification::builder()
        .attribute_name("expiresAt")
        .enabled(true)
        .build()
        .map_err(|e| backend("building the TTL spec", e))?;
    if let Err(e) = client
        .update_time_to_live()
        .table_name(&tables.connections)
        .time_to_live_specification(ttl)
        .send()
        .await
    {
        // Enabling TTL twice is refused ("TimeToLive is already enabled"): that is fine.
        let already = format!("{}", DisplayErrorContext(&e)).contains("already enabled");
        if !already {
            return Err(backend("UpdateTimeToLive", e));
        }
    }
    Ok(())
}

async fn wait_active(client: &Client, name: &str) -> Result<(), StoreError> {
    for _ in 0..300 {
        let table = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| backend("DescribeTable", e))?;
        let status = table.table().and_then(|t| t.table_status());
        if status == Some(&aws_sdk_dynamodb::types::TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(StoreError::Backend(format!(
        "table {name} did not become ACTIVE within 60 s"
    )))
}

// ---------------------------------------------------------------------------------------------
// Attribute and error helpers

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(malformed(name)),
    }
}

fn get_n(item: &Item, name: &str) -> Result<u64, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| malformed(name)),
        _ => Err(malformed(name)),
    }
}

fn get_n_opt(item: &Item, name: &str) -> Result<Option<u64>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(_) => get_n(item, name).map(Some),
    }
}

fn malformed(name: &str) -> StoreError {
    StoreError::Backend(format!(
        "a stored item lacks `{name}` or has the wrong type"
    ))
}

/// A failed DynamoDB call, with the SDK's whole error chain in the log.
fn backend(what: &str, e: impl std::error::Error) -> StoreError {
    let text = format!("DynamoDB {what}: {}", DisplayErrorContext(&e));
    tracing::warn!(error = %text, "store call failed");
    StoreError::Backend(text)
}

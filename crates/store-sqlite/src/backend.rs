//! The embedded deployment shape as the server opens it: one [`SqliteStore`] in the data
//! directory is the message log, the connections table, the dead-letter table, the webhook
//! outbox (when webhooks are on) and the store's lifecycle; the node's own fan-out (the hub) is the room membership; there are no peers.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use dynamowave_core::ports::{
    Backend, CommitListener, Fanout, OpenError, StoreError, Stores, WebhookOutbox,
};

use crate::cipher::{self, KeyError};
use crate::sqlite::{self, SqliteStore, StoreOptions};

/// The SQLite [`Backend`]: where the store lives and the keys of `[encryption]`.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    data_dir: PathBuf,
    key_files: Vec<PathBuf>,
    keys: Vec<String>,
    webhooks: bool,
}

impl SqliteBackend {
    /// The store in `data_dir`, encrypted under the keys in `key_files` and then the `keys`
    /// given inline (base64; the last of all encrypts new rows), plaintext when there is none.
    /// Nothing is read before [`Backend::open`] (or [`SqliteBackend::open_store`]).
    pub fn new(data_dir: impl Into<PathBuf>, key_files: Vec<PathBuf>, keys: Vec<String>) -> Self {
        SqliteBackend {
            data_dir: data_dir.into(),
            key_files,
            keys,
            webhooks: false,
        }
    }

    /// With `on`, the store writes the event of every commit to its webhook outbox and
    /// [`Backend::open`] returns it as [`Stores::outbox`]; off (the default), nothing is
    /// written there.
    pub fn with_webhooks(mut self, on: bool) -> Self {
        self.webhooks = on;
        self
    }

    /// What [`Backend::open`] does, with the store itself as the result: reads the keys (a key
    /// that does not load stops the start; the log says whether encryption is on), opens the
    /// store (taking the data directory's lock), and refuses a store holding rows under a key
    /// that is not configured.
    pub async fn open_store(
        self,
        listener: Arc<dyn CommitListener>,
    ) -> Result<Arc<SqliteStore>, StartError> {
        let keys = cipher::keyring_at_start(&self.key_files, &self.keys)?;
        let options = StoreOptions {
            keys,
            webhooks: self.webhooks,
        };
        let store = Arc::new(SqliteStore::open_with(&self.data_dir, listener, options)?);
        // Rows under a key that is not configured could not be read: refuse to start.
        cipher::refuse_unknown_keys(&store, &self.data_dir).await?;
        Ok(store)
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(self: Box<Self>, fanout: Fanout) -> Result<Stores, OpenError> {
        let store = self.open_store(fanout.listener).await?;
        let outbox = store
            .webhooks()
            .then(|| store.clone() as Arc<dyn WebhookOutbox>);
        Ok(Stores {
            kind: "sqlite",
            log: store.clone(),
            connections: store.clone(),
            rooms: fanout.rooms,
            dead_letters: store.clone(),
            lifecycle: store,
            peers: None,
            outbox,
        })
    }
}

/// Why the SQLite backend could not start. The text says what to fix; it never holds a key.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configured encryption key does not load.
    #[error("invalid setting: {0}")]
    Keys(KeyError),
    /// The store could not be opened (the directory is locked, not writable, not a store).
    #[error(transparent)]
    Open(#[from] sqlite::OpenError),
    /// The store holds rows under keys that are not configured (see
    /// [`cipher::refuse_unknown_keys`]).
    #[error("invalid setting: {0}")]
    UnknownKeys(String),
    #[error("the store failed at start: {0}")]
    Store(#[source] StoreError),
}

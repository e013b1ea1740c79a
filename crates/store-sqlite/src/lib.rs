//! DynamoWave's embedded store: the core's ports on one SQLite file, for the single-binary
//! deployment shape.
//!
//! # Layout
//!
//! - [`backend`]: [`SqliteBackend`], the core's `Backend` for this shape: built from the data
//!   directory and the encryption keys, opened by the server with its fan-out (the keyring,
//!   the store, the refusal of rows under keys that are not configured), and [`StartError`],
//!   why it could not start.
//! - [`sqlite`]: [`SqliteStore`], the group-committing store (one writer thread, a priority
//!   lane, a pool of readers); it implements `MessageLog`, `ConnectionStore`, `DeadLetters`,
//!   `WebhookOutbox` (when opened with webhooks on, [`sqlite::StoreOptions`]) and
//!   `StoreLifecycle`. It records the store metrics (`dynamowave_store_*`,
//!   `dynamowave_messages_received_total`, `dynamowave_messages_acked_total`) into the process's
//!   `metrics` recorder, once per writer batch.
//! - [`cipher`]: encryption at rest of message bodies, dead-letter payloads and webhook events
//!   (AES-256-GCM), the [`cipher::Keyring`] and how keys are read and checked at start.
//! - [`rekey`]: `dynamowave rekey`, moving stored rows to the newest key.
//! - [`snapshot`]: `dynamowave backup` (an online, consistent copy) and `dynamowave restore`
//!   (a new data directory at a point in time).

pub mod backend;
pub mod cipher;
pub mod rekey;
pub mod snapshot;
pub mod sqlite;

pub use backend::{SqliteBackend, StartError};
pub use sqlite::SqliteStore;

//! Store adapters of the core's ports. The embedded shape uses [`sqlite::SqliteStore`];
//! [`snapshot`] backs it up and restores it to a point in time; [`cipher`] encrypts message
//! bodies and dead-letter payloads at rest, and [`rekey`] moves stored rows to the newest key.

pub mod cipher;
pub mod rekey;
pub mod snapshot;
pub mod sqlite;

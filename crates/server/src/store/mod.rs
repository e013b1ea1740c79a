//! Store adapters of the core's ports. The embedded shape uses [`sqlite::SqliteStore`];
//! [`snapshot`] backs it up and restores it to a point in time.

pub mod snapshot;
pub mod sqlite;

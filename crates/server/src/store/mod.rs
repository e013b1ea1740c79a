//! Store adapters of the core's ports. The embedded shape uses [`sqlite::SqliteStore`].

pub mod sqlite;

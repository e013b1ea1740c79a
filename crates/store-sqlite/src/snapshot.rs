//! Online backup and point-in-time restore of the SQLite store (`dynamowave backup` and
//! `dynamowave restore`).
//!
//! Both copy a store with `VACUUM INTO` on a read-only connection. It reads inside one read
//! transaction, so the copy is a consistent snapshot of everything committed before it started,
//! and with WAL it never blocks the server's writer (nor the other way round). The `LOCK` file is
//! not taken: a backup is meant to run next to a serving server.
//!
//! - [`backup`] writes such a copy to a new file and records when it was taken in a one-row
//!   table `snapshot_info(taken_at)` (ms since the epoch, measured just before the copy began:
//!   the file holds everything committed before that moment).
//! - [`restore`] copies a backup or a data directory into a new data directory and rolls it back
//!   to an instant `T`: everything stamped at or before `T` (ms precision) stays, everything
//!   later goes, and deletions made after `T` are undone (deletions are tombstones, see the
//!   `deleted_at` column). Edits and reactions are log entries of their own (`messages.kind`),
//!   so dropping the later ones undoes them; read positions moved after `T` are removed, and so
//!   are webhook events queued after `T`.
//!
//! Every file is written under a temporary name, fsync'd, and renamed into place, so a crash
//! never leaves a half-written backup or store under the final name.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use dynamowave_core::types::{now_ms, rfc3339_ms};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// The store's file inside a data directory (the name [`crate::SqliteStore`] opens).
pub const STORE_FILE: &str = "dynamowave.sqlite3";

/// What [`backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub file: PathBuf,
    /// Ms since the epoch: the backup holds everything committed before this instant.
    pub taken_at: u64,
    pub rooms: u64,
    /// Messages not deleted.
    pub messages: u64,
    /// Deleted messages kept as tombstones (a restore to before their deletion brings them back).
    pub deleted: u64,
    /// Size of the backup file.
    pub bytes: u64,
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInfo {
    /// The new data directory.
    pub into: PathBuf,
    /// The instant restored to, ms since the epoch.
    pub to: u64,
    /// Up to when the source held the state: its backup time, or when a data directory was read.
    pub source_taken_at: u64,
    /// Messages in the restored store that are not deleted.
    pub kept: u64,
    /// Messages stamped after `to`, removed.
    pub dropped: u64,
    /// Edits, deletions and reactions stamped after `to`, removed (which undoes them).
    pub events_dropped: u64,
    /// Messages deleted after `to`, visible again.
    pub tombstones_cleared: u64,
    /// Messages deleted at or before `to`, still deleted.
    pub still_deleted: u64,
    pub rooms: u64,
    /// Rooms created after `to`, removed.
    pub rooms_dropped: u64,
    /// Dead letters recorded after `to`, removed.
    pub dead_letters_dropped: u64,
    /// Dead letters replayed after `to`, pending again.
    pub dead_letters_unreplayed: u64,
    /// Read positions moved after `to`, removed: where they stood at `to` is not recorded, so
    /// those users start the room over as unread rather than as read past what they saw.
    pub read_positions_dropped: u64,
    /// Webhook events queued after `to`, removed: they report what the restore undid. (Those
    /// queued before stay, and may reach the backend again if they were delivered after the
    /// source was taken.)
    pub webhook_events_dropped: u64,
}

/// Why a backup or restore did not happen. Nothing is left under the target's final name.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "no DynamoWave store in {0} (no {STORE_FILE} there); check --data-dir or DYNAMOWAVE_DATA_DIR"
    )]
    NoStore(PathBuf),
    #[error("{0} does not exist; --from takes a backup file or a data directory")]
    NoSource(PathBuf),
    #[error("{0} is not a DynamoWave backup or store ({1}); check the path")]
    NotAStore(PathBuf, String),
    #[error("{0} already exists; a backup never overwrites a file, choose a new name")]
    Exists(PathBuf),
    #[error(
        "{0} is not empty; restore into a new or empty directory (a restore never overwrites a store)"
    )]
    NotEmpty(PathBuf),
    #[error("{0} is a file; --into takes a new or empty directory")]
    NotADirectory(PathBuf),
    #[error(
        "cannot restore to {to}: {source_path} holds the state only up to {taken_at}; choose a time at or before that, or a newer backup"
    )]
    AfterSource {
        to: String,
        source_path: PathBuf,
        taken_at: String,
    },
    #[error(
        "{value:?} is not an RFC 3339 time ({reason}); write it like 2026-01-31T14:05:00Z or 2026-01-31T14:05:00.250+01:00"
    )]
    BadTime { value: String, reason: String },
    #[error("the restored store failed SQLite's integrity check ({0}); the source may be damaged")]
    Integrity(String),
    #[error("cannot use {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("SQLite failed on {0}: {1}")]
    Sqlite(PathBuf, rusqlite::Error),
}

/// Parses an RFC 3339 time, with or without a fraction of a second, to ms since the epoch
/// (a finer fraction is cut to the ms: the store stamps in ms).
pub fn parse_time(value: &str) -> Result<u64, SnapshotError> {
    let bad = |reason: String| SnapshotError::BadTime {
        value: value.to_owned(),
        reason,
    };
    let t =
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|e| bad(e.to_string()))?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(ms).map_err(|_| bad("it is before 1970".into()))
}

/// Writes a consistent snapshot of the store in `data_dir` to `file`, which must not exist. A
/// server may be serving on `data_dir` meanwhile; it is not slowed beyond the extra reads.
pub fn backup(data_dir: &Path, file: &Path) -> Result<BackupInfo, SnapshotError> {
    let store = store_in(data_dir)?;
    refuse_existing(file)?;
    let partial = partial_name(file);
    let result = (|| {
        let source = open_source(&store)?;
        let taken_at = copy(&source, &store, &partial)?;
        drop(source);
        let conn = open_copy(&partial)?;
        let sql = |e| SnapshotError::Sqlite(partial.clone(), e);
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS snapshot_info (taken_at INTEGER NOT NULL);
             DELETE FROM snapshot_info;",
        )
        .map_err(sql)?;
        conn.execute(
            "INSERT INTO snapshot_info (taken_at) VALUES (?1)",
            [taken_at as i64],
        )
        .map_err(sql)?;
        let rooms = count(&conn, "SELECT count(*) FROM rooms").map_err(sql)?;
        let (messages, deleted) = message_counts(&conn).map_err(sql)?;
        drop(conn);
        // Check again just before the rename, which would replace a file made meanwhile.
        refuse_existing(file)?;
        let bytes = persist(&partial, file)?;
        Ok(BackupInfo {
            file: file.to_owned(),
            taken_at,
            rooms,
            messages,
            deleted,
            bytes,
        })
    })();
    if result.is_err() {
        remove_partial(&partial);
    }
    result
}

/// Makes `into` (new, or an empty directory) a data directory holding exactly the state of
/// `from` at `to_ms`: every message, room and dead letter stamped at or before `to_ms`, with the
/// deletions and replays made after it undone, and no connections or memberships (nobody is
/// connected to a restored store).
///
/// `from` is a backup file, or a data directory (a server may be serving on it). `to_ms` may not
/// be later than when the source was taken: what happened after is not in it.
///
/// Room heads (`rooms.last_seq`) keep their value from the source even when the messages at the
/// top were dropped: seqs are never reused across a restore. A client that saw seq 120 on the old
/// timeline resumes with `join {after: 120}`; if the restored room handed out 101..120 again, the
/// client would skip those new messages as already seen. With the head kept, new messages start
/// at 121 and the dropped range stays a gap. (From a backup, the heads are those of the backup:
/// a client that saw seqs committed after it gets `joined.seq` below its `after`, which the
/// protocol defines as "the log was reset, start the room over".)
pub fn restore(from: &Path, to_ms: u64, into: &Path) -> Result<RestoreInfo, SnapshotError> {
    let (source_path, is_data_dir) = match fs::metadata(from) {
        Ok(m) if m.is_dir() => (store_in(from)?, true),
        Ok(_) => (from.to_owned(), false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SnapshotError::NoSource(from.to_owned()));
        }
        Err(e) => return Err(SnapshotError::Io(from.to_owned(), e)),
    };
    let created_dir = prepare_target_dir(into)?;
    let partial = into.join(format!(".{STORE_FILE}.partial"));
    let result = (|| {
        let source = open_source(&source_path)?;
        // A backup knows when it was taken; a store holds the state up to now. Refuse before
        // copying anything when `to_ms` is past that.
        let recorded = if is_data_dir {
            None
        } else {
            snapshot_time(&source).map_err(|e| not_a_store(&source_path, e))?
        };
        let horizon = recorded.unwrap_or_else(now_ms);
        if to_ms > horizon {
            return Err(SnapshotError::AfterSource {
                to: rfc3339_ms(to_ms),
                source_path: if is_data_dir {
                    from.to_owned()
                } else {
                    source_path.clone()
                },
                taken_at: rfc3339_ms(horizon),
            });
        }
        let copied_at = copy(&source, &source_path, &partial)?;
        drop(source);
        let source_taken_at = recorded.unwrap_or(copied_at);

        let mut conn = open_copy(&partial)?;
        let sql = |e| SnapshotError::Sqlite(partial.clone(), e);
        let undone = roll_back_to(&mut conn, to_ms).map_err(sql)?;
        check_integrity(&conn, &partial)?;
        let rooms = count(&conn, "SELECT count(*) FROM rooms").map_err(sql)?;
        let (kept, still_deleted) = message_counts(&conn).map_err(sql)?;
        drop(conn);
        persist(&partial, &into.join(STORE_FILE))?;
        Ok(RestoreInfo {
            into: into.to_owned(),
            to: to_ms,
            source_taken_at,
            kept,
            dropped: undone.dropped,
            events_dropped: undone.events_dropped,
            tombstones_cleared: undone.tombstones_cleared,
            still_deleted,
            rooms,
            rooms_dropped: undone.rooms_dropped,
            dead_letters_dropped: undone.dead_letters_dropped,
            dead_letters_unreplayed: undone.dead_letters_unreplayed,
            read_positions_dropped: undone.read_positions_dropped,
            webhook_events_dropped: undone.webhook_events_dropped,
        })
    })();
    if result.is_err() {
        remove_partial(&partial);
        if created_dir {
            let _ = fs::remove_dir(into);
        }
    }
    result
}

/// What [`roll_back_to`] undid (the fields of [`RestoreInfo`] of the same names).
struct Undone {
    dropped: u64,
    events_dropped: u64,
    tombstones_cleared: u64,
    rooms_dropped: u64,
    dead_letters_dropped: u64,
    dead_letters_unreplayed: u64,
    read_positions_dropped: u64,
    webhook_events_dropped: u64,
}

/// Rolls the copy back to `to_ms`, in one transaction.
fn roll_back_to(conn: &mut Connection, to_ms: u64) -> rusqlite::Result<Undone> {
    let t = to_ms as i64;
    // Stores written before tombstones or dead letters existed lack them; the server adds
    // them when it opens the restored store.
    let has_tombstones = has_column(conn, "messages", "deleted_at")?;
    let has_dead_letters = has_table(conn, "dead_letters")?;
    let has_events = has_column(conn, "messages", "kind")?;
    let has_read_positions = has_table(conn, "read_positions")?;
    let has_outbox = has_table(conn, "webhook_outbox")?;

    // One transaction: the restored store is the rolled-back state or nothing.
    let tx = conn.transaction()?;
    // Edits and reactions are rows of their own, never written into their message's row:
    // dropping the later ones is what undoes them. A later deletion by its author also set
    // `deleted_at` on the message, cleared below.
    let events_dropped = if has_events {
        tx.execute(
            "DELETE FROM messages WHERE ts > ?1 AND kind IS NOT NULL",
            [t],
        )? as u64
    } else {
        0
    };
    let dropped = tx.execute("DELETE FROM messages WHERE ts > ?1", [t])? as u64;
    let tombstones_cleared = if has_tombstones {
        tx.execute(
            "UPDATE messages SET deleted_at = NULL WHERE deleted_at > ?1",
            [t],
        )? as u64
    } else {
        0
    };
    // Deliberately no `UPDATE rooms SET last_seq = ...`: see `restore` on why heads stay.
    let rooms_dropped = tx.execute("DELETE FROM rooms WHERE created_at > ?1", [t])? as u64;
    let (dead_letters_dropped, dead_letters_unreplayed) = if has_dead_letters {
        (
            tx.execute("DELETE FROM dead_letters WHERE created_at > ?1", [t])? as u64,
            tx.execute(
                "UPDATE dead_letters SET replayed_at = NULL, replayed_to = NULL WHERE replayed_at > ?1",
                [t],
            )? as u64,
        )
    } else {
        (0, 0)
    };
    let read_positions_dropped = if has_read_positions {
        tx.execute("DELETE FROM read_positions WHERE updated_at > ?1", [t])? as u64
    } else {
        0
    };
    let webhook_events_dropped = if has_outbox {
        tx.execute("DELETE FROM webhook_outbox WHERE created_at > ?1", [t])? as u64
    } else {
        0
    };
    tx.execute_batch(
        "DELETE FROM memberships;
         DELETE FROM connections;
         DROP TABLE IF EXISTS snapshot_info;",
    )?;
    tx.commit()?;
    Ok(Undone {
        dropped,
        events_dropped,
        tombstones_cleared,
        rooms_dropped,
        dead_letters_dropped,
        dead_letters_unreplayed,
        read_positions_dropped,
        webhook_events_dropped,
    })
}

/// `data_dir/dynamowave.sqlite3`, which must exist.
fn store_in(data_dir: &Path) -> Result<PathBuf, SnapshotError> {
    let store = data_dir.join(STORE_FILE);
    if store.is_file() {
        Ok(store)
    } else {
        Err(SnapshotError::NoStore(data_dir.to_owned()))
    }
}

fn refuse_existing(file: &Path) -> Result<(), SnapshotError> {
    match fs::symlink_metadata(file) {
        Ok(_) => Err(SnapshotError::Exists(file.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::Io(file.to_owned(), e)),
    }
}

/// Creates `into` unless it is an existing empty directory. True when it was created (and so
/// is removed again if the restore fails).
fn prepare_target_dir(into: &Path) -> Result<bool, SnapshotError> {
    let io_err = |e| SnapshotError::Io(into.to_owned(), e);
    match fs::metadata(into) {
        Ok(m) if !m.is_dir() => Err(SnapshotError::NotADirectory(into.to_owned())),
        Ok(_) => {
            if fs::read_dir(into).map_err(io_err)?.next().is_some() {
                Err(SnapshotError::NotEmpty(into.to_owned()))
            } else {
                Ok(false)
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(into).map_err(io_err)?;
            Ok(true)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// A hidden name next to `file`, unique to this process, for the copy until it is complete.
fn partial_name(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    file.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Removes a partial copy and the rollback journal SQLite may have left next to it.
fn remove_partial(partial: &Path) {
    let _ = fs::remove_file(partial);
    let mut journal = partial.as_os_str().to_owned();
    journal.push("-journal");
    let _ = fs::remove_file(PathBuf::from(journal));
}

/// A read-only connection to a store or backup. Read-only: it takes no write lock and never
/// checkpoints, so the serving server does not notice it beyond the reads.
fn open_source(path: &Path) -> Result<Connection, SnapshotError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| SnapshotError::Sqlite(path.to_owned(), e))?;
    // A WAL reader can see SQLITE_BUSY for a moment, e.g. while a crashed server's WAL is
    // being recovered by the one that replaced it.
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| SnapshotError::Sqlite(path.to_owned(), e))?;
    // Opening is lazy: this first read tells a store from any other file.
    if !has_table(&conn, "messages").map_err(|e| not_a_store(path, e))? {
        return Err(SnapshotError::NotAStore(
            path.to_owned(),
            "it has no messages table".into(),
        ));
    }
    Ok(conn)
}

fn not_a_store(path: &Path, e: rusqlite::Error) -> SnapshotError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            SnapshotError::NotAStore(path.to_owned(), "not an SQLite database".into())
        }
        _ => SnapshotError::Sqlite(path.to_owned(), e),
    }
}

/// `VACUUM INTO out` from `source`. Returns the time measured just before the copy began: the
/// copy holds everything committed before it.
fn copy(source: &Connection, source_path: &Path, out: &Path) -> Result<u64, SnapshotError> {
    let out_str = out.to_str().ok_or_else(|| {
        SnapshotError::Io(
            out.to_owned(),
            io::Error::new(io::ErrorKind::InvalidInput, "the path is not valid UTF-8"),
        )
    })?;
    // VACUUM INTO fails when its target exists; a leftover of a crashed run of ours can go.
    remove_partial(out);
    let taken_at = now_ms();
    source
        .execute("VACUUM INTO ?1", [out_str])
        .map_err(|e| SnapshotError::Sqlite(source_path.to_owned(), e))?;
    Ok(taken_at)
}

/// A read-write connection to a fresh copy, committing with fsync. `VACUUM INTO` writes the copy
/// with a rollback journal whatever the source uses (no `-wal` beside it: the file stands
/// alone); the pragma keeps it so, should that ever change.
fn open_copy(path: &Path) -> Result<Connection, SnapshotError> {
    let sql = |e| SnapshotError::Sqlite(path.to_owned(), e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    Ok(conn)
}

/// fsyncs `partial`, renames it to `target` and fsyncs the directory, so that after a crash
/// `target` is either absent or complete. Returns the file's size.
fn persist(partial: &Path, target: &Path) -> Result<u64, SnapshotError> {
    let file = File::open(partial).map_err(|e| SnapshotError::Io(partial.to_owned(), e))?;
    file.sync_all()
        .map_err(|e| SnapshotError::Io(partial.to_owned(), e))?;
    let bytes = file
        .metadata()
        .map_err(|e| SnapshotError::Io(partial.to_owned(), e))?
        .len();
    drop(file);
    fs::rename(partial, target).map_err(|e| SnapshotError::Io(target.to_owned(), e))?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Directories cannot be opened for fsync on every platform; where they can, the rename is
    // durable once this returns.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::Io(dir.to_owned(), e))?;
    Ok(bytes)
}

/// `snapshot_info.taken_at` of a backup; `None` for a store.
fn snapshot_time(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    if !has_table(conn, "snapshot_info")? {
        return Ok(None);
    }
    let taken_at: Option<i64> = conn
        .query_row("SELECT max(taken_at) FROM snapshot_info", [], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(taken_at.map(|t| t as u64))
}

fn check_integrity(conn: &Connection, path: &Path) -> Result<(), SnapshotError> {
    let problems = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| SnapshotError::Sqlite(path.to_owned(), e))?;
    if problems == ["ok"] {
        Ok(())
    } else {
        Err(SnapshotError::Integrity(problems.join("; ")))
    }
}

/// (messages not deleted, tombstones); event entries are not messages.
fn message_counts(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    if has_column(conn, "messages", "deleted_at")? {
        let only_messages = if has_column(conn, "messages", "kind")? {
            "WHERE kind IS NULL"
        } else {
            ""
        };
        conn.query_row(
            &format!(
                "SELECT count(*) FILTER (WHERE deleted_at IS NULL),
                        count(*) FILTER (WHERE deleted_at IS NOT NULL)
                 FROM messages {only_messages}"
            ),
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
    } else {
        Ok((count(conn, "SELECT count(*) FROM messages")?, 0))
    }
}

fn count(conn: &Connection, sql: &str) -> rusqlite::Result<u64> {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![table],
        |r| r.get(0),
    )
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dynamowave_core::ports::{MessageLog, NewMessage, NoListener};
    use dynamowave_core::{RoomId, UserName};

    use super::*;
    use crate::sqlite::SqliteStore;

    /// A data directory made by the real store, then filled by hand so timestamps are chosen:
    /// room `a` (created at 1000) with seqs 1..=3 stamped 1000, 2000, 3000, seq 2 deleted at
    /// 2500, head 3; room `b` created at 2800 with seq 1 at 2800; a connection in both rooms;
    /// a dead letter recorded at 1500 and replayed at 2700, another recorded at 2900.
    fn filled_data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), Arc::new(NoListener)).unwrap());
        let conn = Connection::open(dir.path().join(STORE_FILE)).unwrap();
        conn.execute_batch(
            "INSERT INTO rooms (room, last_seq, created_at) VALUES ('a', 3, 1000), ('b', 1, 2800);
             INSERT INTO messages (room, seq, id, user, data, ts, deleted_at) VALUES
                 ('a', 1, 'm1', 'u', 'one', 1000, NULL),
                 ('a', 2, 'm2', 'u', 'two', 2000, 2500),
                 ('a', 3, 'm3', 'u', 'three', 3000, NULL),
                 ('b', 1, 'n1', 'u', 'bee', 2800, NULL);
             INSERT INTO connections (id, user, mode, source_ip, user_agent, connected_at)
                 VALUES ('c1', 'u', 'v1', '127.0.0.1', 'test', 900);
             INSERT INTO memberships (connection_id, room) VALUES ('c1', 'a'), ('c1', 'b');
             INSERT INTO dead_letters (created_at, kind, target, reason, payload, replayed_at, replayed_to)
                 VALUES (1500, 'message', 'c1', 'gone', '{}', 2700, 'c2'),
                        (2900, 'message', 'c1', 'gone', '{}', NULL, NULL);",
        )
        .unwrap();
        dir
    }

    fn open(path: &Path) -> Connection {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    fn query<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<T> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Seqs of room `a` that are not deleted.
    fn visible(store: &Path) -> Vec<i64> {
        query(
            &open(store),
            "SELECT seq FROM messages WHERE room = 'a' AND deleted_at IS NULL ORDER BY seq",
        )
    }

    #[test]
    fn a_backup_is_a_complete_standalone_copy_that_knows_when_it_was_taken() {
        let data = filled_data_dir();
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("b.sqlite3");
        let before = now_ms();
        let info = backup(data.path(), &file).unwrap();
        assert!(info.taken_at >= before && info.taken_at <= now_ms());
        assert_eq!(
            (info.rooms, info.messages, info.deleted),
            (2, 3, 1),
            "{info:?}"
        );
        assert_eq!(info.bytes, fs::metadata(&file).unwrap().len());
        let conn = open(&file);
        assert_eq!(
            query::<i64>(&conn, "SELECT taken_at FROM snapshot_info"),
            [info.taken_at as i64]
        );
        assert_eq!(
            query::<String>(&conn, "PRAGMA journal_mode"),
            ["delete"],
            "one file, no -wal beside it"
        );
        let names: Vec<_> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b.sqlite3"], "no partial file left behind");

        let again = backup(data.path(), &file).unwrap_err();
        assert!(matches!(again, SnapshotError::Exists(_)), "{again}");
        let none = backup(out.path(), &out.path().join("c")).unwrap_err();
        assert!(matches!(none, SnapshotError::NoStore(_)), "{none}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_runs_while_the_store_is_open_and_writing() {
        let data = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(data.path(), Arc::new(NoListener)).unwrap();
        let room = RoomId::parse("live").unwrap();
        let mut acked = 0;
        for i in 0..50 {
            store
                .append(NewMessage::message(
                    room.clone(),
                    format!("m{i}"),
                    UserName::parse("u").unwrap(),
                    "x".into(),
                ))
                .await
                .unwrap();
            acked += 1;
        }
        let file = data.path().join("backup.sqlite3");
        let dir = data.path().to_owned();
        let copy = file.clone();
        let info = tokio::task::spawn_blocking(move || backup(&dir, &copy))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            info.messages, acked,
            "the LOCK held by the store is no obstacle"
        );
        store.shutdown().await;
    }

    #[test]
    fn restore_keeps_what_was_stamped_up_to_the_instant_and_undoes_later_deletions() {
        let data = filled_data_dir();
        let out = tempfile::tempdir().unwrap();

        // After the deletion of seq 2 (2500), before seq 3 and room b.
        let into = out.path().join("at-2600");
        let info = restore(data.path(), 2600, &into).unwrap();
        let store = into.join(STORE_FILE);
        assert_eq!(
            visible(&store),
            [1],
            "seq 2 was deleted at 2500, seq 3 is later"
        );
        assert_eq!(
            (
                info.kept,
                info.dropped,
                info.tombstones_cleared,
                info.still_deleted
            ),
            (1, 2, 0, 1),
            "{info:?}"
        );
        assert_eq!((info.rooms, info.rooms_dropped), (1, 1));
        let conn = open(&store);
        assert_eq!(
            query::<i64>(&conn, "SELECT last_seq FROM rooms"),
            [3],
            "the head is kept: seqs are never reused"
        );
        assert_eq!(query::<i64>(&conn, "SELECT count(*) FROM connections"), [0]);
        assert_eq!(query::<i64>(&conn, "SELECT count(*) FROM memberships"), [0]);
        assert_eq!(
            query::<Option<i64>>(&conn, "SELECT replayed_at FROM dead_letters"),
            [None],
            "the replay at 2700 is undone, the letter of 2900 is gone"
        );
        assert_eq!(
            (info.dead_letters_dropped, info.dead_letters_unreplayed),
            (1, 1)
        );
        assert_eq!(
            query::<i64>(
                &conn,
                "SELECT count(*) FROM sqlite_master WHERE name = 'snapshot_info'"
            ),
            [0]
        );

        // Between seq 2 and its deletion: seq 2 is back.
        let into = out.path().join("at-2400");
        let info = restore(data.path(), 2400, &into).unwrap();
        assert_eq!(visible(&into.join(STORE_FILE)), [1, 2]);
        assert_eq!(info.tombstones_cleared, 1);

        // From a backup, to the instant it was taken: everything, as it was.
        let file = out.path().join("backup");
        let taken = backup(data.path(), &file).unwrap();
        let into = out.path().join("at-backup");
        let info = restore(&file, taken.taken_at, &into).unwrap();
        assert_eq!(visible(&into.join(STORE_FILE)), [1, 3]);
        assert_eq!((info.kept, info.dropped, info.rooms), (3, 0, 2));
        assert_eq!(info.source_taken_at, taken.taken_at);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_store_continues_after_the_old_head() {
        let data = filled_data_dir();
        let into = data.path().join("restored");
        restore(data.path(), 1500, &into).unwrap();
        let store = SqliteStore::open(&into, Arc::new(NoListener)).unwrap();
        let room = RoomId::parse("a").unwrap();
        let appended = store
            .append(NewMessage::message(
                room.clone(),
                "new".into(),
                UserName::parse("u").unwrap(),
                "after the restore".into(),
            ))
            .await
            .unwrap();
        assert_eq!(
            appended.message.seq.0, 4,
            "3 was handed out before the restore"
        );
        store.shutdown().await;
    }

    #[test]
    fn restore_refuses_what_it_cannot_do_and_leaves_nothing_behind() {
        let data = filled_data_dir();
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("backup");
        let taken = backup(data.path(), &file).unwrap();

        let into = out.path().join("later");
        let err = restore(&file, taken.taken_at + 1, &into).unwrap_err();
        assert!(matches!(err, SnapshotError::AfterSource { .. }), "{err}");
        assert!(!into.exists(), "the directory it made is gone again");

        let err = restore(data.path(), now_ms() + 60_000, &into).unwrap_err();
        assert!(matches!(err, SnapshotError::AfterSource { .. }), "{err}");

        let err = restore(&file, 1000, data.path()).unwrap_err();
        assert!(matches!(err, SnapshotError::NotEmpty(_)), "{err}");
        let err = restore(&file, 1000, &file).unwrap_err();
        assert!(matches!(err, SnapshotError::NotADirectory(_)), "{err}");
        let err = restore(&out.path().join("nope"), 1000, &into).unwrap_err();
        assert!(matches!(err, SnapshotError::NoSource(_)), "{err}");
        let err = restore(out.path(), 1000, &into).unwrap_err();
        assert!(matches!(err, SnapshotError::NoStore(_)), "{err}");
        let junk = out.path().join("junk");
        fs::write(
            &junk,
            "not a database, just text that is long enough to look like one",
        )
        .unwrap();
        let err = restore(&junk, 1000, &into).unwrap_err();
        assert!(matches!(err, SnapshotError::NotAStore(..)), "{err}");
        assert!(!into.exists());

        // An empty directory is fine, and stays after a failure.
        let empty = out.path().join("empty");
        fs::create_dir(&empty).unwrap();
        restore(&file, taken.taken_at + 1, &empty).unwrap_err();
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
        restore(&file, taken.taken_at, &empty).unwrap();
    }

    #[test]
    fn times_are_rfc3339_with_or_without_a_fraction() {
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.1239+01:00").unwrap(),
            1_700_000_000_123,
            "cut to the ms"
        );
        for bad in [
            "yesterday",
            "2023-11-14",
            "2023-11-14 22:13:20",
            "1969-12-31T23:59:59Z",
        ] {
            let err = parse_time(bad).unwrap_err();
            assert!(err.to_string().contains("2026-01-31T14:05:00Z"), "{err}");
        }
    }
}

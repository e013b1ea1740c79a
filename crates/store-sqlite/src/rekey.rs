//! `dynamowave rekey`: rewrites every message body, dead-letter payload and queued webhook
//! event that is not under
//! the newest key (older keys, and plaintext rows from before encryption was turned on) so that
//! the old keys can then be removed from the configuration.
//!
//! It works on the store file directly, next to a serving server (WAL lets both in; the `LOCK`
//! file is not taken, as for a backup). Rows are read outside any lock, decrypted and sealed
//! again, then written back in small `BEGIN IMMEDIATE` transactions, each row only if its key id
//! is still the one read (compare and set). Between transactions it pauses at least as long as
//! the last one held the lock, so the server's writer, waiting on SQLite's busy timeout, gets
//! in. `secure_delete` is on for its connection, so the bytes a rewrite replaces are zeroed
//! rather than left in free space, and the WAL is checkpointed and truncated at the end.
//!
//! A row it cannot decrypt (its key is not configured, or it fails to authenticate) is left as
//! it is, logged with its identity, and reported.
//!
//! Rewriting a row does not scrub every old copy of it: SQLite leaves stale bytes in the unused
//! space of pages it split or rebuilt before (with `secure_delete` off, as the server runs), so
//! a store that once held plaintext can keep fragments of it there. [`RekeyOptions::vacuum`]
//! rebuilds the whole file afterwards (`VACUUM`), which leaves none; it needs the server
//! stopped (it takes the data directory's `LOCK`), since it holds the write lock throughout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, TransactionBehavior, params};

use crate::cipher::{self, Keyring, Row};
use crate::snapshot::STORE_FILE;
use crate::sqlite::{UnknownKey, open_writer, unknown_key_rows};

/// The name [`RekeyReport`] uses for rows that were stored in plaintext.
pub const PLAINTEXT: &str = "plaintext";

/// How `rekey` paces itself.
#[derive(Clone, Debug)]
pub struct RekeyOptions {
    /// Rows per transaction.
    pub batch: usize,
    /// Shortest pause between two transactions (a random jitter of up to as much is added).
    pub pause: Duration,
    /// Rebuild the file afterwards (`VACUUM`) so no stale copy of a rewritten value is left in
    /// unused page space. Needs the server stopped.
    pub vacuum: bool,
}

impl Default for RekeyOptions {
    fn default() -> Self {
        RekeyOptions {
            batch: 500,
            pause: Duration::from_millis(20),
            vacuum: false,
        }
    }
}

/// What [`rekey`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// The key id every rewritten row is now under.
    pub newest: String,
    /// Messages rewritten, by the key id they were under ([`PLAINTEXT`] for plaintext rows).
    pub messages: BTreeMap<String, u64>,
    /// Dead letters rewritten, likewise.
    pub dead_letters: BTreeMap<String, u64>,
    /// Queued webhook events rewritten, likewise.
    pub webhook_events: BTreeMap<String, u64>,
    /// Rows that could not be decrypted and were left as they were, each with the reason.
    pub unreadable: Vec<String>,
    /// Rows still under another key when it finished (the unreadable ones, and rows a server
    /// configured with another newest key wrote meanwhile).
    pub remaining: Vec<UnknownKey>,
    /// Plaintext messages still there when it finished.
    pub remaining_plaintext: u64,
    /// Whether the WAL could be checkpointed and truncated (no old page images left in it).
    pub wal_truncated: bool,
    /// Whether the file was rebuilt ([`RekeyOptions::vacuum`]).
    pub vacuumed: bool,
}

impl RekeyReport {
    /// Whether every row is now under the newest key.
    pub fn complete(&self) -> bool {
        self.unreadable.is_empty() && self.remaining.is_empty() && self.remaining_plaintext == 0
    }
}

/// Why `rekey` could not run (or stopped; what it committed before stays, and running it again
/// continues).
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error(
        "no DynamoWave store in {0} (no {STORE_FILE} there); check --data-dir or DYNAMOWAVE_DATA_DIR"
    )]
    NoStore(PathBuf),
    #[error(
        "the data directory {0} is in use by a running server; --vacuum needs it stopped (without --vacuum, rekey runs next to the server)"
    )]
    Locked(PathBuf),
    #[error("cannot use {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("SQLite failed on {0}: {1}")]
    Sqlite(PathBuf, rusqlite::Error),
}

/// One row decrypted and sealed again, waiting to be written.
struct Rewrite {
    rowid: i64,
    /// The key id it was read under (`None`: plaintext); the write happens only if unchanged.
    old: Option<String>,
    key_id: String,
    blob: Vec<u8>,
}

/// Rewrites every row of the store in `data_dir` that is not under the newest of `keys`.
pub fn rekey(
    data_dir: &Path,
    keys: &Keyring,
    options: &RekeyOptions,
) -> Result<RekeyReport, RekeyError> {
    let path = data_dir.join(STORE_FILE);
    if !path.is_file() {
        return Err(RekeyError::NoStore(data_dir.to_owned()));
    }
    let sql = |e| RekeyError::Sqlite(path.clone(), e);
    // Held to the end: no server starts on the store while it is rebuilt.
    let _lock = if options.vacuum {
        Some(lock(data_dir)?)
    } else {
        None
    };
    // WAL, synchronous=FULL, a busy timeout, and the schema (a no-op on a current store).
    let mut conn = open_writer(&path).map_err(sql)?;
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(sql)?;
    let mut pacer = Pacer::new(options.pause);
    let mut report = RekeyReport {
        newest: keys.newest_id().to_owned(),
        ..RekeyReport::default()
    };

    rekey_table(
        &mut conn,
        keys,
        read_messages,
        "UPDATE messages SET data = ?2, key_id = ?3 WHERE rowid = ?1 AND key_id IS ?4",
        options.batch,
        &mut report.messages,
        &mut report.unreadable,
        &mut pacer,
    )
    .map_err(sql)?;
    rekey_table(
        &mut conn,
        keys,
        read_dead_letters,
        "UPDATE dead_letters SET payload = ?2, key_id = ?3 WHERE id = ?1 AND key_id IS ?4",
        options.batch,
        &mut report.dead_letters,
        &mut report.unreadable,
        &mut pacer,
    )
    .map_err(sql)?;
    rekey_table(
        &mut conn,
        keys,
        read_webhook_events,
        "UPDATE webhook_outbox SET body = ?2, key_id = ?3 WHERE id = ?1 AND key_id IS ?4",
        options.batch,
        &mut report.webhook_events,
        &mut report.unreadable,
        &mut pacer,
    )
    .map_err(sql)?;

    let newest = keys.newest_id();
    report.remaining = unknown_key_rows(&conn, |id| id == newest).map_err(sql)?;
    report.remaining_plaintext = conn
        .query_row(
            "SELECT count(*) FROM messages WHERE key_id IS NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(sql)? as u64;
    // Old page images (plaintext ones included) stay in the WAL until it is overwritten; move
    // everything into the database file and cut the WAL to nothing. A server busy writing may
    // keep this from completing; its next writes overwrite the WAL from the start.
    if options.vacuum {
        conn.execute_batch("VACUUM").map_err(sql)?;
        report.vacuumed = true;
    }
    report.wal_truncated = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|busy| busy == 0)
        .unwrap_or(false);
    Ok(report)
}

/// The data directory's `LOCK`, as the server takes it (`SqliteStore::open`).
fn lock(data_dir: &Path) -> Result<std::fs::File, RekeyError> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RekeyError::Io(path, e))?;
    file.try_lock()
        .map_err(|_| RekeyError::Locked(data_dir.to_owned()))?;
    Ok(file)
}

/// Reads a batch of a table's rows not under the newest key, resealed: the rewrites and the
/// last row id read (`None` when none is left).
type ReadBatch = fn(
    &Connection,
    &Keyring,
    i64,
    usize,
    &mut Vec<String>,
) -> rusqlite::Result<(Vec<Rewrite>, Option<i64>)>;

/// Rewrites one table batch by batch: `read` picks and reseals, `update` writes each row back.
#[allow(
    clippy::too_many_arguments,
    reason = "one call per table, every argument named at the call"
)]
fn rekey_table(
    conn: &mut Connection,
    keys: &Keyring,
    read: ReadBatch,
    update: &str,
    batch: usize,
    counts: &mut BTreeMap<String, u64>,
    unreadable: &mut Vec<String>,
    pacer: &mut Pacer,
) -> rusqlite::Result<()> {
    let mut after = 0;
    loop {
        let (rewrites, last) = read(conn, keys, after, batch, unreadable)?;
        let Some(last) = last else { return Ok(()) };
        after = last;
        write(conn, update, rewrites, counts, pacer)?;
    }
}

/// Up to `limit` messages after `rowid` not under the newest key, sealed again. Returns them
/// and the last rowid looked at (`None`: nothing left).
fn read_messages(
    conn: &Connection,
    keys: &Keyring,
    after: i64,
    limit: usize,
    unreadable: &mut Vec<String>,
) -> rusqlite::Result<(Vec<Rewrite>, Option<i64>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT rowid, room, seq, user, id, data, key_id FROM messages
         WHERE rowid > ?1 AND (key_id IS NULL OR key_id <> ?2) ORDER BY rowid LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![after, keys.newest_id(), limit as i64])?;
    let mut out = Vec::new();
    let mut last = None;
    while let Some(r) = rows.next()? {
        let rowid: i64 = r.get(0)?;
        last = Some(rowid);
        let (room, seq, user, id) = (
            r.get_ref(1)?.as_str()?,
            r.get::<_, i64>(2)? as u64,
            r.get_ref(3)?.as_str()?,
            r.get_ref(4)?.as_str()?,
        );
        let row = Row::Message {
            room,
            seq,
            user,
            id,
        };
        let old = r.get_ref(6)?.as_str_or_null()?;
        out.extend(reseal(keys, &row, rowid, old, r.get_ref(5)?, unreadable));
    }
    Ok((out, last))
}

/// As [`read_messages`], for dead letters.
fn read_dead_letters(
    conn: &Connection,
    keys: &Keyring,
    after: i64,
    limit: usize,
    unreadable: &mut Vec<String>,
) -> rusqlite::Result<(Vec<Rewrite>, Option<i64>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, created_at, kind, target, payload, key_id FROM dead_letters
         WHERE id > ?1 AND (key_id IS NULL OR key_id <> ?2) ORDER BY id LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![after, keys.newest_id(), limit as i64])?;
    let mut out = Vec::new();
    let mut last = None;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        last = Some(id);
        let row = Row::DeadLetter {
            id: id as u64,
            created_at: r.get::<_, i64>(1)? as u64,
            kind: r.get_ref(2)?.as_str()?,
            target: r.get_ref(3)?.as_str()?,
        };
        let old = r.get_ref(5)?.as_str_or_null()?;
        out.extend(reseal(keys, &row, id, old, r.get_ref(4)?, unreadable));
    }
    Ok((out, last))
}

/// As [`read_messages`], for queued webhook events.
fn read_webhook_events(
    conn: &Connection,
    keys: &Keyring,
    after: i64,
    limit: usize,
    unreadable: &mut Vec<String>,
) -> rusqlite::Result<(Vec<Rewrite>, Option<i64>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, created_at, body, key_id FROM webhook_outbox
         WHERE id > ?1 AND (key_id IS NULL OR key_id <> ?2) ORDER BY id LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![after, keys.newest_id(), limit as i64])?;
    let mut out = Vec::new();
    let mut last = None;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        last = Some(id);
        let row = Row::Outbox {
            id: id as u64,
            created_at: r.get::<_, i64>(1)? as u64,
        };
        let old = r.get_ref(3)?.as_str_or_null()?;
        out.extend(reseal(keys, &row, id, old, r.get_ref(2)?, unreadable));
    }
    Ok((out, last))
}

/// The row's value sealed under the newest key, or `None` (logged and noted) when it cannot
/// be decrypted.
fn reseal(
    keys: &Keyring,
    row: &Row<'_>,
    rowid: i64,
    old: Option<&str>,
    data: rusqlite::types::ValueRef<'_>,
    unreadable: &mut Vec<String>,
) -> Option<Rewrite> {
    let sealed = cipher::stored_text(Some(keys), row, old, data)
        .and_then(|text| keys.seal(row, text.as_bytes()));
    match sealed {
        Ok((key_id, blob)) => Some(Rewrite {
            rowid,
            old: old.map(str::to_owned),
            key_id: key_id.to_owned(),
            blob,
        }),
        Err(e) => {
            tracing::error!(error = %e, "rekey leaves a row it cannot decrypt as it is");
            unreadable.push(e.to_string());
            None
        }
    }
}

/// Writes `rewrites` in one `BEGIN IMMEDIATE` transaction, counting rewritten rows by their old
/// key id, then pauses to let the server's writer in.
fn write(
    conn: &mut Connection,
    update: &str,
    rewrites: Vec<Rewrite>,
    counts: &mut BTreeMap<String, u64>,
    pacer: &mut Pacer,
) -> rusqlite::Result<()> {
    if rewrites.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut done: Vec<Option<String>> = Vec::with_capacity(rewrites.len());
    {
        let mut stmt = tx.prepare_cached(update)?;
        for r in rewrites {
            // Changed meanwhile (another rekey, or the row was purged): left alone.
            if stmt.execute(params![r.rowid, r.blob, r.key_id, r.old])? == 1 {
                done.push(r.old);
            }
        }
    }
    tx.commit()?;
    for old in done {
        *counts
            .entry(old.unwrap_or_else(|| PLAINTEXT.to_owned()))
            .or_default() += 1;
    }
    pacer.pause(started.elapsed());
    Ok(())
}

/// The pause between transactions: at least as long as the lock was held and at least the
/// configured pause, plus a random jitter so the pauses never line up with the server's
/// busy-handler retries (which back off up to 100 ms apart).
struct Pacer {
    pause: Duration,
    rng: SystemRandom,
}

impl Pacer {
    fn new(pause: Duration) -> Self {
        Pacer {
            pause,
            rng: SystemRandom::new(),
        }
    }

    fn pause(&mut self, held: Duration) {
        let mut byte = [0u8; 1];
        let _ = self.rng.fill(&mut byte);
        let base = self.pause.max(held);
        std::thread::sleep(base + base.mul_f64(f64::from(byte[0]) / 255.0));
    }
}

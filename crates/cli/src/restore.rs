//! `dynamowave restore --from BACKUP|DATA_DIR --to TIME --into NEW_DIR`: a new data directory
//! holding the state at an instant (the work is in `dynamowave_store_sqlite::snapshot`).

use std::path::PathBuf;

use clap::Args;
use dynamowave_core::types::rfc3339_ms;
use dynamowave_store_sqlite::snapshot;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A backup file (from `dynamowave backup`) or a data directory; a server may be running on
    /// it.
    #[arg(long, value_name = "FILE|DATA_DIR")]
    pub from: PathBuf,
    /// The instant to restore, RFC 3339 (2026-01-31T14:05:00Z, 2026-01-31T15:05:00.250+01:00):
    /// everything stamped at or before it is kept, to the millisecond.
    #[arg(long, value_name = "TIME", value_parser = snapshot::parse_time)]
    pub to: u64,
    /// New or empty directory to make the restored data directory in; serve it with
    /// `dynamowave serve --data-dir NEW_DIR`.
    #[arg(long, value_name = "NEW_DIR")]
    pub into: PathBuf,
    /// Set in a cluster node's environment: a restore is then refused (see docs/cluster.md).
    #[arg(long, env = "DYNAMOWAVE_CLUSTER", hide = true)]
    pub cluster: Option<String>,
}

pub fn run(args: RestoreArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.cluster {
        anyhow::bail!("{}", crate::backup::not_in_cluster("restore", url));
    }
    let info = snapshot::restore(&args.from, args.to, &args.into)?;
    println!(
        "restored {} to {} (source taken at {}): {} messages kept, {} dropped, {} tombstones cleared, {} still deleted; {} rooms ({} dropped); dead letters: {} dropped, {} un-replayed; {} edits, deletions and reactions undone; {} read positions reset",
        info.into.display(),
        rfc3339_ms(info.to),
        rfc3339_ms(info.source_taken_at),
        info.kept,
        info.dropped,
        info.tombstones_cleared,
        info.still_deleted,
        info.rooms,
        info.rooms_dropped,
        info.dead_letters_dropped,
        info.dead_letters_unreplayed,
        info.events_dropped,
        info.read_positions_dropped
    );
    Ok(())
}

//! `dynamowave backup FILE`: a consistent snapshot of a store, taken while its server keeps
//! serving (the work is in `dynamowave_store_sqlite::snapshot`).

use std::path::PathBuf;

use clap::Args;
use dynamowave_core::types::rfc3339_ms;
use dynamowave_server::ServerConfig;
use dynamowave_store_sqlite::snapshot;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// File to write the backup to; it must not exist yet.
    pub file: PathBuf,
    /// Data directory of the store to back up; a server may be running on it
    /// [default: ./dynamowave-data].
    #[arg(long, env = "DYNAMOWAVE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Set in a cluster node's environment: a backup is then refused (see docs/cluster.md).
    #[arg(long, env = "DYNAMOWAVE_CLUSTER", hide = true)]
    pub cluster: Option<String>,
}

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.cluster {
        anyhow::bail!("{}", not_in_cluster("backup", url));
    }
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| ServerConfig::default().data_dir);
    let info = snapshot::backup(&data_dir, &args.file)?;
    println!(
        "backup {}: taken at {}, {} rooms, {} messages ({} deleted), {} bytes",
        info.file.display(),
        rfc3339_ms(info.taken_at),
        info.rooms,
        info.messages,
        info.deleted,
        info.bytes
    );
    Ok(())
}

/// Why `command` (backup, restore, rekey: tools of the SQLite store) does nothing for a cluster
/// node, and what to use instead.
pub(crate) fn not_in_cluster(command: &str, url: &str) -> String {
    format!(
        "`dynamowave {command}` works on the embedded SQLite store, and this node is in a cluster on {url} \
         (--cluster, DYNAMOWAVE_CLUSTER or [cluster] url): a cluster's data lives in JetStream, whose \
         streams are backed up and restored with `nats stream backup` / `nats stream restore` and \
         encrypted by nats-server itself (docs/cluster.md, \"What does not apply in cluster mode\")"
    )
}

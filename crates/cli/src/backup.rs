//! `dynamowave backup FILE`: a consistent snapshot of a store, taken while its server keeps
//! serving (the work is in `dynamowave_server::store::snapshot`).

use std::path::PathBuf;

use clap::Args;
use dynamowave_core::types::rfc3339_ms;
use dynamowave_server::ServerConfig;
use dynamowave_server::store::snapshot;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// File to write the backup to; it must not exist yet.
    pub file: PathBuf,
    /// Data directory of the store to back up; a server may be running on it
    /// [default: ./dynamowave-data].
    #[arg(long, env = "DYNAMOWAVE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
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

//! `dynamowave rekey`: rewrites every stored message body and dead-letter payload that is not
//! under the newest encryption key (older keys, plaintext rows), while a server may keep
//! serving on the same store (the work is in `dynamowave_store_sqlite::rekey`).
//!
//! It reads the configuration as `serve` does (defaults < `--config` < environment < flags), so
//! it is run with the server's own settings: the key to move to last, the old ones before it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use dynamowave_store_sqlite::cipher::{KEY_HOWTO, Keyring};
use dynamowave_store_sqlite::rekey::{self, RekeyOptions, RekeyReport};

use crate::serve::ServeArgs;

#[derive(Args, Debug)]
pub struct RekeyArgs {
    /// TOML file with the server's settings (as for `serve`; its `[encryption]` and `data-dir`
    /// are used).
    #[arg(long, env = "DYNAMOWAVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of the store; a server may be running on it [default: ./dynamowave-data].
    #[arg(long, env = "DYNAMOWAVE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding a 32-byte key, base64; repeat, the key to rewrite rows under last.
    #[arg(long)]
    pub encryption_key_file: Vec<PathBuf>,
    /// Keys, base64, comma-separated (after any --encryption-key-file).
    #[arg(
        long = "encryption-key",
        env = "DYNAMOWAVE_ENCRYPTION_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub encryption_keys: Option<Vec<String>>,
    /// Rows rewritten per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Afterwards, rebuild the store file (VACUUM) so no fragment of a rewritten value (e.g. the
    /// plaintext of rows from before encryption) is left in unused page space. Needs the server
    /// stopped.
    #[arg(long)]
    pub vacuum: bool,
}

pub fn run(args: RekeyArgs) -> anyhow::Result<()> {
    // The server's own merging of file, environment and flags, with this command's flags on top.
    let mut serve = ServeArgs::from_env();
    if args.config.is_some() {
        serve.config = args.config;
    }
    if args.data_dir.is_some() {
        serve.data_dir = args.data_dir;
    }
    if !args.encryption_key_file.is_empty() {
        serve.security.encryption_key_file = args.encryption_key_file;
    }
    if args.encryption_keys.is_some() {
        serve.security.encryption_keys = args.encryption_keys;
    }
    let config = serve.into_config()?;
    if let Some(url) = &config.cluster.url {
        bail!("{}", crate::backup::not_in_cluster("rekey", url));
    }
    let Some(keys) = Keyring::from_sources(&config.encryption.key_files, &config.encryption.keys)?
    else {
        bail!(
            "no encryption key is configured: give the keys as for `dynamowave serve` (--encryption-key-file FILE, \
             repeated, or DYNAMOWAVE_ENCRYPTION_KEY), the key to rewrite every row under last ({KEY_HOWTO})"
        );
    };
    let options = RekeyOptions {
        batch: args.batch as usize,
        vacuum: args.vacuum,
        ..RekeyOptions::default()
    };
    let report = rekey::rekey(&config.data_dir, &keys, &options)?;
    print!(
        "{}",
        summary(&config.data_dir.display().to_string(), &report)
    );
    if !report.unreadable.is_empty() {
        bail!(
            "{} rows could not be decrypted and were left as they are (listed above); configure their keys \
             and run `dynamowave rekey` again before removing any key",
            report.unreadable.len()
        );
    }
    if !report.complete() {
        bail!(
            "rows were written under another key while rekey ran: configure the server with key id {} last \
             (as here), then run `dynamowave rekey` again",
            report.newest
        );
    }
    Ok(())
}

/// What `rekey` prints: rows rewritten per old key id, and what is left.
fn summary(data_dir: &str, r: &RekeyReport) -> String {
    fn counts(what: &str, by_key: &BTreeMap<String, u64>) -> String {
        if by_key.is_empty() {
            return format!("  {what}: none to rewrite\n");
        }
        let total: u64 = by_key.values().sum();
        let parts: Vec<String> = by_key
            .iter()
            .map(|(key, n)| {
                if key == rekey::PLAINTEXT {
                    format!("{n} from plaintext")
                } else {
                    format!("{n} from key id {key}")
                }
            })
            .collect();
        format!("  {what}: {total} rewritten ({})\n", parts.join(", "))
    }
    let mut out = format!("rekey {data_dir}: new key id {}\n", r.newest);
    out += &counts("messages", &r.messages);
    out += &counts("dead letters", &r.dead_letters);
    // Only stores with webhooks on have any; the line would be noise everywhere else.
    if !r.webhook_events.is_empty() {
        out += &counts("webhook events", &r.webhook_events);
    }
    const SHOWN: usize = 20;
    for e in r.unreadable.iter().take(SHOWN) {
        out += &format!("  left as it is: {e}\n");
    }
    if r.unreadable.len() > SHOWN {
        out += &format!("  ... and {} more\n", r.unreadable.len() - SHOWN);
    }
    for u in &r.remaining {
        out += &format!(
            "  still under key id {}: {} messages, {} dead letters\n",
            u.key_id, u.messages, u.dead_letters
        );
    }
    if r.remaining_plaintext > 0 {
        out += &format!("  still plaintext: {} messages\n", r.remaining_plaintext);
    }
    if r.complete() {
        out += &format!(
            "  every row is under key id {}; the other keys may now be removed from the configuration\n",
            r.newest
        );
    }
    if r.vacuumed {
        out += "  the store file was rebuilt (VACUUM): no old copy of a rewritten value is left in it\n";
    }
    if !r.wal_truncated {
        out += "  note: the WAL could not be truncated (the server was busy); it still holds old page images until the server overwrites them\n";
    }
    out
}

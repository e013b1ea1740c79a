//! `dynamowave token`: mints an HS256 token for development, signed with the server's
//! `jwt-secret`, found as `serve` finds it (`--jwt-secret`, `DYNAMOWAVE_JWT_SECRET`, or
//! `auth.jwt-secret` in the `--config` file). Prints the token and nothing else.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use dynamowave_core::{RoomId, UserName};
use dynamowave_server::ServerConfig;

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The user: the token's `sub`, the `user` of every message the connection sends.
    #[arg(long)]
    pub user: String,
    /// The only rooms the token may join, post to and read, comma-separated [default: any].
    #[arg(long, value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
    /// How long the token is valid: e.g. 90s, 30m, 1h, 7d (a bare number is seconds).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The server's HS256 secret (at least 32 characters).
    #[arg(long, env = "DYNAMOWAVE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The server's TOML file; its `[auth] jwt-secret` is used when no secret is given.
    #[arg(long, env = "DYNAMOWAVE_CONFIG")]
    pub config: Option<PathBuf>,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Some(ServerConfig::from_toml_file(path)?),
        None => None,
    };
    let secret = match (args.jwt_secret, &file) {
        (Some(secret), _) => secret,
        (None, Some(config)) => match &config.auth.jwt_secret {
            Some(secret) => secret.clone(),
            None if config.auth.jwt_public_key.is_some() || config.auth.jwks.is_some() => bail!(
                "this server verifies tokens with a public key (jwt-public-key or jwks): mint \
                 them with the matching private key; dynamowave token signs HS256 tokens with \
                 a jwt-secret only"
            ),
            None => bail!(no_secret()),
        },
        (None, None) => bail!(no_secret()),
    };
    if secret.len() < 32 {
        bail!("jwt-secret must be at least 32 characters (HS256 needs a long secret)");
    }
    let user = UserName::parse(&args.user).map_err(|e| anyhow::anyhow!("--user: {}", e.message))?;
    let rooms = args
        .rooms
        .map(|names| {
            names
                .iter()
                .map(|n| RoomId::parse(n.trim()))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|e| anyhow::anyhow!("--rooms: {}", e.message))?;
    let token = dynamowave_server::identity::mint_hs256(
        secret.as_bytes(),
        &user,
        rooms.as_deref(),
        args.ttl,
        &file.map(|c| c.auth).unwrap_or_default(),
    )
    .context("cannot sign the token")?;
    println!("{token}");
    Ok(())
}

fn no_secret() -> &'static str {
    "no HS256 secret: pass --jwt-secret, set DYNAMOWAVE_JWT_SECRET, or give --config with \
     [auth] jwt-secret"
}

/// `90s`, `30m`, `1h`, `7d`, or seconds.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h or 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => {
            return Err(format!(
                "{text:?}: use s, m, h or d, like 90s, 30m, 1h or 7d"
            ));
        }
    };
    if seconds == 0 {
        return Err("the ttl must be at least 1 second".to_owned());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}

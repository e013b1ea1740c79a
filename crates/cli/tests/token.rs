//! `dynamowave token` and `serve --auth`: minted tokens are accepted by a real `serve` that
//! reads the same flags, environment and config file; `serve` refuses `--auth jwt` without a
//! usable key; and it warns when it serves without authentication off loopback.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::ServerProcess;
use dynamowave_client::Client;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::identity::Verifier;

const SECRET: &str = "cli-test-secret-0123456789-0123456789-xyz";

fn dynamowave() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dynamowave"));
    // Nothing from the developer's shell decides these tests.
    for var in [
        "DYNAMOWAVE_JWT_SECRET",
        "DYNAMOWAVE_CONFIG",
        "DYNAMOWAVE_AUTH",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// `dynamowave token ARGS` with `env`: the token it printed, or the failure's stderr.
fn token(args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let Output {
        status,
        stdout,
        stderr,
    } = dynamowave()
        .arg("token")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    if !status.success() {
        return Err(String::from_utf8_lossy(&stderr).into_owned());
    }
    let stdout = String::from_utf8(stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the token only: {stdout:?}");
    Ok(lines[0].to_owned())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn minted_tokens_verify_and_the_server_takes_them() {
    let env = [("DYNAMOWAVE_JWT_SECRET", SECRET)];
    let minted = token(&["--user", "alice", "--rooms", "a,b", "--ttl", "2h"], &env).unwrap();
    let claims = Verifier::hs256(SECRET.as_bytes(), 0)
        .verify(&minted, now())
        .unwrap();
    assert_eq!(claims.user.as_str(), "alice");
    let rooms: Vec<&str> = claims.rooms.iter().flatten().map(|r| r.as_str()).collect();
    assert_eq!(rooms, ["a", "b"]);
    assert!(claims.expires_at.abs_diff(now() + 7200) < 60);
    // The flag wins over the environment, as for serve.
    let other = "another-secret-0123456789-0123456789-abc";
    let flagged = token(&["--user", "x", "--jwt-secret", other], &env).unwrap();
    assert!(
        Verifier::hs256(other.as_bytes(), 0)
            .verify(&flagged, now())
            .is_ok()
    );
    assert!(
        Verifier::hs256(SECRET.as_bytes(), 0)
            .verify(&flagged, now())
            .is_err()
    );

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &["--auth", "jwt"], &env);
    let url = format!("ws://{}/ws", server.addr);
    let mut c = Client::connect_with_token(&url, &minted).await.unwrap();
    assert!(
        matches!(&c.connected, ServerFrame::Connected { user, .. } if user.as_str() == "alice")
    );
    c.join("a", None).await.unwrap();
    assert!(matches!(
        c.next().await.unwrap(),
        ServerFrame::Joined { .. }
    ));
    c.join("c", None).await.unwrap();
    assert!(matches!(
        c.next().await.unwrap(),
        ServerFrame::Error {
            code: dynamowave_core::ErrorCode::Forbidden,
            ..
        }
    ));
    // Without a token: 401 before the upgrade.
    let refused = Client::connect(&format!("{url}?name=alice"))
        .await
        .err()
        .unwrap();
    assert!(refused.to_string().contains("401"), "{refused}");
}

#[tokio::test]
async fn token_and_serve_read_the_same_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dynamowave.toml");
    std::fs::write(
        &file,
        format!("[auth]\nmode = \"jwt\"\njwt-secret = \"{SECRET}\"\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let minted = token(&["--user", "bob", "--config", file], &[]).unwrap();
    // DYNAMOWAVE_CONFIG works as --config does.
    let from_env = token(&["--user", "bob"], &[("DYNAMOWAVE_CONFIG", file)]).unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &["--config", file], &[]);
    for t in [minted, from_env] {
        let c = Client::connect_with_token(&format!("ws://{}/ws", server.addr), &t)
            .await
            .unwrap();
        assert!(
            matches!(&c.connected, ServerFrame::Connected { user, .. } if user.as_str() == "bob")
        );
    }
}

#[test]
fn token_says_what_is_missing_or_wrong() {
    let no_secret = token(&["--user", "alice"], &[]).unwrap_err();
    assert!(
        no_secret.contains("no HS256 secret: pass --jwt-secret"),
        "{no_secret}"
    );
    let short = token(&["--user", "alice", "--jwt-secret", "short"], &[]).unwrap_err();
    assert!(short.contains("at least 32 characters"), "{short}");
    let env = [("DYNAMOWAVE_JWT_SECRET", SECRET)];
    let room = token(&["--user", "alice", "--rooms", "a,no spaces"], &env).unwrap_err();
    assert!(room.contains("--rooms"), "{room}");
    let ttl = token(&["--user", "alice", "--ttl", "1w"], &env).unwrap_err();
    assert!(ttl.contains("use s, m, h or d"), "{ttl}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pk.toml");
    std::fs::write(
        &file,
        "[auth]\nmode = \"jwt\"\njwt-public-key = \"k.pem\"\n",
    )
    .unwrap();
    let public = token(&["--user", "a", "--config", file.to_str().unwrap()], &[]).unwrap_err();
    assert!(
        public.contains("verifies tokens with a public key"),
        "{public}"
    );
}

/// `dynamowave serve ARGS` that must fail: its stderr.
fn serve_fails(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dynamowave()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_refuses_jwt_without_a_usable_key() {
    let err = serve_fails(&["--auth", "jwt"]);
    assert!(
        err.contains("auth = jwt needs exactly one of jwt-secret, jwt-public-key or jwks"),
        "{err}"
    );
    let err = serve_fails(&["--auth", "jwt", "--jwt-public-key", "/nonexistent/key.pem"]);
    assert!(
        err.contains("cannot read jwt-public-key /nonexistent/key.pem"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let err = serve_fails(&["--auth", "jwt", "--jwt-public-key", junk.to_str().unwrap()]);
    assert!(err.contains("is not a PEM public key"), "{err}");
    let err = serve_fails(&["--auth", "jwt", "--jwks", junk.to_str().unwrap()]);
    assert!(err.contains("is not a JWK Set"), "{err}");
    let err = serve_fails(&["--auth", "sometimes"]);
    assert!(err.contains("auth is `none` or `jwt`"), "{err}");
}

/// Starts `serve --listen LISTEN`, waits for its ready line, stops it, returns its stderr.
fn serve_stderr(listen: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = dynamowave()
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("DynamoWave chat on"), "{line:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn serve_warns_when_it_listens_off_loopback_without_auth() {
    let warning = "auth is none on a non-loopback address";
    let err = serve_stderr("0.0.0.0:0");
    assert!(err.contains(warning), "{err}");
    let err = serve_stderr("127.0.0.1:0");
    assert!(!err.contains(warning), "{err}");
}

//! The server's log (`--log-format json`): one JSON object per stderr line, a "connection
//! opened" and a "connection closed" line per connection with its id, and never a message body
//! or a token, even at debug and trace level.

mod common;

use std::process::Command;

use common::{Log, start_logging};
use dynamowave_client::Client;
use dynamowave_core::protocol::ServerFrame;
use serde_json::Value;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// Every line parsed as a JSON object (the test fails on the first that is not).
fn parsed(log: &Log) -> Vec<Value> {
    log.lines()
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line:?}"));
            assert!(v.is_object(), "not an object: {line}");
            v
        })
        .collect()
}

/// The line with this message for this connection id.
fn event<'a>(lines: &'a [Value], message: &str, connection: &str) -> Option<&'a Value> {
    lines
        .iter()
        .find(|l| l["message"] == message && l["connection"] == connection)
}

fn assert_nowhere(log: &Log, what: &str, secret: &str) {
    for line in log.lines() {
        assert!(!line.contains(secret), "the {what} is in the log: {line}");
    }
}

/// Waits for the "connection closed" line of `id`, then checks the pair.
fn check_lifecycle(log: &Log, id: &str, user: &str) {
    log.wait_for("connection closed", |l| {
        l.contains("connection closed") && l.contains(id)
    });
    let lines = parsed(log);
    let opened = event(&lines, "connection opened", id).expect("a connection opened line");
    assert_eq!(opened["level"], "INFO");
    assert_eq!(opened["user"], user);
    assert_eq!(opened["mode"], "v1");
    assert_eq!(opened["source_ip"], "127.0.0.1");
    let closed = event(&lines, "connection closed", id).expect("a connection closed line");
    assert_eq!(closed["level"], "INFO");
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    assert!(closed["frames_in"].as_u64().unwrap() >= 2, "{closed}");
    assert!(closed["frames_out"].as_u64().unwrap() >= 2, "{closed}");
    assert_eq!(closed["closed_by"], "client", "{closed}");
    // The client's close frame carries no status: 1005.
    assert!(closed["close_code"].is_u64(), "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_the_connection_lifecycle_and_no_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = start_logging(
        &dir.path().join("data"),
        &["--log-format", "json"],
        &[],
        // Everything: tungstenite, for one, logs whole frames at trace unless named.
        "trace",
    );
    // A user name that looks like a token, and a body no log line may carry.
    let user = format!("eyJhbGciOiJIUzI1NiJ9{}", std::process::id());
    let body = format!(
        "secret-body-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    );
    let mut c = Client::connect(&server.ws_url(&user)).await.unwrap();
    let id = c.connection_id().to_owned();
    c.join("r", None).await.unwrap();
    c.send_and_ack("r", &body, "m1").await.unwrap();
    // Refused frames carrying the body: not echoed into the log either.
    c.send_raw(format!("{{\"action\":\"nope\",\"data\":\"{body}\"}}"))
        .await
        .unwrap();
    c.send_raw(format!("not json {body}")).await.unwrap();
    // A round trip after them: they have been handled, nothing is in flight at the close.
    c.send_message("r", "done", "m2").await.unwrap();
    loop {
        let frame = c
            .next_within(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        if matches!(frame, ServerFrame::Ack { .. }) {
            break;
        }
    }
    c.close().await.unwrap();

    check_lifecycle(&log, &id, &user);
    assert_nowhere(&log, "message body", &body);
    server.terminate(std::time::Duration::from_secs(10));
    // The shutdown lines are JSON too.
    parsed(&log);
    assert_nowhere(&log, "message body", &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_never_carry_the_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("DYNAMOWAVE_JWT_SECRET", SECRET)];
    let minted = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(["token", "--user", "alice"])
        .env("DYNAMOWAVE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(minted.status.success());
    let jwt = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    // A token signed with another key: refused, and not logged either.
    let other = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(["token", "--user", "mallory"])
        .env(
            "DYNAMOWAVE_JWT_SECRET",
            "another-secret-that-is-long-enough-for-hs256",
        )
        .output()
        .unwrap();
    let forged = String::from_utf8(other.stdout).unwrap().trim().to_owned();

    let (server, log) = start_logging(
        &dir.path().join("data"),
        &["--log-format", "json", "--auth", "jwt"],
        &env,
        "debug",
    );
    let body = format!("jwt-secret-body-{}", std::process::id());
    // The token in the query string (the form most likely to end up in an access log).
    let url = format!("ws://{}/ws?token={jwt}", server.addr);
    let mut c = Client::connect(&url).await.unwrap();
    let id = c.connection_id().to_owned();
    c.join("r", None).await.unwrap();
    c.send_and_ack("r", &body, "m1").await.unwrap();
    c.close().await.unwrap();
    let refused = Client::connect(&format!("ws://{}/ws?token={forged}", server.addr)).await;
    assert!(refused.is_err(), "a forged token is refused");

    check_lifecycle(&log, &id, "alice");
    server.terminate(std::time::Duration::from_secs(10));
    parsed(&log);
    assert_nowhere(&log, "JWT", &jwt);
    // Nor its signature alone.
    assert_nowhere(&log, "JWT signature", jwt.rsplit('.').next().unwrap());
    assert_nowhere(&log, "forged JWT", &forged);
    assert_nowhere(&log, "message body", &body);
}

#[test]
fn the_log_format_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = start_logging(
        &dir.path().join("data"),
        &[],
        &[("DYNAMOWAVE_LOG_FORMAT", "json")],
        "info",
    );
    server.terminate(std::time::Duration::from_secs(10));
    log.wait_for("stopped", |l| l.contains("\"stopped\""));
    let lines = parsed(&log);
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
}

//! `dynamowave dlq list|show|replay|purge` against the real binary, and the `dynamowave_dlq_depth`
//! metric on `/metrics` (one server per process here, so the process-wide metric is its own).

mod common;

use std::process::{Command, Output};

use common::ServerProcess;
use dynamowave_client::Client;
use serde_json::Value;

fn dlq(server: &ServerProcess, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .arg("dlq")
        .args(["--url", &format!("http://{}", server.addr)])
        .args(args)
        .output()
        .expect("dynamowave dlq runs")
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

async fn depth_metric(http: &reqwest::Client, server: &ServerProcess) -> f64 {
    let page = common::metrics_page(http, server).await;
    page.lines()
        .find_map(|l| l.strip_prefix("dynamowave_dlq_depth ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dynamowave_dlq_depth in\n{page}"))
}

#[tokio::test]
async fn list_show_replay_purge() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let http = reqwest::Client::new();

    let out = stdout_of(&dlq(&server, &["list"]));
    assert!(
        out.contains("depth (pending): 0") && out.contains("no entries"),
        "{out}"
    );
    assert_eq!(depth_metric(&http, &server).await, 0.0);

    let first = common::dead_letter(&http, &server, "aaaaaaaaaaaaaaaa", "first payload").await;
    let second = common::dead_letter(&http, &server, "bbbbbbbbbbbbbbbb", "second payload").await;
    assert_eq!(depth_metric(&http, &server).await, 2.0);

    let out = stdout_of(&dlq(&server, &["list"]));
    assert!(out.contains("depth (pending): 2"), "{out}");
    assert!(
        out.contains("aaaaaaaaaaaaaaaa") && out.contains("bbbbbbbbbbbbbbbb"),
        "{out}"
    );
    let page: Value = serde_json::from_str(&stdout_of(&dlq(&server, &["--json", "list"]))).unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);

    let out = stdout_of(&dlq(&server, &["show", &first.to_string()]));
    assert!(
        out.contains("first payload") && out.contains("pending"),
        "{out}"
    );

    // Replay the first to a live connection: delivered once, however often it is replayed.
    let mut client = Client::connect(&server.ws_url("ann")).await.unwrap();
    let to = client.connection_id().to_owned();
    let replay = ["replay", &first.to_string(), "--to-connection", to.as_str()];
    let out = stdout_of(&dlq(&server, &replay));
    assert!(out.contains(&format!("delivered to {to}")), "{out}");
    assert_eq!(client.next_raw().await.unwrap(), "first payload");
    let out = stdout_of(&dlq(&server, &replay));
    assert!(out.contains("already replayed"), "{out}");
    assert_eq!(depth_metric(&http, &server).await, 1.0);

    // The second's connection is gone: replay fails, says why, and the entry stays pending.
    let out = dlq(&server, &["replay", &second.to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("410") && err.contains("not connected"),
        "{err}"
    );
    let out = stdout_of(&dlq(&server, &["replay", "--all"]));
    assert!(
        out.contains("replayed 0, failed 1, still pending 1"),
        "{out}"
    );
    let entry: Value = serde_json::from_str(&stdout_of(&dlq(
        &server,
        &["--json", "show", &second.to_string()],
    )))
    .unwrap();
    assert_eq!(entry["attempts"], 3);

    // Purge: the replayed one, then everything.
    let out = stdout_of(&dlq(&server, &["purge", "--replayed"]));
    assert!(out.contains("purged 1"), "{out}");
    let out = dlq(&server, &["show", &first.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = stdout_of(&dlq(&server, &["purge", "--all"]));
    assert!(out.contains("purged 1"), "{out}");
    assert_eq!(depth_metric(&http, &server).await, 0.0);

    // Usage errors come from the argument parser, before any request.
    let out = dlq(&server, &["purge"]);
    assert!(!out.status.success());
    let out = dlq(&server, &["replay", "1", "--all"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn a_token_protected_server_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--admin-token", "a-long-enough-s3cret"], &[]);
    let out = dlq(&server, &["list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token"), "{err}");
    let out = dlq(&server, &["--admin-token", "a-long-enough-s3cret", "list"]);
    assert!(stdout_of(&out).contains("no entries"));
}

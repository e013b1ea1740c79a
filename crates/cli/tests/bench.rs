//! `dynamowave bench` at a tiny size against the real server: correctness only (every message
//! delivered, no errors, one valid JSON object). Speed is measured in docs/benchmarks.md, never
//! asserted in tests.

mod common;

use std::process::Command;

use common::ServerProcess;
use serde_json::Value;

fn bench(server: &ServerProcess, args: &str) -> Value {
    let url = format!("ws://{}/ws", server.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .arg("bench")
        .args(args.split_whitespace())
        .args(["--url", &url, "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "exactly one JSON object: {stdout}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connect_failures"], 0, "{report}");
    report
}

fn assert_all_delivered(report: &Value) {
    assert!(report["expected"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["delivered"], report["expected"], "{report}");
    assert_eq!(report["delivery_ratio"], 1.0, "{report}");
    assert!(report["latency_us"]["p99"].as_u64().is_some(), "{report}");
}

#[test]
fn every_scenario_runs_and_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);

    let r = bench(
        &server,
        "fanout --members 20 --senders 4 --rate 10 --duration 1",
    );
    assert_all_delivered(&r);
    assert_eq!(r["expected"], r["sent"].as_u64().unwrap() * 20);
    assert_all_delivered(&bench(
        &server,
        "fanout --members 10 --senders 2 --rate 10 --duration 1 --protocol v1",
    ));
    assert_all_delivered(&bench(
        &server,
        "rooms --rooms 3 --min-members 2 --max-members 5 --rate 4 --duration 1",
    ));
    let r = bench(&server, "ack --senders 5 --rate 10 --duration 1");
    assert_all_delivered(&r);
    assert_eq!(r["delivered"], 50);

    let r = bench(&server, "connect --connections 100 --concurrency 10");
    assert_eq!(r["connections"], 100);
    assert!(r["connects_per_sec"].as_f64().unwrap() > 0.0);

    let r = bench(&server, "idle --connections 100 --hold 0.2");
    assert_eq!(r["connections"], 100);
    assert_eq!(
        r["server_pid"].as_u64(),
        Some(u64::from(server.pid())),
        "found from the port"
    );
    assert!(r["server_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn remote_targets_need_allow_remote() {
    let out = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(["bench", "fanout", "--url", "ws://192.0.2.1:9/ws"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

/// The flood scenario of issue 6 item 11 at a tiny size, against a server with the default
/// rate limits: the flooder is refused and closed with 1008 while the others get everything.
/// (The latency comparison with and without the flood is in docs/security.md.)
#[test]
fn a_flooder_is_rate_limited_and_closed_while_the_room_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--messages-per-second", "10"], &[]);
    let r = bench(
        &server,
        "fanout --members 10 --senders 10 --rate 2 --duration 2 --protocol v1 --flood-rate 2000",
    );
    assert_all_delivered(&r);
    let flood = &r["flood"];
    assert!(flood["rateLimited"].as_u64().unwrap() > 0, "{flood}");
    assert_eq!(flood["closeCode"], 1008, "{flood}");
    assert!(
        flood["closeReason"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{flood}"
    );
}

//! Issue 7 item 1: `/metrics` agrees with what the clients sent and received, with the real
//! `dynamowave` binary (one server per process, so the process-wide recorder is its own).
//!
//! [`MEMBERS`] v1 clients join a room, then each sends [`PER_SENDER`] messages (pipelined) and
//! reads until it has its acks and every member's messages; one of them also sends bad frames
//! (binary frames, text that is not JSON, a message to a room it has not joined). One compat
//! client connects and stays idle. The scrape must then show exactly those numbers: connects and
//! open connections by mode, frames received, messages received and acked, rejections by
//! reason (as counted from the error frames the clients got), deliveries = messages × members
//! (as counted by the clients), and histograms with samples. Closing two clients must show as
//! two disconnects.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::ServerProcess;
use dynamowave_client::{Client, CompatClient};
use dynamowave_core::protocol::ServerFrame;

const MEMBERS: usize = 5;
const PER_SENDER: usize = 20;
const ROOM: &str = "metrics-room";
const WAIT: Duration = Duration::from_secs(30);

/// The samples of a Prometheus text page, keyed by the series as written
/// (`name{label="value"}`, or just `name`).
fn parse(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(http: &reqwest::Client, server: &ServerProcess) -> (String, HashMap<String, f64>) {
    let page = common::metrics_page(http, server).await;
    let samples = parse(&page);
    (page, samples)
}

/// Scrapes until every expected series has its value (the server counts a delivery just after
/// the flush the client saw), then asserts them all.
async fn expect(
    http: &reqwest::Client,
    server: &ServerProcess,
    expected: &[(String, f64)],
) -> HashMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (page, samples) = scrape(http, server).await;
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(series, value)| samples.get(series) != Some(value))
            .map(|(series, value)| format!("{series}: want {value}, got {:?}", samples.get(series)))
            .collect();
        if wrong.is_empty() {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "metrics disagree with the clients:\n{}\n\n{page}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    acks: usize,
    messages: usize,
    errors: HashMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_what_the_clients_sent_and_received() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let http = reqwest::Client::new();

    let compat = CompatClient::connect(&server.ws_url("idle-compat"))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..MEMBERS {
        let mut c = Client::connect(&server.ws_url(&format!("member{i}")))
            .await
            .unwrap();
        c.join(ROOM, None).await.unwrap();
        loop {
            match c.next_within(WAIT).await.unwrap() {
                ServerFrame::Joined { .. } => break,
                ServerFrame::Presence { .. } => {}
                other => panic!("unexpected before joined: {other:?}"),
            }
        }
        clients.push(c);
    }

    let total = MEMBERS * PER_SENDER;
    // Bad frames, from member 0: 3 bad_request, 1 not_joined.
    const BAD_FRAMES: usize = 4;
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            if i == 0 {
                c.send_binary(vec![1, 2, 3]).await.unwrap();
                c.send_binary(vec![4]).await.unwrap();
                c.send_raw("{not json").await.unwrap();
                c.send_message("a-room-not-joined", "x", "stray")
                    .await
                    .unwrap();
            }
            for n in 0..PER_SENDER {
                c.send_message(ROOM, &format!("hello {n} from {i}"), &format!("m{i}-{n}"))
                    .await
                    .unwrap();
            }
            let mut seen = Seen::default();
            let expected_errors = if i == 0 { BAD_FRAMES } else { 0 };
            while seen.acks < PER_SENDER
                || seen.messages < total
                || seen.errors.values().sum::<usize>() < expected_errors
            {
                match c.next_within(WAIT).await.unwrap() {
                    ServerFrame::Ack { duplicate, .. } => {
                        assert!(!duplicate);
                        seen.acks += 1;
                    }
                    ServerFrame::Message(_) => seen.messages += 1,
                    ServerFrame::Error { code, .. } => {
                        *seen.errors.entry(code.as_str().to_owned()).or_default() += 1;
                    }
                    ServerFrame::Presence { .. } => {}
                    other => panic!("unexpected frame: {other:?}"),
                }
            }
            (c, seen)
        }));
    }
    let mut clients = Vec::new();
    let (mut acks, mut delivered) = (0, 0);
    let mut errors: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let (c, seen) = t.await.unwrap();
        acks += seen.acks;
        delivered += seen.messages;
        for (code, n) in seen.errors {
            *errors.entry(code).or_default() += n;
        }
        clients.push(c);
    }
    assert_eq!(acks, total);
    assert_eq!(delivered, total * MEMBERS);
    let mut want_errors: HashMap<String, usize> = HashMap::new();
    want_errors.insert("bad_request".into(), 3);
    want_errors.insert("not_joined".into(), 1);
    assert_eq!(errors, want_errors, "error frames the clients got");

    let s = |series: &str, v: usize| (series.to_owned(), v as f64);
    let mut expected = vec![
        s(r#"dynamowave_connects_total{mode="v1"}"#, MEMBERS),
        s(r#"dynamowave_connects_total{mode="compat"}"#, 1),
        s(r#"dynamowave_connections{mode="v1"}"#, MEMBERS),
        s(r#"dynamowave_connections{mode="compat"}"#, 1),
        s("dynamowave_connections_open", MEMBERS + 1),
        // A join, the messages and the bad frames of each v1 client; the compat one sent none.
        s(
            r#"dynamowave_frames_received_total{mode="v1"}"#,
            MEMBERS + total + BAD_FRAMES,
        ),
        s(r#"dynamowave_frames_received_total{mode="compat"}"#, 0),
        s("dynamowave_messages_received_total", total),
        s("dynamowave_messages_acked_total", acks),
        s("dynamowave_messages_delivered_total", delivered),
        s("dynamowave_slow_consumer_closes_total", 0),
        s("dynamowave_outbound_queue_depth", 0),
        s(
            &format!(
                r#"dynamowave_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1,
        ),
    ];
    for (code, n) in &errors {
        expected.push(s(
            &format!(r#"dynamowave_messages_rejected_total{{reason="{code}"}}"#),
            *n,
        ));
    }
    let samples = expect(&http, &server, &expected).await;
    // No other rejection reason was counted.
    let rejected: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("dynamowave_messages_rejected_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(rejected, BAD_FRAMES as f64);
    // The histograms render as Prometheus histograms and have samples.
    for h in [
        "dynamowave_delivery_latency_seconds",
        "dynamowave_store_commit_seconds",
        "dynamowave_store_batch_size",
    ] {
        let count = samples
            .get(&format!("{h}_count"))
            .unwrap_or_else(|| panic!("no {h}_count"));
        assert!(*count > 0.0, "{h}_count is {count}");
        let inf = samples
            .get(&format!(r#"{h}_bucket{{le="+Inf"}}"#))
            .unwrap_or_else(|| panic!("no {h}_bucket{{le=\"+Inf\"}}"));
        assert_eq!(inf, count);
    }
    assert!(samples.contains_key(r#"dynamowave_delivery_latency_seconds_bucket{le="0.0005"}"#));
    assert!(samples.contains_key(r#"dynamowave_store_batch_size_bucket{le="1024"}"#));
    // One sample per writer batch: never more batches than commands.
    assert!(
        samples["dynamowave_store_batch_size_count"] <= samples["dynamowave_store_batch_size_sum"]
    );
    // One latency sample per flush with deliveries: at most one per delivery.
    assert!(samples["dynamowave_delivery_latency_seconds_count"] <= delivered as f64);

    // Two clients leave: two disconnects, and the gauges follow.
    for c in clients.drain(..2) {
        c.close().await.unwrap();
    }
    compat.close().await.unwrap();
    expect(
        &http,
        &server,
        &[
            s(r#"dynamowave_disconnects_total{mode="v1"}"#, 2),
            s(r#"dynamowave_disconnects_total{mode="compat"}"#, 1),
            s(r#"dynamowave_connections{mode="v1"}"#, MEMBERS - 2),
            s(r#"dynamowave_connections{mode="compat"}"#, 0),
            s("dynamowave_connections_open", MEMBERS - 2),
        ],
    )
    .await;
}

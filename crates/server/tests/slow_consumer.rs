//! A client that stops reading fills its bounded queue and is closed with 1013; the others in
//! the room keep receiving everything.

mod common;

use common::{TestServer, WAIT, until};
use dynamowave_client::ClientError;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;

/// 300 messages of 100 KiB: 30 MB, far more than loopback socket buffers hold.
const MESSAGES: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_closed_with_1013_and_others_get_everything() {
    let config = ServerConfig {
        outbound_queue: 8,
        ..ServerConfig::unthrottled()
    };
    let server = TestServer::start_with(config).await;

    let mut stalled = server.v1("stalled").await;
    stalled.join("firehose", None).await.unwrap();
    until(&mut stalled, |f| matches!(f, ServerFrame::Joined { .. })).await;

    let mut healthy = server.v1("healthy").await;
    healthy.join("firehose", None).await.unwrap();
    until(&mut healthy, |f| matches!(f, ServerFrame::Joined { .. })).await;
    let reading = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < MESSAGES as usize {
            if let ServerFrame::Message(m) = healthy.next_within(WAIT).await.unwrap() {
                seqs.push(m.seq.0);
            }
        }
        seqs
    });

    // Publish through the management API while `stalled` reads nothing.
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "data": "x".repeat(100 * 1024) }).to_string();
    for _ in 0..MESSAGES {
        let r = http
            .post(server.http("/rooms/firehose/messages"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    let seqs = reading.await.unwrap();
    assert_eq!(
        seqs,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "the healthy reader got every message, in order"
    );

    // Now the stalled client reads: what the buffers held, then the close.
    let mut received = 0;
    let (code, reason) = loop {
        match stalled.next_within(WAIT).await {
            Ok(ServerFrame::Message(_)) => received += 1,
            Ok(_) => {}
            Err(ClientError::Closed { code, reason }) => break (code, reason),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, 1013);
    assert!(reason.contains("too slow"), "{reason}");
    assert!(received < MESSAGES, "it was cut off ({received} delivered)");
    server.stop().await;
}

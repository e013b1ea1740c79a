//! Resume: a client that reconnects and joins with `after` gets every message it missed, then
//! live ones, with no gap and no duplicate, while another client keeps sending.

mod common;

use std::time::Duration;

use common::{TestServer, WAIT};
use dynamowave_core::protocol::ServerFrame;

const TOTAL: u64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_after_has_no_gap_and_no_duplicate() {
    let server = TestServer::start().await;
    let mut writer = server.v1("writer").await;
    writer.join("live", None).await.unwrap();

    let mut reader = server.v1("reader").await;
    reader.join("live", Some(0)).await.unwrap();

    // The writer sends TOTAL messages, each after the previous ack, as fast as it can.
    let sending = tokio::spawn(async move {
        for i in 1..=TOTAL {
            writer
                .send_and_ack("live", &format!("m{i}"), &format!("w{i}"))
                .await
                .unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let mut seen: Vec<u64> = Vec::new();
    let mut joins = 0;
    'outer: loop {
        // Read a stretch, then drop the connection mid-stream.
        let stretch = 40 + 25 * joins;
        let mut read_this_time = 0;
        loop {
            match reader.next_within(WAIT).await.unwrap() {
                ServerFrame::Message(m) => {
                    seen.push(m.seq.0);
                    assert_eq!(m.data, format!("m{}", m.seq.0));
                    read_this_time += 1;
                    if m.seq.0 == TOTAL {
                        break 'outer;
                    }
                    if read_this_time == stretch && joins < 4 {
                        break;
                    }
                }
                ServerFrame::Joined { .. } | ServerFrame::Presence { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(reader);
        joins += 1;
        // Let the writer get ahead while we are away.
        tokio::time::sleep(Duration::from_millis(30)).await;
        reader = server.v1("reader").await;
        let last = *seen.last().unwrap();
        reader.join("live", Some(last)).await.unwrap();
    }
    sending.await.unwrap();

    assert!(joins >= 4, "the reader reconnected several times ({joins})");
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every message once, in order"
    );
    server.stop().await;
}

#[tokio::test]
async fn joined_reports_the_head_and_replay_stops_there() {
    let server = TestServer::start().await;
    let mut writer = server.v1("w").await;
    writer.join("r", None).await.unwrap();
    for i in 1..=7 {
        writer
            .send_and_ack("r", &format!("m{i}"), &i.to_string())
            .await
            .unwrap();
    }
    let mut late = server.v1("late").await;
    late.join("r", Some(4)).await.unwrap();
    assert!(
        matches!(late.next_within(WAIT).await.unwrap(), ServerFrame::Joined { seq, .. } if seq.0 == 7)
    );
    for expected in 5..=7 {
        match late.next_within(WAIT).await.unwrap() {
            ServerFrame::Message(m) => assert_eq!(m.seq.0, expected),
            other => panic!("{other:?}"),
        }
    }
    writer.send_and_ack("r", "m8", "8").await.unwrap();
    match late.next_within(WAIT).await.unwrap() {
        ServerFrame::Message(m) => assert_eq!(m.seq.0, 8, "then live"),
        other => panic!("{other:?}"),
    }
    // A join without `after` replays nothing.
    let mut fresh = server.v1("fresh").await;
    fresh.join("r", None).await.unwrap();
    assert!(
        matches!(fresh.next_within(WAIT).await.unwrap(), ServerFrame::Joined { seq, .. } if seq.0 == 8)
    );
    assert!(
        fresh.next_within(Duration::from_millis(200)).await.is_err(),
        "nothing old is sent"
    );
    server.stop().await;
}

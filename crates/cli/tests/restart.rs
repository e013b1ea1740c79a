//! Restarting on the same data directory, after a crash (SIGKILL) or a graceful stop (SIGTERM).

mod common;

use std::time::Duration;

use common::{ServerProcess, connection_rows};
use dynamowave_client::{Client, ClientError, CompatClient};
use dynamowave_core::protocol::ServerFrame;

const WAIT: Duration = Duration::from_secs(10);

async fn joined(url: &str, room: &str) -> Client {
    let mut c = Client::connect(url).await.unwrap();
    c.join(room, None).await.unwrap();
    loop {
        if let ServerFrame::Joined { .. } = c.next_within(WAIT).await.unwrap() {
            return c;
        }
    }
}

#[tokio::test]
async fn after_kill_9_history_survives_and_stale_connections_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let mut writer = joined(&server.ws_url("writer"), "r").await;
    let _idle_a = joined(&server.ws_url("idle-a"), "r").await;
    let _idle_b = joined(&server.ws_url("idle-b"), "r").await;
    for i in 1..=5 {
        writer
            .send_and_ack("r", &format!("m{i}"), &format!("id{i}"))
            .await
            .unwrap();
    }
    assert_eq!(
        connection_rows(dir.path()),
        3,
        "the connections table records live connections"
    );

    server.kill_9();
    assert_eq!(
        connection_rows(dir.path()),
        3,
        "a crash leaves stale rows behind"
    );

    let server = ServerProcess::start(dir.path(), &[], &[]);
    // The purge runs before the server accepts connections (and prints its address).
    assert_eq!(
        connection_rows(dir.path()),
        0,
        "stale rows are purged at start"
    );

    let mut c = joined(&server.ws_url("back"), "r").await;
    c.history("r", None, None, None).await.unwrap();
    match c.next_within(WAIT).await.unwrap() {
        ServerFrame::History { messages, more, .. } => {
            let got: Vec<_> = messages
                .iter()
                .map(|m| (m.seq.0, m.data.as_str()))
                .collect();
            assert_eq!(got, [(1, "m1"), (2, "m2"), (3, "m3"), (4, "m4"), (5, "m5")]);
            assert!(!more);
        }
        other => panic!("{other:?}"),
    }
    // A retry of an acked message is still recognized, and seqs continue.
    let (ack, _) = c.send_and_ack("r", "m6", "id6").await.unwrap();
    assert!(matches!(ack, ServerFrame::Ack { seq, duplicate: false, .. } if seq.0 == 6));
    assert_eq!(connection_rows(dir.path()), 1);
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let mut v1 = joined(&server.ws_url("ann"), "r").await;
    let mut compat = CompatClient::connect(&format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    v1.send_and_ack("r", "last words", "last").await.unwrap();

    let pid = server.pid();
    let stopping = tokio::task::spawn_blocking(move || server.terminate(WAIT));

    let v1_close = async {
        loop {
            match v1.next_within(WAIT).await {
                Ok(_) => continue,
                Err(ClientError::Closed { code, reason }) => return (code, reason),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let (code, reason) = v1_close.await;
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    match compat.next_within(WAIT).await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, 1001),
        other => panic!("{other:?}"),
    }
    let status = stopping.await.unwrap();
    assert!(status.success(), "pid {pid} exited with {status}");

    // Nothing acked was lost, and the clean stop left no connection rows behind.
    assert_eq!(connection_rows(dir.path()), 0);
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let mut c = joined(&server.ws_url("back"), "r").await;
    c.history("r", None, None, None).await.unwrap();
    match c.next_within(WAIT).await.unwrap() {
        ServerFrame::History { messages, .. } => assert_eq!(messages[0].data, "last words"),
        other => panic!("{other:?}"),
    }
}

/// `systemctl reload` sends SIGHUP: without TLS there is nothing to reload, and the server (and
/// its connections) must carry on rather than die of the signal's default action.
#[tokio::test]
async fn sighup_without_tls_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let mut c = joined(&server.ws_url("ann"), "r").await;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ack, _) = c.send_and_ack("r", "still here", "m1").await.unwrap();
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    let mut fresh = joined(&server.ws_url("bob"), "r").await;
    let (ack, _) = fresh
        .send_and_ack("r", "new connection", "m2")
        .await
        .unwrap();
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
}

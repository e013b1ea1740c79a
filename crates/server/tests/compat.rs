//! Compat mode: the AWS sample's protocol, unchanged, as `wscat` users speak it.

mod common;

use std::time::Duration;

use common::{TestServer, WAIT, until};
use dynamowave_core::protocol::ServerFrame;

#[tokio::test]
async fn sendmessage_reaches_every_compat_connection_with_either_key() {
    let server = TestServer::start().await;
    let mut alice = server.compat().await;
    let mut bob = server.compat().await;

    alice
        .send_raw(r#"{"action":"sendmessage","data":"hello from alice"}"#)
        .await
        .unwrap();
    assert_eq!(
        alice.next_within(WAIT).await.unwrap(),
        "hello from alice",
        "the sender gets it too"
    );
    assert_eq!(bob.next_within(WAIT).await.unwrap(), "hello from alice");

    // The AWS tutorial's key.
    bob.send_raw(r#"{"action":"sendmessage","message":"hi from bob"}"#)
        .await
        .unwrap();
    assert_eq!(alice.next_within(WAIT).await.unwrap(), "hi from bob");
    assert_eq!(bob.next_within(WAIT).await.unwrap(), "hi from bob");

    // Escapes and unicode come out as the string, not as JSON.
    alice.send_message("quote \" and 🙂").await.unwrap();
    assert_eq!(bob.next_within(WAIT).await.unwrap(), "quote \" and 🙂");
    server.stop().await;
}

#[tokio::test]
async fn default_route_replies_like_the_original_handler() {
    let server = TestServer::start().await;
    let mut c = server.compat().await;
    for frame in [
        "hello",
        r#"{"action":"whoami"}"#,
        r#"{"action":"join","room":"x"}"#,
        r#"{"data":"no action"}"#,
        r#"{"action":"history","room":"not a room"}"#,
    ] {
        c.send_raw(frame).await.unwrap();
        let reply = c.next_within(WAIT).await.unwrap();
        let info = reply
            .strip_prefix("Use the sendmessage route to send a message. Your info:")
            .unwrap_or_else(|| panic!("unexpected reply {reply}"));
        let info: serde_json::Value = serde_json::from_str(info).unwrap();
        assert_eq!(info["Identity"]["SourceIp"], "127.0.0.1");
        assert!(info["connectionID"].as_str().unwrap().len() >= 16);
        assert!(info["ConnectedAt"].as_str().unwrap().ends_with('Z'));
        assert!(info["LastActiveAt"].as_str().is_some());
    }
    server.stop().await;
}

#[tokio::test]
async fn compat_and_v1_share_the_default_room() {
    let server = TestServer::start().await;
    let mut compat = server.compat().await;
    let mut v1 = server.v1("vera").await;
    v1.join("general", None).await.unwrap();
    assert!(matches!(
        v1.next_within(WAIT).await.unwrap(),
        ServerFrame::Joined { .. }
    ));

    compat.send_message("from compat").await.unwrap();
    assert_eq!(compat.next_within(WAIT).await.unwrap(), "from compat");
    // (A presence frame for the compat client may come first: its $connect runs concurrently.)
    let (message, _) = until(&mut v1, |f| matches!(f, ServerFrame::Message(_))).await;
    match message {
        ServerFrame::Message(m) => {
            assert_eq!(
                (m.room.as_str(), m.data.as_str(), m.seq.0),
                ("general", "from compat", 1)
            );
            assert!(
                m.user.as_str().starts_with("guest-"),
                "no ?name= gives a guest name"
            );
        }
        other => panic!("expected a message, got {other:?}"),
    }

    let (ack, _) = v1.send_and_ack("general", "from v1", "v1-1").await.unwrap();
    assert!(matches!(ack, ServerFrame::Ack { seq, .. } if seq.0 == 2));
    assert_eq!(
        compat.next_within(WAIT).await.unwrap(),
        "from v1",
        "compat clients get the raw text"
    );

    // A v1 message to another room does not reach compat clients.
    v1.join("elsewhere", None).await.unwrap();
    v1.send_and_ack("elsewhere", "private", "v1-2")
        .await
        .unwrap();
    assert!(
        compat
            .next_within(Duration::from_millis(300))
            .await
            .is_err()
    );
    server.stop().await;
}

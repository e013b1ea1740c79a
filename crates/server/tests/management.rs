//! The management API: API Gateway's `@connections` calls, room endpoints, and its guard.

mod common;

use common::{TestServer, WAIT, until};
use dynamowave_client::ClientError;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn post_get_delete_a_connection() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut c = server.v1("ann").await;
    let id = c.connection_id().to_owned();
    let url = server.http(&format!("/@connections/{id}"));

    let r = http
        .post(&url)
        .body("a note from the backend")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The body arrives as one text frame, verbatim.
    assert_eq!(c.next_raw().await.unwrap(), "a note from the backend");
    let r = http
        .post(&url)
        .body(r#"{"type":"custom","n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(c.next_raw().await.unwrap(), r#"{"type":"custom","n":1}"#);

    let info: Value = common::get_json(&http, &url).await;
    assert_eq!(info["connectionId"], id.as_str());
    assert_eq!(info["identity"]["sourceIp"], "127.0.0.1");
    assert!(info["connectedAt"].as_str().unwrap().ends_with('Z'));
    assert!(info["lastActiveAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(info["user"], "ann");
    assert_eq!(info["mode"], "v1");

    let r = http.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    loop {
        match c.next_within(WAIT).await {
            Ok(_) => continue,
            Err(ClientError::Closed { code, reason }) => {
                assert_eq!(code, 1000);
                assert!(reason.contains("management API"));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }

    // Once it is gone: 410 for every call, as API Gateway does.
    let mut gone = false;
    for _ in 0..100 {
        if http.get(&url).send().await.unwrap().status() == StatusCode::GONE {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(gone);
    let r = http.post(&url).body("x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "gone");
    assert_eq!(
        http.delete(&url).send().await.unwrap().status(),
        StatusCode::GONE
    );
    let r = http
        .get(server.http("/@connections/no-such-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    server.stop().await;
}

#[tokio::test]
async fn server_side_publish_uses_the_same_log_and_fan_out() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut c = server.v1("ann").await;
    c.join("news", None).await.unwrap();
    until(&mut c, |f| matches!(f, ServerFrame::Joined { .. })).await;
    c.send_and_ack("news", "from a socket", "s1").await.unwrap();

    let url = server.http("/rooms/news/messages");
    let r = http
        .post(&url)
        .json(&json!({"data": "from the API", "id": "api-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["seq"].as_u64(), body["duplicate"].as_bool()),
        (Some(2), Some(false))
    );
    let (m, _) = until(
        &mut c,
        |f| matches!(f, ServerFrame::Message(m) if m.seq.0 == 2),
    )
    .await;
    let ServerFrame::Message(m) = m else {
        unreachable!()
    };
    assert_eq!(
        (m.user.as_str(), m.data.as_str()),
        ("server", "from the API")
    );

    // Idempotent too.
    let r = http
        .post(&url)
        .json(&json!({"data": "again", "id": "api-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["seq"].as_u64(), body["duplicate"].as_bool()),
        (Some(2), Some(true))
    );
    let r = http
        .post(&url)
        .json(&json!({"data": "as bot", "user": "bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let page: Value = common::get_json(&http, format!("{url}?after=1&limit=1")).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["messages"][0]["seq"], 2);
    assert_eq!(page["more"], true);
    let page: Value = common::get_json(&http, format!("{url}?before=3")).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    assert_eq!(page["more"], false);

    let members: Value = common::get_json(&http, server.http("/rooms/news/members")).await;
    assert_eq!(members["members"][0]["user"], "ann");
    assert_eq!(members["members"][0]["connectionId"], c.connection_id());

    // Posting creates a room.
    let r = http
        .post(server.http("/rooms/fresh/messages"))
        .json(&json!({"data": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    server.stop().await;
}

#[tokio::test]
async fn room_endpoints_explain_bad_requests() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    http.post(server.http("/rooms/r/messages"))
        .json(&json!({"data": "x"}))
        .send()
        .await
        .unwrap();
    let huge = json!({"data": "x".repeat(200 * 1024)}).to_string();
    // (method, path, body, expected status, a phrase the message must contain)
    let cases: [(&str, &str, Option<&str>, StatusCode, &str); 10] = [
        (
            "GET",
            "/rooms/ghost/messages",
            None,
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            "GET",
            "/rooms/ghost/members",
            None,
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            "GET",
            "/rooms/bad%20name/messages",
            None,
            StatusCode::BAD_REQUEST,
            "invalid room name",
        ),
        (
            "GET",
            "/rooms/r/messages?after=-1",
            None,
            StatusCode::BAD_REQUEST,
            "`after` must be a non-negative integer",
        ),
        (
            "GET",
            "/rooms/r/messages?after=1&before=2",
            None,
            StatusCode::BAD_REQUEST,
            "not both",
        ),
        (
            "GET",
            "/rooms/r/messages?limit=100000",
            None,
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            "POST",
            "/rooms/r/messages",
            Some("not json"),
            StatusCode::BAD_REQUEST,
            "must be JSON",
        ),
        (
            "POST",
            "/rooms/r/messages",
            Some(r#"{"data":5}"#),
            StatusCode::BAD_REQUEST,
            "must be JSON",
        ),
        (
            "POST",
            "/rooms/r/messages",
            Some(r#"{"data":"x","id":""}"#),
            StatusCode::BAD_REQUEST,
            "`id` must be 1 to 128 bytes",
        ),
        (
            "POST",
            "/rooms/r/messages",
            Some(&huge),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let request = match body {
            Some(body) => http
                .post(server.http(path))
                .header("content-type", "application/json")
                .body(body.to_owned()),
            None => http.request(method.parse().unwrap(), server.http(path)),
        };
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{method} {path}: {body}"
        );
        assert!(body["code"].is_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn an_admin_token_is_required_when_configured() {
    let token = "s3cret-admin-token-0123";
    let server = TestServer::start_with(ServerConfig {
        admin_token: Some(token.into()),
        ..ServerConfig::unthrottled()
    })
    .await;
    let http = reqwest::Client::new();
    let url = server.http("/rooms/r/messages");
    let r = http
        .post(&url)
        .json(&json!({"data": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    let r = http
        .post(&url)
        .bearer_auth("wrong-token-wrong-token")
        .json(&json!({"data": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .post(&url)
        .bearer_auth(token)
        .json(&json!({"data": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Health and the WebSocket endpoint need no admin token.
    assert_eq!(
        http.get(server.http("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    server.v1("ann").await;
    server.stop().await;
}

//! The handler with events in API Gateway's exact shape, on a real moto (DynamoDB and SQS), and
//! a real HTTP server standing in for `@connections` that records every post and can answer
//! 410 or 500 for chosen connections. (The whole shape, with the handler binary under the
//! local API Gateway, is tested end to end by deploy/aws/e2e.py.)

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::{Moto, fresh_tables};
use dynamowave_core::ports::NoListener;
use dynamowave_core::types::{ConnectionId, RoomId, UserName};
use dynamowave_lambda::Handler;
use dynamowave_lambda::config::{API_GATEWAY_LIMITS, Config};
use dynamowave_lambda::connections_api::ConnectionsApi;
use dynamowave_lambda::dead_letters::SqsDeadLetters;
use dynamowave_lambda::dynamo::{DynamoStore, Tables, create_tables};
use serde_json::{Value, json};

/// `@connections` on a local port: records posts, answers with a chosen status per connection.
#[derive(Clone, Default)]
struct Connections {
    posts: Arc<Mutex<Vec<(String, String)>>>,
    status: Arc<Mutex<HashMap<String, u16>>>,
}

impl Connections {
    async fn start(&self) -> String {
        async fn post(
            State(c): State<Connections>,
            Path((_stage, id)): Path<(String, String)>,
            body: Bytes,
        ) -> impl IntoResponse {
            let status = c.status.lock().unwrap().get(&id).copied().unwrap_or(200);
            match status {
                200 => {
                    let text = String::from_utf8(body.to_vec()).unwrap();
                    c.posts.lock().unwrap().push((id, text));
                    (StatusCode::OK, [("x-amzn-ErrorType", "")], String::new())
                }
                410 => (
                    StatusCode::GONE,
                    [("x-amzn-ErrorType", "GoneException")],
                    r#"{"message":null}"#.to_owned(),
                ),
                code => (
                    StatusCode::from_u16(code).unwrap(),
                    [("x-amzn-ErrorType", "InternalServerErrorException")],
                    r#"{"message":"injected"}"#.to_owned(),
                ),
            }
        }
        let app = Router::new()
            .route("/{stage}/@connections/{id}", axum::routing::post(post))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/production")
    }

    fn take(&self, id: &str) -> Vec<String> {
        let mut posts = self.posts.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) = posts.drain(..).partition(|(to, _)| to == id);
        *posts = rest;
        mine.into_iter().map(|(_, text)| text).collect()
    }

    fn json(&self, id: &str) -> Vec<Value> {
        self.take(id)
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect()
    }

    fn answer(&self, id: &str, status: u16) {
        self.status.lock().unwrap().insert(id.to_owned(), status);
    }
}

struct Shape {
    handler: Handler,
    connections: Connections,
    store: DynamoStore,
    dlq: SqsDeadLetters,
    endpoint: String,
    sdk: aws_config::SdkConfig,
    _moto: Moto,
}

async fn shape(jwt_secret: Option<&str>) -> Option<Shape> {
    let moto = Moto::start()?;
    let sdk = moto.sdk_config().await;
    let tables: Tables = fresh_tables();
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    create_tables(&dynamodb, &tables).await.unwrap();
    let queue = aws_sdk_sqs::Client::new(&sdk)
        .create_queue()
        .queue_name(format!("dlq-{}", tables.connections))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let connections = Connections::default();
    let endpoint = connections.start().await;
    let config = Config {
        tables: tables.clone(),
        dlq_url: Some(queue.clone()),
        endpoint: Some(endpoint.clone()),
        jwt_secret: jwt_secret.map(str::to_owned),
        fanout_concurrency: 8,
        post_attempts: 3,
        post_backoff: Duration::from_millis(5),
        limits: API_GATEWAY_LIMITS,
    };
    Some(Shape {
        handler: Handler::new(&sdk, config),
        connections,
        store: DynamoStore::new(dynamodb, tables, Arc::new(NoListener)),
        dlq: SqsDeadLetters::new(aws_sdk_sqs::Client::new(&sdk), queue),
        endpoint,
        sdk,
        _moto: moto,
    })
}

/// An event as API Gateway sends it (fields as in the AWS documentation's samples).
fn event(kind: &str, id: &str, body: Option<&str>, headers: Value, query: Value) -> Value {
    let route = match (kind, body) {
        ("CONNECT", _) => "$connect".to_owned(),
        ("DISCONNECT", _) => "$disconnect".to_owned(),
        (_, Some(b)) => serde_json::from_str::<Value>(b)
            .ok()
            .and_then(|v| v["action"].as_str().map(str::to_owned))
            // The template's routes; anything else is `$default` (the same binary either way).
            .filter(|a| {
                [
                    "sendmessage",
                    "join",
                    "leave",
                    "history",
                    "members",
                    "edit",
                    "delete",
                    "react",
                    "read",
                    "typing",
                ]
                .contains(&a.as_str())
            })
            .unwrap_or_else(|| "$default".to_owned()),
        _ => "$default".to_owned(),
    };
    let mut e = json!({
        "headers": headers,
        "multiValueHeaders": headers.as_object().map(|h| h.iter().map(|(k, v)| (k.clone(), json!([v]))).collect::<serde_json::Map<_, _>>()),
        "queryStringParameters": query,
        "requestContext": {
            "routeKey": route,
            "eventType": kind,
            "extendedRequestId": "Ld1lZGzGoAMFx4w=",
            "requestTime": "06/Dec/2026:10:00:00 +0000",
            "messageDirection": "IN",
            "stage": "production",
            "connectedAt": 1_796_544_000_000u64,
            "requestTimeEpoch": 1_796_544_000_100u64,
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "wscat"},
            "requestId": "Ld1lZGzGoAMFx4w=",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": id,
            "apiId": "abc123"
        },
        "isBase64Encoded": false
    });
    if kind == "MESSAGE" {
        e["requestContext"]["messageId"] = json!("Ld1m6eVnoAMCJQg=");
        e["body"] = json!(body.unwrap_or(""));
    }
    if kind == "DISCONNECT" {
        e["requestContext"]["disconnectStatusCode"] = json!(1001);
        e["requestContext"]["disconnectReason"] = json!("Going away");
    }
    e
}

impl Shape {
    async fn send(&self, e: Value) -> ApiGatewayProxyResponse {
        let e: ApiGatewayWebsocketProxyRequest = serde_json::from_value(e).unwrap();
        self.handler.handle(e).await.unwrap()
    }

    async fn connect(&self, id: &str, name: &str, v1: bool) -> ApiGatewayProxyResponse {
        let headers = if v1 {
            json!({"Host": "abc123.execute-api.us-east-1.amazonaws.com", "Sec-WebSocket-Protocol": "dynamowave.v1"})
        } else {
            json!({"Host": "abc123.execute-api.us-east-1.amazonaws.com"})
        };
        self.send(event("CONNECT", id, None, headers, json!({"name": name})))
            .await
    }

    async fn frame(&self, id: &str, body: &str) {
        let r = self
            .send(event("MESSAGE", id, Some(body), json!({}), json!(null)))
            .await;
        assert_eq!(r.status_code, 200);
    }

    async fn disconnect(&self, id: &str) {
        self.send(event("DISCONNECT", id, None, json!({}), json!(null)))
            .await;
    }
}

fn room(name: &str) -> RoomId {
    RoomId::parse(name).unwrap()
}

fn conn(id: &str) -> ConnectionId {
    ConnectionId::parse(id).unwrap()
}

#[tokio::test]
async fn compat_clients_chat_as_in_the_aws_tutorial() {
    let Some(s) = shape(None).await else { return };
    for id in ["AAAAAAAAAAAAAAA=", "BBBBBBBBBBBBBBB="] {
        let r = s.connect(id, "ann", false).await;
        assert_eq!(r.status_code, 200);
        assert!(r.headers.get("sec-websocket-protocol").is_none());
    }
    assert!(
        s.connections.posts.lock().unwrap().is_empty(),
        "$connect never posts"
    );
    s.frame(
        "AAAAAAAAAAAAAAA=",
        r#"{"action":"sendmessage","message":"hello, everyone!"}"#,
    )
    .await;
    for id in ["AAAAAAAAAAAAAAA=", "BBBBBBBBBBBBBBB="] {
        assert_eq!(s.connections.take(id), vec!["hello, everyone!"]);
    }
    // $default: not JSON, or an unknown action, gets the original's reply.
    s.frame("BBBBBBBBBBBBBBB=", "hi there").await;
    s.frame("BBBBBBBBBBBBBBB=", r#"{"action":"dance"}"#).await;
    let replies = s.connections.take("BBBBBBBBBBBBBBB=");
    assert_eq!(replies.len(), 2);
    for r in &replies {
        assert!(
            r.starts_with("Use the sendmessage route to send a message. Your info:"),
            "{r}"
        );
        assert!(r.contains("203.0.113.7"), "{r}");
    }
    s.disconnect("AAAAAAAAAAAAAAA=").await;
    assert!(
        s.store
            .connection(&conn("AAAAAAAAAAAAAAA="))
            .await
            .unwrap()
            .is_none()
    );
    let members = s.store.room_members(&room("general")).await.unwrap();
    assert_eq!(members.len(), 1);
}

#[tokio::test]
async fn v1_clients_join_send_with_acks_and_resume() {
    let Some(s) = shape(None).await else { return };
    let (c, d) = ("CCCCCCCCCCCCCCC=", "DDDDDDDDDDDDDDD=");
    let r = s.connect(c, "cat", true).await;
    assert_eq!(
        r.headers.get("sec-websocket-protocol").unwrap(),
        "dynamowave.v1"
    );
    s.connect(d, "dan", true).await;
    s.frame(c, r#"{"action":"join","room":"lobby"}"#).await;
    let got = s.connections.json(c);
    assert_eq!(
        got[0]["type"], "connected",
        "the first frame's invocation greets"
    );
    assert_eq!(got[0]["user"], "cat");
    assert_eq!(got[0]["limits"]["maxFrameBytes"], 32768);
    assert_eq!(
        got[1],
        json!({"type":"joined","room":"lobby","seq":0,"lastRead":0})
    );
    s.frame(d, r#"{"action":"join","room":"lobby"}"#).await;
    let got = s.connections.json(d);
    assert_eq!(
        (got[0]["type"].as_str(), got[1]["type"].as_str()),
        (Some("connected"), Some("joined"))
    );
    // cat hears dan arrive.
    let presence = s.connections.json(c);
    assert_eq!(presence[0]["type"], "presence");
    assert_eq!(
        (presence[0]["event"].as_str(), presence[0]["user"].as_str()),
        (Some("joined"), Some("dan"))
    );

    s.frame(
        d,
        r#"{"action":"sendmessage","room":"lobby","data":"hi cat","id":"m1"}"#,
    )
    .await;
    let at_d = s.connections.json(d);
    assert_eq!(at_d[0]["type"], "ack");
    assert_eq!(
        (at_d[0]["seq"].as_u64(), at_d[0]["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(at_d[1]["type"], "message");
    let at_c = s.connections.json(c);
    assert_eq!(at_c.len(), 1);
    assert_eq!(
        (
            at_c[0]["data"].as_str(),
            at_c[0]["user"].as_str(),
            at_c[0]["seq"].as_u64()
        ),
        (Some("hi cat"), Some("dan"), Some(1))
    );

    // A retried id is acked as a duplicate and delivered to no one again.
    s.frame(
        d,
        r#"{"action":"sendmessage","room":"lobby","data":"hi cat","id":"m1"}"#,
    )
    .await;
    let at_d = s.connections.json(d);
    assert_eq!(at_d.len(), 1);
    assert_eq!(
        (at_d[0]["type"].as_str(), at_d[0]["duplicate"].as_bool()),
        (Some("ack"), Some(true))
    );
    assert!(s.connections.take(c).is_empty());
    for i in 2..=4 {
        let body =
            format!(r#"{{"action":"sendmessage","room":"lobby","data":"m{i}","id":"m{i}"}}"#);
        s.frame(d, &body).await;
    }
    s.connections.take(c);
    s.connections.take(d);

    // Resume: a new connection joins with `after` and gets what it missed, in order.
    let e = "EEEEEEEEEEEEEEE=";
    s.connect(e, "cat", true).await;
    s.frame(e, r#"{"action":"join","room":"lobby","after":2}"#)
        .await;
    let got = s.connections.json(e);
    let kinds: Vec<&str> = got.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["connected", "joined", "message", "message"]);
    assert_eq!(
        (got[2]["seq"].as_u64(), got[3]["seq"].as_u64()),
        (Some(3), Some(4))
    );

    s.frame(e, r#"{"action":"history","room":"lobby","limit":2}"#)
        .await;
    let h = &s.connections.json(e)[0];
    assert_eq!(h["type"], "history");
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
    assert_eq!(h["more"], true);
    s.frame(e, r#"{"action":"members","room":"lobby"}"#).await;
    let m = &s.connections.json(e)[0];
    assert_eq!(m["members"].as_array().unwrap().len(), 3);
    // Errors are error frames, as on the server.
    s.frame(
        e,
        r#"{"action":"sendmessage","room":"elsewhere","data":"x"}"#,
    )
    .await;
    assert_eq!(s.connections.json(e)[0]["code"], "not_joined");
    s.connections.take(c);
    s.frame(e, r#"{"action":"leave","room":"lobby"}"#).await;
    assert_eq!(
        s.connections.json(e)[0],
        json!({"type":"left","room":"lobby"})
    );
    let left = s.connections.json(c);
    assert_eq!(
        (left[0]["type"].as_str(), left[0]["event"].as_str()),
        (Some("presence"), Some("left"))
    );

    // $disconnect tells the room's other v1 members.
    s.connections.take(d);
    s.disconnect(c).await;
    let at_d = s.connections.json(d);
    assert_eq!(
        (at_d[0]["event"].as_str(), at_d[0]["user"].as_str()),
        (Some("left"), Some("cat"))
    );
}

#[tokio::test]
async fn edits_reactions_deletions_read_marks_and_typing_through_the_handler() {
    let Some(s) = shape(None).await else { return };
    let (a, b) = ("FFFFFFFFFFFFFFF=", "GGGGGGGGGGGGGGG=");
    s.connect(a, "ann", true).await;
    s.connect(b, "bob", true).await;
    s.frame(a, r#"{"action":"join","room":"lobby"}"#).await;
    s.frame(b, r#"{"action":"join","room":"lobby"}"#).await;
    s.frame(
        a,
        r#"{"action":"sendmessage","room":"lobby","data":"helo","id":"m1"}"#,
    )
    .await;
    s.connections.take(a);
    s.connections.take(b);

    // An edit is an entry: acked with its own seq, delivered to the room as `edited`.
    s.frame(
        a,
        r#"{"action":"edit","room":"lobby","seq":1,"data":"hello","id":"e1"}"#,
    )
    .await;
    let at_a = s.connections.json(a);
    assert_eq!(
        (at_a[0]["type"].as_str(), at_a[0]["seq"].as_u64()),
        (Some("ack"), Some(2))
    );
    let at_b = s.connections.json(b);
    assert_eq!(at_b.len(), 1);
    assert_eq!(
        (
            at_b[0]["type"].as_str(),
            at_b[0]["seq"].as_u64(),
            at_b[0]["eventSeq"].as_u64(),
            at_b[0]["data"].as_str()
        ),
        (Some("edited"), Some(1), Some(2), Some("hello"))
    );
    // Only the author may edit: refused with the store's words, nothing stored.
    s.frame(
        b,
        r#"{"action":"edit","room":"lobby","seq":1,"data":"mine","id":"e2"}"#,
    )
    .await;
    let refused = s.connections.json(b);
    assert_eq!(refused[0]["code"], "forbidden", "{refused:?}");
    assert!(s.connections.take(a).is_empty());

    // A reaction carries the counts after it.
    s.frame(
        b,
        r#"{"action":"react","room":"lobby","seq":1,"emoji":"👍","id":"r1"}"#,
    )
    .await;
    let at_a = s.connections.json(a);
    assert_eq!(at_a[0]["type"], "reaction");
    assert_eq!(at_a[0]["counts"], json!({"👍": 1}));
    assert_eq!(at_a[0]["eventSeq"], 3);
    s.connections.take(b);

    // Read marks: stored, told to the room, moving forward only.
    s.frame(b, r#"{"action":"read","room":"lobby","seq":3}"#)
        .await;
    let at_a = s.connections.json(a);
    assert_eq!(
        at_a[0],
        json!({"type":"read","room":"lobby","user":"bob","seq":3})
    );
    s.connections.take(b);
    s.frame(b, r#"{"action":"read","room":"lobby","seq":9}"#)
        .await;
    assert_eq!(
        s.connections.json(b)[0]["code"],
        "bad_request",
        "past the head"
    );
    s.frame(b, r#"{"action":"members","room":"lobby"}"#).await;
    let members = &s.connections.json(b)[0]["members"];
    let bob = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "bob")
        .unwrap();
    assert_eq!(bob["lastRead"], 3);

    // Typing reaches the others, is not stored.
    s.frame(b, r#"{"action":"typing","room":"lobby"}"#).await;
    assert_eq!(
        s.connections.json(a)[0],
        json!({"type":"typing","room":"lobby","user":"bob"})
    );
    assert!(s.connections.take(b).is_empty(), "no reply to typing");

    // History shows the message as it is now; a deletion takes it out.
    s.frame(b, r#"{"action":"history","room":"lobby"}"#).await;
    let h = &s.connections.json(b)[0];
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(h["messages"][0]["data"], "hello");
    assert!(h["messages"][0]["editedAt"].as_u64().is_some());
    assert_eq!(h["messages"][0]["reactions"], json!({"👍": 1}));
    s.frame(a, r#"{"action":"delete","room":"lobby","seq":1,"id":"d1"}"#)
        .await;
    assert_eq!(
        s.connections.json(b)[0],
        json!({"type":"deleted","room":"lobby","seq":1,"eventSeq":4})
    );
    s.connections.take(a);
    s.frame(b, r#"{"action":"history","room":"lobby"}"#).await;
    assert_eq!(
        s.connections.json(b)[0]["messages"],
        json!([]),
        "history holds messages only, deleted ones skipped"
    );

    // Resume replays the event entries in seq order; lastRead comes with `joined`.
    let c = "HHHHHHHHHHHHHHH=";
    s.connect(c, "bob", true).await;
    s.frame(c, r#"{"action":"join","room":"lobby","after":0}"#)
        .await;
    let got = s.connections.json(c);
    let kinds: Vec<&str> = got.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["connected", "joined", "edited", "reaction", "deleted"]
    );
    assert_eq!(got[1]["lastRead"], 3);
}

#[tokio::test]
async fn a_gone_recipient_is_removed_and_the_sender_is_kept() {
    let Some(s) = shape(None).await else { return };
    let (a, b, gone) = ("AAAAAAAAAAAAAAA=", "BBBBBBBBBBBBBBB=", "GGGGGGGGGGGGGGG=");
    for id in [a, b, gone] {
        s.connect(id, "ann", false).await;
    }
    s.connections.answer(gone, 410);
    s.frame(a, r#"{"action":"sendmessage","message":"still here?"}"#)
        .await;
    assert_eq!(s.connections.take(b), vec!["still here?"]);
    assert!(
        s.store.connection(&conn(gone)).await.unwrap().is_none(),
        "the stale row is deleted"
    );
    assert!(
        s.store.connection(&conn(a)).await.unwrap().is_some(),
        "not the sender"
    );
    let members: Vec<String> = s
        .store
        .room_members(&room("general"))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.connection_id.to_string())
        .collect();
    assert_eq!(members.len(), 2);
    assert!(!members.contains(&gone.to_owned()));
}

#[tokio::test]
async fn a_post_that_keeps_failing_is_dead_lettered_and_replayed_once() {
    let Some(s) = shape(None).await else { return };
    let (a, sick) = ("AAAAAAAAAAAAAAA=", "SSSSSSSSSSSSSSS=");
    s.connect(a, "ann", false).await;
    s.connect(sick, "sid", false).await;
    s.connections.answer(sick, 500);
    s.frame(a, r#"{"action":"sendmessage","message":"keep this"}"#)
        .await;
    assert_eq!(s.connections.take(a), vec!["keep this"]);
    assert!(s.connections.take(sick).is_empty());
    let letters = s.dlq.list().await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = letters[0].letter.as_ref().unwrap();
    assert_eq!(
        (letter.target.as_str(), letter.payload.as_str()),
        (sick, "keep this")
    );
    assert_eq!((letter.user.as_deref(), letter.attempts), (Some("sid"), 3));
    assert_eq!(letter.endpoint, s.endpoint);
    assert!(
        s.store.connection(&conn(sick)).await.unwrap().is_some(),
        "a failure is not a 410"
    );

    // While it still fails, replay keeps the letter.
    let api = ConnectionsApi::new(s.sdk.clone());
    let report = s.dlq.replay(&api, None, None, false).await.unwrap();
    assert_eq!((report.replayed, report.failed), (0, 1));
    s.connections.answer(sick, 200);
    let report = s.dlq.replay(&api, None, None, false).await.unwrap();
    assert_eq!(report.replayed, 1);
    assert_eq!(s.connections.take(sick), vec!["keep this"]);
    let again = s.dlq.replay(&api, None, None, false).await.unwrap();
    assert_eq!(again.replayed, 0, "delivered once");
    assert_eq!(s.dlq.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn jwt_on_connect_as_on_the_server() {
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let Some(s) = shape(Some(secret)).await else {
        return;
    };
    let id = "JJJJJJJJJJJJJJJ=";
    let r = s.connect(id, "mallory", true).await;
    assert_eq!(r.status_code, 401);
    assert!(format!("{:?}", r.body).contains("token is required"));
    assert!(s.store.connection(&conn(id)).await.unwrap().is_none());

    let auth = dynamowave_server::config::AuthConfig::default();
    let token = dynamowave_server::identity::mint_hs256(
        secret.as_bytes(),
        &UserName::parse("alice").unwrap(),
        Some(&[room("secret")]),
        Duration::from_secs(60),
        &auth,
    )
    .unwrap();
    let headers = json!({"Sec-WebSocket-Protocol": "dynamowave.v1", "Authorization": format!("Bearer {token}")});
    let r = s
        .send(event("CONNECT", id, None, headers, json!(null)))
        .await;
    assert_eq!(r.status_code, 200);
    s.frame(id, r#"{"action":"join","room":"lobby"}"#).await;
    let got = s.connections.json(id);
    assert_eq!(got[0]["user"], "alice", "the user comes from the token");
    assert_eq!(
        got[1]["code"], "forbidden",
        "the token's rooms claim holds: {got:?}"
    );
    s.frame(id, r#"{"action":"join","room":"secret"}"#).await;
    assert_eq!(s.connections.json(id)[0]["type"], "joined");

    // A compat connection always is in general: a token without it is refused.
    let headers = json!({"Authorization": format!("Bearer {token}")});
    let r = s
        .send(event(
            "CONNECT",
            "KKKKKKKKKKKKKKK=",
            None,
            headers,
            json!(null),
        ))
        .await;
    assert_eq!(r.status_code, 403);
}

#[tokio::test]
async fn events_that_are_not_api_gateway_websocket_events_fail_the_invocation() {
    let Some(s) = shape(None).await else { return };
    let mut e = event(
        "MESSAGE",
        "AAAAAAAAAAAAAAA=",
        Some("{}"),
        json!({}),
        json!(null),
    );
    e["requestContext"]["eventType"] = json!("PING");
    let e: ApiGatewayWebsocketProxyRequest = serde_json::from_value(e).unwrap();
    assert!(s.handler.handle(e).await.is_err());
    // A frame from a connection with no row (its $connect failed) gets told to reconnect.
    s.frame(
        "ZZZZZZZZZZZZZZZ=",
        r#"{"action":"sendmessage","message":"x"}"#,
    )
    .await;
    let got = s.connections.json("ZZZZZZZZZZZZZZZ=");
    assert_eq!(got[0]["code"], "gone");
}

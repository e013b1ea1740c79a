//! `dynamowave emulate-aws` as API Gateway behaves: the real binary, real WebSocket clients, and
//! a Lambda function in Python (tests/fixtures/echo_handler.py) speaking the Runtime API, which
//! posts each event it gets back to its connection so the event's shape can be checked.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Gateway {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    disconnects: tempfile::NamedTempFile,
}

impl Gateway {
    fn start(extra: &[&str]) -> Gateway {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/echo_handler.py"
        );
        let disconnects = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
            .args([
                "emulate-aws",
                "--listen",
                "127.0.0.1:0",
                "--handler",
                fixture,
            ])
            .args(["--timeout-secs", "3"])
            .args(extra)
            .env("ECHO_DISCONNECT_LOG", disconnects.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .unwrap_or_else(|| panic!("no ws:// in {line:?}"));
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        Gateway {
            child,
            addr,
            disconnects,
        }
    }

    async fn connect(&self, query: &str, protocol: Option<&str>) -> Result<Ws, WsError> {
        let mut request = format!("ws://{}/production{query}", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(ws, _)| ws)
    }

    fn connections(&self, id: &str) -> String {
        format!(
            "http://{}/production/@connections/{}",
            self.addr,
            id.replace('=', "%3D")
        )
    }

    /// Waits for `$disconnect` of `id` in the handler's log; returns its close code.
    async fn disconnected(&self, id: &str) -> String {
        for _ in 0..100 {
            let log = std::fs::read_to_string(self.disconnects.path()).unwrap();
            if let Some(line) = log.lines().find(|l| l.starts_with(id)) {
                return line.split(' ').nth(1).unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no $disconnect for {id}");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("a frame within 15 s")
        .expect("open")
        .expect("no error")
}

async fn echo(ws: &mut Ws, body: &str) -> Value {
    ws.send(Message::text(body)).await.unwrap();
    match next(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    }
}

async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return None,
            Err(_) => panic!("no close within 15 s"),
        }
    }
}

#[tokio::test]
async fn frames_become_api_gateway_events_routed_by_action() {
    let gw = Gateway::start(&[]);
    let mut ws = gw.connect("?name=ann&x=1&x=2", None).await.unwrap();
    let e = echo(&mut ws, r#"{"action":"sendmessage","message":"hi"}"#).await;
    assert_eq!(e["routeKey"], "sendmessage");
    assert_eq!(e["eventType"], "MESSAGE");
    assert_eq!(e["body"], r#"{"action":"sendmessage","message":"hi"}"#);
    assert_eq!(
        e["function"], "dynamowave-local-sendmessage",
        "one function per route"
    );
    let ctx = &e["requestContext"];
    for field in [
        "connectionId",
        "domainName",
        "stage",
        "requestId",
        "messageId",
        "extendedRequestId",
        "requestTime",
        "apiId",
    ] {
        assert!(ctx[field].is_string(), "{field}: {ctx}");
    }
    assert_eq!(ctx["stage"], "production");
    assert_eq!(
        ctx["domainName"],
        "local.execute-api.us-east-1.amazonaws.com"
    );
    assert_eq!(ctx["messageDirection"], "IN");
    assert_eq!(ctx["identity"]["sourceIp"], "127.0.0.1");
    assert!(ctx["requestTimeEpoch"].as_u64().unwrap() >= ctx["connectedAt"].as_u64().unwrap());
    let id = ctx["connectionId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16);

    assert_eq!(
        echo(&mut ws, r#"{"action":"join","room":"a"}"#).await["routeKey"],
        "join"
    );
    assert_eq!(
        echo(&mut ws, r#"{"action":"dance"}"#).await["routeKey"],
        "$default"
    );
    assert_eq!(echo(&mut ws, "not json").await["routeKey"], "$default");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let Message::Text(t) = next(&mut ws).await else {
        panic!()
    };
    let e: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(
        (
            e["routeKey"].as_str(),
            e["isBase64Encoded"].as_bool(),
            e["body"].as_str()
        ),
        (Some("$default"), Some(true), Some("AQID"))
    );

    // A connection's frames run one at a time, in order.
    for i in 0..20 {
        ws.send(Message::text(format!(
            r#"{{"action":"sendmessage","n":{i}}}"#
        )))
        .await
        .unwrap();
    }
    for i in 0..20 {
        let Message::Text(t) = next(&mut ws).await else {
            panic!()
        };
        let e: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(e["body"], format!(r#"{{"action":"sendmessage","n":{i}}}"#));
    }
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(gw.disconnected(&id).await, "1000");
}

#[tokio::test]
async fn connect_runs_before_the_handshake_and_chooses_the_subprotocol() {
    let gw = Gateway::start(&[]);
    match gw.connect("?deny=1", None).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 401);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert_eq!(body, "denied by the test handler");
        }
        other => panic!("a refused $connect opens no socket: {other:?}"),
    }
    let request = {
        let mut r = format!("ws://{}/production", gw.addr)
            .into_client_request()
            .unwrap();
        r.headers_mut()
            .insert("sec-websocket-protocol", "dynamowave.v1".parse().unwrap());
        r
    };
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "dynamowave.v1"
    );
    let wrong = format!("http://{}/elsewhere", gw.addr);
    let r = reqwest::get(wrong).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_failed_invocation_answers_internal_server_error() {
    let gw = Gateway::start(&[]);
    let mut ws = gw.connect("", None).await.unwrap();
    for body in ["fail", "crash", "slow"] {
        let e = echo(&mut ws, body).await;
        assert_eq!(e["message"], "Internal server error", "{body}: {e}");
        assert!(e["connectionId"].is_string() && e["requestId"].is_string());
    }
    // A crashed or killed environment is replaced: the next frame is served.
    assert_eq!(echo(&mut ws, "hello").await["body"], "hello");
}

#[tokio::test]
async fn the_management_api_posts_describes_and_closes() {
    let gw = Gateway::start(&[]);
    let mut ws = gw.connect("", None).await.unwrap();
    let id = echo(&mut ws, "who").await["requestContext"]["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let r = http
        .post(gw.connections(&id))
        .body("from curl")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(next(&mut ws).await, Message::text("from curl"));
    let info: Value = http
        .get(gw.connections(&id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info["connectedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(info["identity"]["sourceIp"], "127.0.0.1");
    let r = http
        .post(gw.connections(&id))
        .body(vec![b'x'; 128 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-amzn-errortype"], "PayloadTooLargeException");
    for method in [
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
    ] {
        let r = http
            .request(method, gw.connections("NoSuchConnId0="))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 410);
        assert_eq!(r.headers()["x-amzn-errortype"], "GoneException");
    }
    let r = http.delete(gw.connections(&id)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    close_code(&mut ws).await;
    gw.disconnected(&id).await;
    let r = http
        .post(gw.connections(&id))
        .body("late")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410, "a closed connection is gone");
}

#[tokio::test]
async fn limits_close_as_on_aws() {
    // 3 s, not 1: the echo below must come back before the idle close, and on a loaded machine
    // the first invocation of a handler process can take more than a second.
    let gw = Gateway::start(&["--idle-timeout-secs", "3"]);
    // A frame over 32 KB: 1009.
    let mut ws = gw.connect("", None).await.unwrap();
    ws.send(Message::text("x".repeat(32 * 1024 + 1)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
    // Idle: 1001, then $disconnect.
    let mut ws = gw.connect("", None).await.unwrap();
    let id = echo(&mut ws, "hi").await["requestContext"]["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
    assert_eq!(gw.disconnected(&id).await, "1001");

    let gw = Gateway::start(&["--max-connection-secs", "1"]);
    let mut ws = gw.connect("", None).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
}

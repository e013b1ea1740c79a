//! End to end through `deploy/aws/run-local.sh`: the handler binary, unchanged, under the local
//! API Gateway (`dynamowave emulate-aws`), on moto's DynamoDB and SQS, with real WebSocket
//! clients. Two compat and two v1 clients chat, `$default` replies, a killed client's row is
//! cleaned on 410, a post that keeps failing lands in the SQS DLQ and `dynamowave-aws dlq
//! replay` delivers it once.
//!
//! It builds and starts the whole shape, so it runs when `DYNAMOWAVE_RUN_LOCAL_E2E=1` (./test.sh
//! sets it) and skips otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dynamowave_core::ports::NoListener;
use dynamowave_core::types::{ConnectionId, RoomId};
use dynamowave_lambda::dynamo::{DynamoStore, Tables};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// run-local.sh in its own process group, stopped with SIGTERM (its trap stops moto and the
/// gateway) on drop.
struct RunLocal {
    child: Child,
    url: String,
    /// `AWS_ENDPOINT_URL=... DLQ_URL=...`, as run-local.sh prints them.
    env: Vec<(String, String)>,
}

impl RunLocal {
    fn start() -> RunLocal {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let mut child = Command::new("bash")
            .arg(format!("{root}/deploy/aws/run-local.sh"))
            .arg("0")
            .env("DYNAMOWAVE_PROFILE", "debug")
            // Fast retries: the DLQ case should not wait for production backoff.
            .env("DYNAMOWAVE_POST_BACKOFF_MS", "10")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run-local.sh starts");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("run-local: {line}");
                if let Some(rest) = line.strip_prefix("== env: ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .unwrap_or_else(|| panic!("no ws:// URL in {line:?}"))
            .to_owned();
        let env = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("run-local.sh prints its environment")
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        RunLocal { child, url, env }
    }

    fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == name).unwrap().1
    }

    /// The gateway's own HTTP side (`http://127.0.0.1:PORT`).
    fn http(&self) -> String {
        let host = self.url.trim_start_matches("ws://");
        format!("http://{}", host.split('/').next().unwrap())
    }

    async fn store(&self) -> DynamoStore {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.var("AWS_ENDPOINT_URL"))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "local", "local", None, None, "test",
            ))
            .load()
            .await;
        DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            Tables::default(),
            Arc::new(NoListener),
        )
    }

    async fn connect(&self, name: &str, v1: bool) -> Ws {
        let mut request = format!("{}?name={name}", self.url)
            .into_client_request()
            .unwrap();
        if v1 {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", "dynamowave.v1".parse().unwrap());
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(chosen.as_deref(), v1.then_some("dynamowave.v1"));
        ws
    }

    /// `dynamowave-aws dlq ARGS`, as an operator runs it; its stdout.
    fn dlq(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(env!("CARGO_BIN_EXE_dynamowave-aws"))
            .arg("dlq")
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    /// `dynamowave-aws dlq replay`: its JSON report.
    fn dlq_replay(&self) -> Value {
        serde_json::from_slice(&self.dlq(&["replay"])).unwrap()
    }

    fn dlq_depth(&self) -> u64 {
        String::from_utf8(self.dlq(&["depth"]))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for RunLocal {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(t) = frame {
            return t.to_string();
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// Nothing arrives within a second.
async fn quiet(ws: &mut Ws) {
    if let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_secs(1), ws.next()).await
    {
        panic!("unexpected frame {t}");
    }
}

/// A compat client's id, from its `$default` reply (the original's "Your info").
async fn compat_id(ws: &mut Ws) -> String {
    send(ws, "who am i").await;
    let reply = next_text(ws).await;
    let (_, info) = reply
        .split_once("Your info:")
        .unwrap_or_else(|| panic!("not the $default reply: {reply}"));
    let info: Value = serde_json::from_str(info).unwrap();
    info["connectionID"].as_str().unwrap().to_owned()
}

/// The emulator's fault injection (`/_emulator/faults/{id}`): `Null` clears the faults.
async fn fault(gateway: &str, id: &str, body: Value) {
    let url = format!("{gateway}/_emulator/faults/{id}");
    let client = reqwest::Client::new();
    let response = match body {
        Value::Null => client.delete(url).send().await,
        body => client.post(url).json(&body).send().await,
    }
    .unwrap();
    assert!(response.status().is_success(), "{response:?}");
}

#[tokio::test]
async fn the_aws_shape_runs_end_to_end_on_this_machine() {
    if std::env::var("DYNAMOWAVE_RUN_LOCAL_E2E").as_deref() != Ok("1") {
        eprintln!("skipping: set DYNAMOWAVE_RUN_LOCAL_E2E=1 (./test.sh does)");
        return;
    }
    let local = RunLocal::start();
    let gateway = local.http();
    let store = local.store().await;

    // Two compat clients, as in the AWS tutorial.
    let mut ann = local.connect("ann", false).await;
    let mut bob = local.connect("bob", false).await;
    send(
        &mut ann,
        r#"{"action":"sendmessage","message":"hello, everyone!"}"#,
    )
    .await;
    assert_eq!(next_text(&mut ann).await, "hello, everyone!");
    assert_eq!(next_text(&mut bob).await, "hello, everyone!");

    // $default.
    send(&mut bob, "what can I do?").await;
    let reply = next_text(&mut bob).await;
    assert!(
        reply.starts_with("Use the sendmessage route to send a message. Your info:"),
        "{reply}"
    );

    // Two v1 clients: greeted on their first frame, rooms, acks, presence.
    let mut cat = local.connect("cat", true).await;
    let mut dan = local.connect("dan", true).await;
    send(&mut cat, r#"{"action":"join","room":"general"}"#).await;
    let hello = next_json(&mut cat).await;
    assert_eq!(
        (hello["type"].as_str(), hello["user"].as_str()),
        (Some("connected"), Some("cat"))
    );
    assert_eq!(next_json(&mut cat).await["type"], "joined");
    send(&mut dan, r#"{"action":"join","room":"general","after":0}"#).await;
    assert_eq!(next_json(&mut dan).await["type"], "connected");
    let joined = next_json(&mut dan).await;
    assert_eq!(
        (joined["type"].as_str(), joined["seq"].as_u64()),
        (Some("joined"), Some(1))
    );
    let replayed = next_json(&mut dan).await;
    assert_eq!(
        (replayed["type"].as_str(), replayed["data"].as_str()),
        (Some("message"), Some("hello, everyone!")),
        "resume replays what came before the join"
    );
    let presence = next_json(&mut cat).await;
    assert_eq!(
        (presence["type"].as_str(), presence["user"].as_str()),
        (Some("presence"), Some("dan"))
    );
    send(
        &mut cat,
        r#"{"action":"sendmessage","room":"general","data":"hi from v1","id":"c-1"}"#,
    )
    .await;
    let ack = next_json(&mut cat).await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(2))
    );
    assert_eq!(next_json(&mut cat).await["data"], "hi from v1");
    assert_eq!(next_json(&mut dan).await["data"], "hi from v1");
    assert_eq!(next_text(&mut ann).await, "hi from v1");
    assert_eq!(next_text(&mut bob).await, "hi from v1");

    // A killed client whose $disconnect never ran (API Gateway's is best effort): the next
    // fan-out meets 410 and deletes its row, and only its row.
    let mut kim = local.connect("kim", false).await;
    let kim_id = compat_id(&mut kim).await;
    fault(&gateway, &kim_id, json!({"dropDisconnect": true})).await;
    drop(kim);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kim_conn = ConnectionId::parse(&kim_id).unwrap();
    assert!(
        store.connection(&kim_conn).await.unwrap().is_some(),
        "the row outlived the client"
    );
    send(
        &mut ann,
        r#"{"action":"sendmessage","message":"anyone gone?"}"#,
    )
    .await;
    assert_eq!(next_text(&mut ann).await, "anyone gone?");
    assert_eq!(next_text(&mut bob).await, "anyone gone?");
    // The fan-out removes it after its 410, within the same invocation as the posts above.
    let mut removed = false;
    for _ in 0..100 {
        if store.connection(&kim_conn).await.unwrap().is_none() {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(removed, "410 removed the stale row");
    let ann_id = compat_id(&mut ann).await;
    assert!(
        store
            .connection(&ConnectionId::parse(&ann_id).unwrap())
            .await
            .unwrap()
            .is_some()
    );
    let members = store.room_members(&RoomId::default_room()).await.unwrap();
    assert_eq!(members.len(), 4, "ann, bob, cat, dan: {members:?}");
    for ws in [&mut cat, &mut dan] {
        assert_eq!(next_json(ws).await["data"], "anyone gone?");
    }

    // A post that keeps failing goes to the SQS DLQ; the replay command delivers it once.
    let bob_id = compat_id(&mut bob).await;
    fault(&gateway, &bob_id, json!({"postStatus": 500})).await;
    send(
        &mut ann,
        r#"{"action":"sendmessage","message":"keep this for bob"}"#,
    )
    .await;
    assert_eq!(next_text(&mut ann).await, "keep this for bob");
    let mut depth = 0;
    for _ in 0..100 {
        depth = local.dlq_depth();
        if depth > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depth, 1, "the failed post is in the DLQ");
    quiet(&mut bob).await;
    fault(&gateway, &bob_id, Value::Null).await;
    let report = local.dlq_replay();
    assert_eq!(report["replayed"], 1, "{report}");
    assert_eq!(next_text(&mut bob).await, "keep this for bob");
    assert_eq!(local.dlq_replay()["replayed"], 0, "once");
    quiet(&mut bob).await;
}

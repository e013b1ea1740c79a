//! `dynamowave emulate-aws`: a local API Gateway WebSocket API that runs the AWS shape's
//! Lambda handler binaries unchanged (deploy/aws/run-local.sh starts it; docs/aws.md).
//!
//! # Layout
//!
//! - `mod.rs`: the flags, [`run`], and the gateway's HTTP side: WebSocket clients at
//!   `/{stage}`, the Management API at `/{stage}/@connections/{id}`, fault injection at
//!   `/_emulator/faults/{id}`.
//! - `lambda.rs`: one function per route, each with execution environments (child processes)
//!   started on demand, each serving the Lambda Runtime API on its own port.
//! - `events.rs`: the proxy events, field for field as API Gateway sends them.
//!
//! As on AWS: `$connect` runs before the handshake completes (a non-2xx answer refuses it, the
//! function's `Sec-WebSocket-Protocol` header is answered); a connection's frames invoke their
//! routes one at a time, in order; `$disconnect` runs after the client went, and the client does
//! not wait for it; a frame over 32 KB or a message over 128 KB closes with 1009; 10 minutes idle
//! or 2 hours connected close with 1001. A failed invocation sends the client API Gateway's
//! `{"message": "Internal server error", ...}`. Route responses are not configured (as in the
//! template), so a MESSAGE route's return value is not sent to the client.

mod events;
mod lambda;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dynamowave_core::types::{now_ms, rfc3339_ms};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use events::{Api, ConnectionFacts};
use lambda::Function;

/// API Gateway's WebSocket limits.
const MAX_FRAME_BYTES: usize = 32 * 1024;
const MAX_MESSAGE_BYTES: usize = 128 * 1024;

#[derive(clap::Args, Clone, Debug)]
pub struct EmulateAwsArgs {
    /// Where WebSocket clients connect (`ws://ADDR/{stage}`) and @connections is served.
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub listen: SocketAddr,
    /// The stage: the URL path, and `requestContext.stage`.
    #[arg(long, default_value = "production")]
    pub stage: String,
    /// The handler binary every route's function runs (deploy/aws: `dynamowave-lambda`).
    #[arg(long)]
    pub handler: Option<PathBuf>,
    /// A route's own binary, `ROUTE=PATH` (e.g. '$connect=/path/to/bootstrap'); repeatable.
    #[arg(long = "function", value_name = "ROUTE=PATH")]
    pub functions: Vec<String>,
    /// The routes besides $connect, $disconnect and $default, chosen by
    /// `$request.body.action`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sendmessage,join,leave,history,members"
    )]
    pub routes: Vec<String>,
    /// Extra environment for the handler processes, `KEY=VALUE`; repeatable (they also inherit
    /// this process's environment).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Execution environments (processes) per function at most.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// An invocation's timeout (API Gateway's integration timeout is 29 s).
    #[arg(long, default_value_t = 29)]
    pub timeout_secs: u64,
    /// Close a connection with no frame from its client for this long (AWS: 10 minutes).
    #[arg(long, default_value_t = 600)]
    pub idle_timeout_secs: u64,
    /// Close every connection after this long (AWS: 2 hours).
    #[arg(long, default_value_t = 7200)]
    pub max_connection_secs: u64,
    /// The API id in `domainName` and `requestContext.apiId`.
    #[arg(long, default_value = "local")]
    pub api_id: String,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
}

/// A frame or close for one connection's socket.
enum Outbound {
    Frame(Message),
    Close(u16, String),
}

struct Connection {
    /// `None` while `$connect` runs: a post to it is answered 410, as on AWS.
    tx: Option<mpsc::UnboundedSender<Outbound>>,
    facts: Arc<ConnectionFacts>,
    last_active: Arc<AtomicU64>,
    faults: Faults,
}

/// What `/_emulator/faults/{id}` injects, to test what AWS does only sometimes.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Faults {
    /// Posts to the connection answer this status (e.g. 500) instead of delivering.
    post_status: Option<u16>,
    /// When the client goes, no `$disconnect` runs (API Gateway's is best effort).
    #[serde(default)]
    drop_disconnect: bool,
}

struct Gateway {
    api: Api,
    routes: Vec<String>,
    functions: HashMap<String, Arc<Function>>,
    connections: Mutex<HashMap<String, Connection>>,
    idle_timeout: Duration,
    max_connection: Duration,
}

type Shared = Arc<Gateway>;

impl Gateway {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Connection>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves on `listener` until `shutdown` completes; then stops every handler process.
pub async fn run(
    listener: TcpListener,
    args: EmulateAwsArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let stage = args.stage.trim_matches('/').to_owned();
    anyhow::ensure!(
        !stage.is_empty() && !stage.contains('/'),
        "--stage must be one path segment, like production"
    );
    let mut binaries: HashMap<String, PathBuf> = HashMap::new();
    for spec in &args.functions {
        let (route, path) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--function {spec:?}: write ROUTE=PATH"))?;
        binaries.insert(route.to_owned(), path.into());
    }
    let mut env = Vec::new();
    for spec in &args.env {
        let (k, v) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--env {spec:?}: write KEY=VALUE"))?;
        env.push((k.to_owned(), v.to_owned()));
    }
    // The handlers post back here rather than to https://{domainName}/{stage}.
    env.push((
        "DYNAMOWAVE_CONNECTIONS_ENDPOINT".into(),
        format!("http://{addr}/{stage}"),
    ));
    let stopping = Arc::new(Notify::new());
    let mut functions = HashMap::new();
    let all_routes = ["$connect", "$disconnect", "$default"]
        .into_iter()
        .map(str::to_owned)
        .chain(args.routes.iter().cloned());
    for route in all_routes {
        let Some(binary) = binaries.get(&route).or(args.handler.as_ref()) else {
            continue;
        };
        let name = format!("dynamowave-local-{}", route.trim_start_matches('$'));
        let f = Function::new(
            name,
            binary.clone(),
            env.clone(),
            args.region.clone(),
            args.concurrency,
            Duration::from_secs(args.timeout_secs.max(1)),
            stopping.clone(),
        );
        functions.insert(route, f);
    }
    anyhow::ensure!(
        functions.contains_key("$connect") || functions.contains_key("$default"),
        "no function: give --handler PATH (or --function ROUTE=PATH)"
    );
    let gateway = Arc::new(Gateway {
        api: Api {
            api_id: args.api_id.clone(),
            region: args.region.clone(),
            stage: stage.clone(),
        },
        routes: args.routes.clone(),
        functions,
        connections: Mutex::new(HashMap::new()),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
        max_connection: Duration::from_secs(args.max_connection_secs.max(1)),
    });
    let app = Router::new()
        .route(&format!("/{stage}"), get(upgrade))
        .route(
            &format!("/{stage}/@connections/{{id}}"),
            post(post_to_connection)
                .get(get_connection)
                .delete(delete_connection),
        )
        .route(
            "/_emulator/faults/{id}",
            post(set_faults).delete(clear_faults),
        )
        .fallback(move || async move {
            (
                StatusCode::NOT_FOUND,
                format!("not found: WebSocket clients connect to /{stage}; the Management API is /{stage}/@connections/{{id}}\n"),
            )
        })
        .with_state(gateway.clone());
    println!(
        "DynamoWave local API Gateway on ws://{addr}/{} (@connections at http://{addr}/{}/@connections) - try: npx wscat -c ws://{addr}/{}",
        args.stage, args.stage, args.stage
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    stopping.notify_waiters();
    Ok(())
}

/// `dynamowave emulate-aws`: binds and runs until SIGINT/SIGTERM.
pub async fn main(args: EmulateAwsArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    run(listener, args, crate::serve::shutdown_signal()).await
}

/// `GET /{stage}`: `$connect` first, then the upgrade, as API Gateway does.
async fn upgrade(
    State(gw): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let id = events::request_id();
    let now = now_ms();
    let facts = Arc::new(ConnectionFacts {
        connection_id: id.clone(),
        connected_at: now,
        source_ip: peer.ip().to_string(),
        user_agent: headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
    });
    let query = query.as_deref().map(query_pairs).unwrap_or_default();
    gw.conns().insert(
        id.clone(),
        Connection {
            tx: None,
            facts: facts.clone(),
            last_active: Arc::new(AtomicU64::new(now)),
            faults: Faults::default(),
        },
    );
    let mut chosen = None;
    if let Some(connect) = gw.functions.get("$connect") {
        let event = events::connect(&gw.api, &facts, &headers, &query, now);
        let answer = connect.invoke(event).await;
        let refused = match &answer {
            Ok(r) => {
                let code = r["statusCode"].as_u64().unwrap_or(200);
                chosen = header_of(r, "sec-websocket-protocol");
                (!(200..300).contains(&code)).then(|| proxy_response(r, code))
            }
            Err(e) => {
                tracing::warn!(connection = %id, error = ?e, "$connect failed");
                Some(
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(json!({"message": "Internal server error", "connectionId": id, "requestId": events::request_id()})),
                    )
                        .into_response(),
                )
            }
        };
        if let Some(refusal) = refused {
            gw.conns().remove(&id);
            return refusal;
        }
    }
    let mut ws = ws
        .max_frame_size(MAX_FRAME_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES);
    if let Some(p) = chosen {
        ws = ws.protocols([p]);
    }
    let gw2 = gw.clone();
    ws.on_failed_upgrade(move |e| tracing::debug!(error = %e, "upgrade failed"))
        .on_upgrade(move |socket| serve(gw2, id, facts, socket))
}

/// A proxy response from `$connect` that refuses the upgrade: its status, headers and body.
fn proxy_response(r: &Value, code: u64) -> Response {
    let status = u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, r["body"].as_str().unwrap_or("").to_owned()).into_response();
    if let Some(h) = r["headers"].as_object() {
        for (k, v) in h {
            if let (Ok(name), Some(Ok(value))) = (
                axum::http::HeaderName::try_from(k.as_str()),
                v.as_str().map(HeaderValue::from_str),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
}

fn header_of(r: &Value, name: &str) -> Option<String> {
    r["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_owned)
}

/// `a=1&b=x%20y` as pairs, decoded as application/x-www-form-urlencoded.
fn query_pairs(q: &str) -> Vec<(String, String)> {
    format!("/?{q}")
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|uri| axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok())
        .map(|axum::extract::Query(pairs)| pairs)
        .unwrap_or_default()
}

/// One open connection: its writer, its frames (invoked one at a time, in order), its limits.
async fn serve(gw: Shared, id: String, facts: Arc<ConnectionFacts>, socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outbound>();
    let last_active = {
        let mut conns = gw.conns();
        let Some(c) = conns.get_mut(&id) else {
            return;
        };
        c.tx = Some(tx.clone());
        c.last_active.clone()
    };
    let (mut sink, mut stream) = socket.split();
    // A close the gateway sends (DELETE @connections, limits) ends the connection at once, as
    // on AWS, without waiting for the client's answer.
    let (closing, mut closed) = tokio::sync::oneshot::channel::<(u16, String)>();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Outbound::Frame(m) => {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
                Outbound::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.clone().into(),
                        })))
                        .await;
                    let _ = closing.send((code, reason));
                    break;
                }
            }
        }
    });
    // Frames queue here and run one invocation at a time, in order.
    let (frames, mut queued) = mpsc::unbounded_channel::<(String, bool)>();
    let invoker = {
        let (gw, facts, tx, id) = (gw.clone(), facts.clone(), tx.clone(), id.clone());
        tokio::spawn(async move {
            while let Some((body, base64)) = queued.recv().await {
                let route = if base64 {
                    "$default".to_owned()
                } else {
                    events::route_of(&body, &gw.routes)
                };
                let Some(f) = gw
                    .functions
                    .get(&route)
                    .or_else(|| gw.functions.get("$default"))
                else {
                    let _ = tx.send(internal_error(&id));
                    continue;
                };
                let event = events::message(&gw.api, &facts, &route, body, base64, now_ms());
                if let Err(e) = f.invoke(event).await {
                    tracing::warn!(connection = %id, route, error = ?e, "invocation failed");
                    let _ = tx.send(internal_error(&id));
                }
            }
        })
    };
    let deadline = tokio::time::sleep(gw.max_connection);
    tokio::pin!(deadline);
    let (code, reason) = loop {
        let read = tokio::select! {
            closed = &mut closed => match closed {
                Ok(close) => break close,
                // The writer ended without a close: the socket failed.
                Err(_) => break (1006, "Connection closed abnormally".to_owned()),
            },
            () = &mut deadline => {
                let _ = tx.send(Outbound::Close(1001, "Going away".into()));
                break (1001, "Going away".to_owned());
            }
            read = tokio::time::timeout(gw.idle_timeout, stream.next()) => read,
        };
        let frame = match read {
            Err(_) => {
                let _ = tx.send(Outbound::Close(1001, "Going away".into()));
                break (1001, "Going away".to_owned());
            }
            Ok(None) => break (1006, "Connection closed abnormally".to_owned()),
            Ok(Some(Err(e))) => {
                if is_too_large(&e) {
                    let _ = tx.send(Outbound::Close(1009, "Message too big".into()));
                    break (1009, "Message too big".to_owned());
                }
                break (1006, "Connection closed abnormally".to_owned());
            }
            Ok(Some(Ok(frame))) => frame,
        };
        last_active.store(now_ms(), Ordering::Relaxed);
        match frame {
            Message::Text(t) => {
                let _ = frames.send((t.to_string(), false));
            }
            Message::Binary(b) => {
                use base64::Engine as _;
                let _ = frames.send((base64::engine::general_purpose::STANDARD.encode(&b), true));
            }
            Message::Close(f) => {
                let (code, reason) =
                    f.map_or((1005, String::new()), |f| (f.code, f.reason.to_string()));
                break (code, reason);
            }
            Message::Ping(_) | Message::Pong(_) => {}
        }
    };
    // No more posts reach it; frames already read still run, then $disconnect.
    let faults = gw.conns().remove(&id).map(|c| c.faults).unwrap_or_default();
    drop(frames);
    drop(tx);
    let _ = writer.await;
    let gw2 = gw.clone();
    tokio::spawn(async move {
        let _ = invoker.await;
        if faults.drop_disconnect {
            tracing::info!(connection = %id, "fault: no $disconnect");
            return;
        }
        if let Some(f) = gw2.functions.get("$disconnect") {
            let event = events::disconnect(&gw2.api, &facts, code, &reason, now_ms());
            if let Err(e) = f.invoke(event).await {
                tracing::warn!(connection = %id, error = ?e, "$disconnect failed");
            }
        }
    });
}

fn internal_error(id: &str) -> Outbound {
    let body = json!({"message": "Internal server error", "connectionId": id, "requestId": events::request_id()});
    Outbound::Frame(Message::Text(body.to_string().into()))
}

/// True when a read error is tungstenite refusing a frame or message over the limits.
fn is_too_large(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// The Management API's error answer: the status, and the type in `x-amzn-ErrorType` and
/// `__type`, which the AWS SDKs read.
fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({"__type": kind, "message": message})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(kind) {
        response.headers_mut().insert("x-amzn-errortype", v);
    }
    response
}

fn gone(id: &str) -> Response {
    aws_error(
        StatusCode::GONE,
        "GoneException",
        &format!("connection {id} is not connected"),
    )
}

/// `POST /{stage}/@connections/{id}`: the body goes to the client as one frame.
async fn post_to_connection(
    State(gw): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_MESSAGE_BYTES {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            &format!("{} bytes: a post is at most 128 KB", body.len()),
        );
    }
    let conns = gw.conns();
    let Some(c) = conns.get(&id) else {
        return gone(&id);
    };
    if let Some(status) = c.faults.post_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return aws_error(status, "InternalServerErrorException", "injected fault");
    }
    let Some(tx) = &c.tx else {
        return gone(&id);
    };
    let frame = match String::from_utf8(body.to_vec()) {
        Ok(text) => Message::Text(text.into()),
        Err(e) => Message::Binary(e.into_bytes().into()),
    };
    match tx.send(Outbound::Frame(frame)) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(_) => gone(&id),
    }
}

/// `GET /{stage}/@connections/{id}`.
async fn get_connection(State(gw): State<Shared>, Path(id): Path<String>) -> Response {
    let conns = gw.conns();
    match conns.get(&id) {
        Some(c) if c.tx.is_some() => axum::Json(json!({
            "connectedAt": rfc3339_ms(c.facts.connected_at),
            "identity": {"sourceIp": c.facts.source_ip, "userAgent": c.facts.user_agent},
            "lastActiveAt": rfc3339_ms(c.last_active.load(Ordering::Relaxed)),
        }))
        .into_response(),
        _ => gone(&id),
    }
}

/// `DELETE /{stage}/@connections/{id}`: closes the connection ($disconnect follows).
async fn delete_connection(State(gw): State<Shared>, Path(id): Path<String>) -> Response {
    let conns = gw.conns();
    match conns.get(&id).and_then(|c| c.tx.as_ref()) {
        Some(tx) => {
            let _ = tx.send(Outbound::Close(1000, String::new()));
            StatusCode::NO_CONTENT.into_response()
        }
        None => gone(&id),
    }
}

/// `POST /_emulator/faults/{id}` `{"postStatus": 500}` / `{"dropDisconnect": true}`.
async fn set_faults(State(gw): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("{e}: send {{\"postStatus\": 500}} and/or {{\"dropDisconnect\": true}}\n"),
            )
                .into_response();
        }
    };
    match gw.conns().get_mut(&id) {
        Some(c) => {
            c.faults = faults;
            StatusCode::NO_CONTENT.into_response()
        }
        None => gone(&id),
    }
}

async fn clear_faults(State(gw): State<Shared>, Path(id): Path<String>) -> Response {
    match gw.conns().get_mut(&id) {
        Some(c) => {
            c.faults = Faults::default();
            StatusCode::NO_CONTENT.into_response()
        }
        None => gone(&id),
    }
}

//! Test helper: a real server on 127.0.0.1:0 with its own data directory, stopped gracefully on
//! [`TestServer::stop`] or when dropped.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the helper"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dynamowave_client::{Client, CompatClient};
use dynamowave_core::ports::Backend;
use dynamowave_server::{ServerConfig, ServerError};
use dynamowave_store_sqlite::SqliteBackend;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(10);

/// The single binary's backend for `config`: the SQLite store in its data directory, under its
/// encryption keys.
pub fn backend(config: &ServerConfig) -> Box<dyn Backend> {
    Box::new(
        SqliteBackend::new(
            config.data_dir.clone(),
            config.encryption.key_files.clone(),
            config.encryption.keys.clone(),
        )
        .with_webhooks(config.hooks.webhook_url.is_some()),
    )
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    // Kept alive for the server's life when the server made its own directory.
    _tempdir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with default settings, less the Internet-facing limits
    /// ([`ServerConfig::unthrottled`]: every client here is 127.0.0.1 and some send fast), in a
    /// fresh temporary directory.
    pub async fn start() -> Self {
        Self::start_with(ServerConfig::unthrottled()).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(dir.path(), config).await;
        server._tempdir = Some(dir);
        server
    }

    /// A server on `data_dir` (which the caller keeps), e.g. to restart on the same data.
    pub async fn start_in(data_dir: &Path, config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServerConfig {
            data_dir: data_dir.to_owned(),
            listen: addr,
            ..config
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let backend = backend(&config);
        let task = tokio::spawn(dynamowave_server::run(listener, config, backend, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data_dir: data_dir.to_owned(),
            stop: Some(stop),
            task: Some(task),
            _tempdir: None,
        }
    }

    pub fn ws_url(&self, name: &str) -> String {
        format!("ws://{}/ws?name={name}", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn v1(&self, name: &str) -> Client {
        Client::connect(&self.ws_url(name)).await.unwrap()
    }

    pub async fn compat(&self) -> CompatClient {
        CompatClient::connect(&format!("ws://{}/ws", self.addr))
            .await
            .unwrap()
    }

    /// Graceful shutdown: waits until the server has closed every socket and committed.
    pub async fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops within the grace period")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.take().map(|s| s.send(()));
    }
}

/// Reads frames until one matches, failing after [`WAIT`]; returns it and what came before.
pub async fn until<F>(
    client: &mut Client,
    mut pred: F,
) -> (
    dynamowave_core::protocol::ServerFrame,
    Vec<dynamowave_core::protocol::ServerFrame>,
)
where
    F: FnMut(&dynamowave_core::protocol::ServerFrame) -> bool,
{
    let mut skipped = Vec::new();
    loop {
        let frame = client.next_within(WAIT).await.expect("a frame in time");
        if pred(&frame) {
            return (frame, skipped);
        }
        skipped.push(frame);
    }
}

/// Reads (and drops) frames until the server closes; returns the close code and reason.
pub async fn closed(client: &mut Client) -> (u16, String) {
    loop {
        match client.next_within(WAIT).await {
            Ok(_) => continue,
            Err(dynamowave_client::ClientError::Closed { code, reason }) => return (code, reason),
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

/// An upgrade request over a bare TCP socket, for the answers a WebSocket client library hides
/// (401, 403, 429, 503 before the upgrade). Returns the status, the head (lower-cased) and the
/// body as JSON (or as a string when it is not JSON). Plain HTTP/1.1: the whole body is read
/// whatever the packets.
pub async fn raw_upgrade(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length || n == 0 {
                    return (head.to_ascii_lowercase(), body.to_owned());
                }
            }
            assert!(n > 0, "the server closed before answering: {text:?}");
        }
    };
    let (head, body) = tokio::time::timeout(WAIT, read).await.unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, head, body)
}

/// `dynamowave_connections_refused_total{reason}` in this process's recorder (shared by every
/// server in the test binary: compare before and after).
pub fn refused_connections(reason: &str) -> u64 {
    let Some(handle) = dynamowave_server::telemetry::prometheus() else {
        return 0;
    };
    let prefix = format!("dynamowave_connections_refused_total{{reason=\"{reason}\"}} ");
    handle
        .render()
        .lines()
        .find_map(|line| {
            line.strip_prefix(&prefix)
                .map(|n| n.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

/// `GET url` through `http`, the body as JSON (the status is the caller's to check).
pub async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

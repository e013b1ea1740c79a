//! Least privilege (issue 6 item 9): the server runs as an unprivileged user with no
//! capabilities, needing nothing but its data directory, as deploy/systemd/dynamowave.service
//! runs it. Needs root to switch users (CI runs as root); elsewhere it says it is skipped.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};

use dynamowave_client::Client;

/// `nobody` on Debian.
const UNPRIVILEGED: u32 = 65534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A field of `/proc/<pid>/status`, e.g. `Uid` or `CapEff`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_server_runs_as_an_unprivileged_user_with_no_capabilities() {
    if !is_root() {
        eprintln!("SKIPPED: switching to an unprivileged user needs root; CI runs this as root");
        return;
    }
    // A directory the unprivileged user can reach, and a data directory only it owns.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();

    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={UNPRIVILEGED}"),
            &format!("--regid={UNPRIVILEGED}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_dynamowave"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("DYNAMOWAVE_MESSAGES_PER_SECOND", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let _server = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .split("ws://")
        .nth(1)
        .and_then(|rest| rest.split("/ws").next())
        .unwrap_or_else(|| {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut err);
            panic!("the unprivileged server did not start: {line:?}\n{err}")
        })
        .to_owned();

    // setpriv exec'd the server in place: the pid is the server's.
    let uids = status_field(pid, "Uid");
    assert!(
        uids.split_whitespace()
            .all(|u| u == UNPRIVILEGED.to_string()),
        "real, effective, saved and fs uid are all {UNPRIVILEGED}: {uids}"
    );
    for caps in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            status_field(pid, caps),
            "0000000000000000",
            "{caps}: no capabilities"
        );
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    // It serves and stores, with nothing but its data directory writable.
    let mut c = Client::connect(&format!("ws://{addr}/ws?name=ann"))
        .await
        .unwrap();
    c.join("lobby", None).await.unwrap();
    let (ack, _) = c.send_and_ack("lobby", "hello", "m1").await.unwrap();
    assert!(
        matches!(ack, dynamowave_core::protocol::ServerFrame::Ack { .. }),
        "{ack:?}"
    );
    let store = data.join("dynamowave.sqlite3");
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), UNPRIVILEGED);
}

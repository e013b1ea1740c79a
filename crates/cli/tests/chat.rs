//! `dynamowave chat` driven through pipes, as a script would: send, receive, `/history`,
//! and surviving a server restart without losing or repeating a message.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::ServerProcess;

const WAIT: Duration = Duration::from_secs(15);

/// A `dynamowave chat` process with its stdin and the lines of its stdout.
struct ChatProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ChatProcess {
    fn start(url: &str, name: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
            .args(["chat", url, "--name", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChatProcess {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Reads lines until one equals `expected`; returns the lines before it.
    fn expect(&self, expected: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) if line == expected => return before,
                Ok(line) => before.push(line),
                Err(e) => panic!("no line {expected:?} ({e}); got {before:?}"),
            }
        }
    }

    /// Closes stdin and waits for a clean exit.
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "chat exited with {status}");
        self.lines.try_iter().collect()
    }
}

impl Drop for ChatProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot script: `printf 'LINES' | dynamowave chat URL --name NAME`.
fn script(url: &str, name: &str, lines: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(["chat", url, "--name", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn send_receive_and_history_through_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let url = format!("ws://{}/ws", server.addr);

    let mut alice = ChatProcess::start(&url, "alice");
    alice.say("hello from alice");
    alice.expect("[#general 1] alice: hello from alice");

    // A one-shot script sends and exits once its line is acked and printed.
    let out = script(&url, "bob", "hi alice\nsecond\nline\n");
    assert!(
        out.ends_with(
            "[#general 2] bob: hi alice\n[#general 3] bob: second\n[#general 4] bob: line\n"
        ),
        "{out}"
    );
    alice.expect("[#general 4] bob: line");

    alice.say("/history 3");
    alice.expect("[#general 2] bob: hi alice");
    alice.expect("[#general 4] bob: line");
    alice.say("/join side");
    alice.say("in another room");
    alice.expect("[#side 1] alice: in another room");
    let rest = alice.finish();
    assert!(rest.is_empty(), "{rest:?}");

    // History on join: a new client sees the last messages of its room first.
    let out = script(&url, "carol", "");
    assert_eq!(
        out,
        "[#general 1] alice: hello from alice\n[#general 2] bob: hi alice\n[#general 3] bob: second\n[#general 4] bob: line\n"
    );
}

#[test]
fn a_restart_loses_nothing_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let listen = common::free_listen_addr();
    let server = ServerProcess::start(dir.path(), &["--listen", &listen], &[]);
    let url = format!("ws://{listen}/ws");

    let mut alice = ChatProcess::start(&url, "alice");
    alice.say("before");
    alice.expect("[#general 1] alice: before");

    server.kill_9();
    // Said while the server is down: kept and sent again, with its id, after the reconnect.
    alice.say("during");
    std::thread::sleep(Duration::from_millis(300));
    let server = ServerProcess::start(dir.path(), &["--listen", &listen], &[]);
    let _ = &server;
    let out = script(&url, "bob", "after\n");
    assert!(out.contains("bob: after"), "{out}");

    // Alice ends up with every message exactly once, in seq order (who got seq 2 depends on
    // how fast alice reconnected).
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            alice
                .lines
                .recv_timeout(WAIT)
                .expect("alice prints both messages"),
        );
    }
    let mut expected = vec!["alice: during", "bob: after"];
    let mut got: Vec<&str> = seen.iter().map(|l| l.split_once("] ").unwrap().1).collect();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "nothing lost: {seen:?}");
    assert!(
        seen[0].starts_with("[#general 2] ") && seen[1].starts_with("[#general 3] "),
        "{seen:?}"
    );
    let rest = alice.finish();
    assert!(rest.is_empty(), "nothing repeated: {rest:?}");
}

#[test]
fn edits_deletions_and_reactions_from_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let url = format!("ws://{}/ws", server.addr);

    let mut alice = ChatProcess::start(&url, "alice");
    alice.say("helo");
    alice.expect("[#general 1] alice: helo");
    let mut bob = ChatProcess::start(&url, "bob");
    bob.expect("[#general 1] alice: helo");

    alice.say("/edit 1 hello");
    bob.expect("[#general 2] alice edited 1: hello");
    bob.say("/react 1 👍");
    alice.expect("[#general 3] bob reacted 👍 on 1 (👍 1)");
    bob.say("/edit 1 not mine");
    alice.say("second");
    alice.expect("[#general 4] alice: second");
    bob.expect("[#general 4] alice: second");
    alice.say("/delete 4");
    bob.expect("[#general 5] message 4 was deleted");
    bob.say("/unreact 1 👍");
    alice.expect("[#general 6] bob took back 👍 on 1 (no reactions)");
    bob.expect("[#general 6] bob took back 👍 on 1 (no reactions)");

    // A newcomer sees messages as they are now (the deleted one not at all).
    let out = script(&url, "carol", "");
    assert_eq!(out, "[#general 1] alice: hello (edited)\n", "{out}");
    let rest = bob.finish();
    assert!(rest.is_empty(), "{rest:?}");
    drop(alice);
}

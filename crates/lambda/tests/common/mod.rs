//! Test helper: a real moto server (DynamoDB and SQS emulator) on a free port, killed on drop.
//!
//! moto comes from PyPI (`moto[server]`, installed by ./test.sh into the repo's venv) and runs
//! through deploy/aws/moto_server.py, which gives its DynamoDB transactions DynamoDB's isolation.
//! Tests skip when it is missing, unless `DYNAMOWAVE_REQUIRE_MOTO=1` (./test.sh sets it), where a
//! missing moto fails them.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the helper"
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dynamowave_lambda::dynamo::Tables;

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

/// A Python with moto installed: `$MOTO_PYTHON`, or the repo's venv.
fn moto_python() -> Option<PathBuf> {
    if let Ok(python) = std::env::var("MOTO_PYTHON") {
        return Some(python.into());
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok()?;
    let venv = cache.join("dynamowave/venv");
    venv.join("bin/moto_server")
        .exists()
        .then(|| venv.join("bin/python"))
}

pub fn moto_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/aws/moto_server.py")
}

impl Moto {
    /// Starts moto, or `None` (the test skips) when it is not installed and not required.
    pub fn start() -> Option<Moto> {
        let Some(python) = moto_python() else {
            assert!(
                std::env::var("DYNAMOWAVE_REQUIRE_MOTO").as_deref() != Ok("1"),
                "moto not found (set MOTO_PYTHON or run ./test.sh, which installs moto[server])"
            );
            eprintln!("skipping: moto_server not found");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .arg(moto_script())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Moto { child, endpoint })
    }

    /// The environment a handler process or an SDK client needs to reach this moto.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }

    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "moto",
            ))
            .load()
            .await
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config().await)
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh set of table names: one per store a test makes.
pub fn fresh_tables() -> Tables {
    static N: AtomicU32 = AtomicU32::new(0);
    Tables::prefixed(&format!(
        "t{}-{}-",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

//! Configuration precedence: defaults < TOML file < DYNAMOWAVE_* environment < flags.

mod common;

use common::ServerProcess;
use dynamowave_client::Client;
use dynamowave_core::protocol::ServerFrame;

async fn max_frame_bytes(server: &ServerProcess) -> usize {
    let c = Client::connect(&server.ws_url("probe")).await.unwrap();
    match c.connected {
        ServerFrame::Connected { limits, .. } => limits.max_frame_bytes,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("dynamowave.toml");
    std::fs::write(&file, "max-frame-bytes = 4096\nmax-message-bytes = 65536\n").unwrap();
    let file = file.to_str().unwrap();

    let server = ServerProcess::start(&data, &[], &[]);
    assert_eq!(max_frame_bytes(&server).await, 32 * 1024, "default");
    drop(server);

    let server = ServerProcess::start(&data, &["--config", file], &[]);
    assert_eq!(max_frame_bytes(&server).await, 4096, "file over default");
    drop(server);

    let env = [("DYNAMOWAVE_MAX_FRAME_BYTES", "8192")];
    let server = ServerProcess::start(&data, &["--config", file], &env);
    assert_eq!(
        max_frame_bytes(&server).await,
        8192,
        "environment over file"
    );
    drop(server);

    let server = ServerProcess::start(
        &data,
        &["--config", file, "--max-frame-bytes", "16384"],
        &env,
    );
    assert_eq!(
        max_frame_bytes(&server).await,
        16384,
        "flag over environment"
    );
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "max-frame-bytes = \"big\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config file") && err.contains("max-frame-bytes"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-message-bytes",
            "10",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-message-bytes must be at least"), "{err}");
}

//! TLS with the real binary: `--tls-cert/--tls-key` print a wss:// address, SIGHUP reloads the
//! certificate (new handshakes get the new one, open connections go on, a bad one is refused
//! and the old one kept), and a certificate that does not load stops the start.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ServerProcess;
use dynamowave_client::protocol::ServerFrame;
use dynamowave_client::{Client, Connector};
use rustls::pki_types::{CertificateDer, ServerName};

const WAIT: Duration = Duration::from_secs(10);

/// A self-signed certificate for 127.0.0.1: (PEM certificate, PEM key, DER certificate).
fn make_cert() -> (String, String, CertificateDer<'static>) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    (
        made.cert.pem(),
        made.signing_key.serialize_pem(),
        made.cert.der().clone(),
    )
}

/// Replaces `path` at once (write aside, rename over), as a certificate renewal tool does.
fn replace(path: &Path, contents: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Trusts exactly `certs`; keeps no TLS sessions, so each connection is a full handshake.
fn trusting(certs: &[&CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add((*cert).clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The certificate a new TLS handshake with the server gets.
async fn peer_certificate(
    addr: &str,
    trust: Arc<rustls::ClientConfig>,
) -> std::io::Result<CertificateDer<'static>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(trust)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

fn sighup(server: &ServerProcess) {
    let sent = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// `dynamowave_tls_reloads_total{result}` from the server's /metrics (plaintext from loopback).
async fn reloads(server: &ServerProcess, result: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("dynamowave_tls_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|n| n.trim().parse().unwrap()))
        .unwrap_or(0)
}

async fn ack_within(client: &mut Client, id: &str) {
    client
        .send_message("general", "still here", id)
        .await
        .unwrap();
    loop {
        match client.next_within(WAIT).await.unwrap() {
            ServerFrame::Ack { id: acked, .. } if acked == id => return,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (first_pem, first_key, first) = make_cert();
    let (second_pem, second_key, second) = make_cert();
    std::fs::write(&cert_path, &first_pem).unwrap();
    std::fs::write(&key_path, &first_key).unwrap();
    let args = [cert_path.to_str().unwrap(), key_path.to_str().unwrap()];
    let server = ServerProcess::start(
        data.path(),
        &["--tls-cert", args[0], "--tls-key", args[1]],
        &[],
    );
    assert!(server.tls, "the first line names a wss:// address");
    let both = trusting(&[&first, &second]);

    // A wss connection made under the first certificate.
    let mut early = Client::connect_with(
        &server.ws_url("early"),
        Some(Connector::Rustls(both.clone())),
    )
    .await
    .unwrap();
    early.join("general", None).await.unwrap();
    ack_within(&mut early, "e1").await;
    assert_eq!(
        peer_certificate(&server.addr, both.clone()).await.unwrap(),
        first
    );

    // Renewed files, then SIGHUP: new handshakes get the second certificate.
    replace(&key_path, &second_key);
    replace(&cert_path, &second_pem);
    sighup(&server);
    let deadline = Instant::now() + WAIT;
    while peer_certificate(&server.addr, both.clone()).await.unwrap() != second {
        assert!(
            Instant::now() < deadline,
            "the certificate was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloads(&server, "ok").await, 1);
    // The early connection goes on; a client trusting only the new certificate connects.
    ack_within(&mut early, "e2").await;
    let mut late = Client::connect_with(
        &server.ws_url("late"),
        Some(Connector::Rustls(trusting(&[&second]))),
    )
    .await
    .unwrap();
    late.join("general", None).await.unwrap();
    ack_within(&mut late, "l1").await;

    // A broken renewal: the reload fails, the second certificate stays, nothing is dropped.
    replace(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    sighup(&server);
    let deadline = Instant::now() + WAIT;
    while reloads(&server, "error").await < 1 {
        assert!(
            Instant::now() < deadline,
            "the failed reload was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        peer_certificate(&server.addr, both.clone()).await.unwrap(),
        second
    );
    ack_within(&mut early, "e3").await;
    ack_within(&mut late, "l2").await;

    assert!(server.terminate(WAIT).success());
}

#[test]
fn a_certificate_that_does_not_load_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (pem, _, _) = make_cert();
    let (_, other_key, _) = make_cert();
    let cert: PathBuf = dir.path().join("tls.crt");
    let key: PathBuf = dir.path().join("tls.key");
    std::fs::write(&cert, pem).unwrap();
    std::fs::write(&key, other_key).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dynamowave"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no address is printed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not fit the key"), "{stderr}");
}

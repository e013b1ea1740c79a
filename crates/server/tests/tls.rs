//! TLS on the listener: wss and https with a certificate made at test time (rcgen), plaintext
//! beside it on the same port, require-tls (loopback plaintext allowed, other addresses refused,
//! checked from a non-loopback address in a network namespace of the test's own), certificate
//! reload, and handshakes that fail or never come.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, WAIT, until};
use dynamowave_client::{Client, CompatClient, Connector};
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;
use dynamowave_server::config::TlsConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for 127.0.0.1, localhost and 198.18.0.1, written as PEM files.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCert {
    fn write(dir: &Path, name: &str) -> Self {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            NON_LOOPBACK.to_string(),
        ])
        .unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        TestCert {
            cert,
            key,
            der: made.cert.der().clone(),
        }
    }

    fn tls_config(&self, require: bool) -> TlsConfig {
        TlsConfig {
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            require,
        }
    }
}

/// A client config (ring provider) trusting exactly `certs`.
fn client_config(certs: &[&CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add((*cert).clone()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn connector(cert: &TestCert) -> Option<Connector> {
    Some(Connector::Rustls(client_config(&[&cert.der])))
}

fn tls_server(config: ServerConfig, cert: &TestCert, require: bool) -> ServerConfig {
    ServerConfig {
        tls: cert.tls_config(require),
        ..config
    }
}

/// TLS over `tcp`, verifying the server as `name`.
async fn tls_connect(
    tcp: TcpStream,
    name: &str,
    trust: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    TlsConnector::from(trust)
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// One HTTP/1.1 request with `Connection: close`; the whole response as text.
async fn http_get(mut io: impl AsyncRead + AsyncWrite + Unpin, path: &str) -> String {
    io.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, io.read_to_end(&mut response))
        .await
        .expect("the response within the wait")
        .ok();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn wss_clients_join_send_and_receive() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write(dir.path(), "server");
    let server =
        TestServer::start_with(tls_server(ServerConfig::unthrottled(), &cert, false)).await;
    let url = |name: &str| format!("wss://127.0.0.1:{}/ws?name={name}", server.addr.port());

    let mut alice = Client::connect_with(&url("alice"), connector(&cert))
        .await
        .unwrap();
    let mut bob = Client::connect_with(&url("bob"), connector(&cert))
        .await
        .unwrap();
    for client in [&mut alice, &mut bob] {
        client.join("general", None).await.unwrap();
        until(client, |f| matches!(f, ServerFrame::Joined { .. })).await;
    }
    alice
        .send_message("general", "over tls", "m1")
        .await
        .unwrap();
    until(&mut alice, |f| matches!(f, ServerFrame::Ack { .. })).await;
    let (frame, _) = until(&mut bob, |f| matches!(f, ServerFrame::Message { .. })).await;
    let ServerFrame::Message(message) = frame else {
        unreachable!()
    };
    assert_eq!(
        (message.user.as_str(), message.data.as_str()),
        ("alice", "over tls")
    );

    // A client that does not trust the certificate gets no connection.
    let untrusted = TestCert::write(dir.path(), "other");
    assert!(
        Client::connect_with(&url("eve"), connector(&untrusted))
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn https_and_plaintext_share_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write(dir.path(), "server");
    let server =
        TestServer::start_with(tls_server(ServerConfig::unthrottled(), &cert, false)).await;

    // A browser offers h2 and http/1.1: the server speaks HTTP/1.1 only, and says so.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut trust = (*client_config(&[&cert.der])).clone();
    trust.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = tls_connect(tcp, "127.0.0.1", Arc::new(trust))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let response = http_get(tls, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#"{"status":"ok"}"#), "{response}");

    // Without require-tls, plaintext on the same port is served as before.
    let body = reqwest::get(server.http("/healthz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, r#"{"status":"ok"}"#);
    let mut compat = CompatClient::connect(&format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    compat.send_message("plain").await.unwrap();
    assert_eq!(compat.next_within(WAIT).await.unwrap(), "plain");
    server.stop().await;
}

#[tokio::test]
async fn require_tls_still_serves_loopback_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write(dir.path(), "server");
    let server = TestServer::start_with(tls_server(ServerConfig::unthrottled(), &cert, true)).await;

    // 127.0.0.1 is loopback: a proxy or tool on the host may still speak plaintext.
    let mut plain = server.v1("local").await;
    plain.join("general", None).await.unwrap();
    until(&mut plain, |f| matches!(f, ServerFrame::Joined { .. })).await;
    let healthz = reqwest::get(server.http("/healthz")).await.unwrap();
    assert_eq!(healthz.status(), 200);

    let url = format!("wss://127.0.0.1:{}/ws?name=secure", server.addr.port());
    let mut secure = Client::connect_with(&url, connector(&cert)).await.unwrap();
    secure.join("general", None).await.unwrap();
    until(&mut secure, |f| matches!(f, ServerFrame::Joined { .. })).await;
    secure.send_message("general", "hi", "s1").await.unwrap();
    let (frame, _) = until(&mut plain, |f| matches!(f, ServerFrame::Message { .. })).await;
    assert!(matches!(frame, ServerFrame::Message(m) if m.data == "hi"));
    server.stop().await;
}

/// An address that is not loopback, given to `lo` inside the test's own network namespace
/// (198.18.0.0/15 is reserved for benchmarking; nothing leaves the namespace).
const NON_LOOPBACK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Runs `f` on a thread in a new, private network namespace whose `lo` also has
/// [`NON_LOOPBACK`]. Sockets made there stay in that namespace wherever they are used later.
/// `None` (with a note) when this machine cannot make one (not root, no `ip`).
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's network namespace;
        // it takes no pointers.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "SKIPPED: cannot make a network namespace ({}); run as root to check require-tls from a non-loopback address",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // Children inherit this thread's namespace.
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", "198.18.0.1/32", "dev", "lo"],
        ] {
            match std::process::Command::new("ip").args(&args).status() {
                Ok(status) if status.success() => {}
                other => {
                    eprintln!("SKIPPED: `ip {}` failed: {other:?}", args.join(" "));
                    return None;
                }
            }
        }
        Some(f())
    })
    .join()
    .unwrap()
}

/// A server on `listener` (made in the namespace); stopped when the sender is dropped.
fn serve_on(
    listener: std::net::TcpListener,
    config: ServerConfig,
    data_dir: &Path,
) -> tokio::sync::oneshot::Sender<()> {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let config = ServerConfig {
        listen: listener.local_addr().unwrap(),
        data_dir: data_dir.to_owned(),
        ..config
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let backend = common::backend(&config);
    tokio::spawn(dynamowave_server::run(listener, config, backend, async {
        let _ = stopped.await;
    }));
    stop
}

fn tokio_stream(tcp: std::net::TcpStream) -> TcpStream {
    tcp.set_nonblocking(true).unwrap();
    TcpStream::from_std(tcp).unwrap()
}

#[tokio::test]
async fn require_tls_refuses_plaintext_from_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write(dir.path(), "server");
    // Two servers in the namespace: one with a certificate, one without (TLS ends at a proxy on
    // the host); both require TLS. Five connections each, opened there (the kernel completes
    // them before the server accepts): four from 198.18.0.1, one from 127.0.0.1.
    let Some((listeners, conns)) = in_private_netns(|| {
        let mut listeners = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..2 {
            let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let outside = SocketAddr::from((NON_LOOPBACK, port));
            let mut these: Vec<_> = (0..4)
                .map(|_| std::net::TcpStream::connect(outside).unwrap())
                .collect();
            these.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
            assert_eq!(these[0].local_addr().unwrap().ip(), NON_LOOPBACK);
            listeners.push(listener);
            conns.push(these);
        }
        (listeners, conns)
    }) else {
        return;
    };
    let [with_cert, without_cert]: [_; 2] = listeners.try_into().unwrap();
    let data = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let _stop_with = serve_on(
        with_cert,
        tls_server(ServerConfig::unthrottled(), &cert, true),
        data[0].path(),
    );
    let _stop_without = serve_on(
        without_cert,
        ServerConfig {
            tls: TlsConfig {
                require: true,
                ..TlsConfig::default()
            },
            ..ServerConfig::unthrottled()
        },
        data[1].path(),
    );
    let refused_before = common::refused_connections("plaintext");
    let trust = client_config(&[&cert.der]);

    for (server, conns) in conns.into_iter().enumerate() {
        let mut conns = conns.into_iter().map(tokio_stream);
        let mut next = || conns.next().unwrap();

        // Plaintext HTTP from 198.18.0.1: a short 400 that says to use TLS, then closed.
        let response = http_get(next(), "/healthz").await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "server {server}: {response}"
        );
        assert!(response.contains("use https:// or wss://"), "{response}");

        // A plaintext WebSocket upgrade from there is refused the same way.
        let upgrade =
            tokio_tungstenite::client_async(format!("ws://{NON_LOOPBACK}/ws?name=plain"), next())
                .await;
        match upgrade {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "server {server}")
            }
            other => panic!("server {server}: expected a 400, got {other:?}"),
        }

        if server == 0 {
            // TLS from the same address is served: https and wss.
            let tls = tls_connect(next(), &NON_LOOPBACK.to_string(), trust.clone())
                .await
                .unwrap();
            let response = http_get(tls, "/healthz").await;
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
                format!("wss://{NON_LOOPBACK}/ws?name=secure"),
                next(),
                None,
                Some(tokio_tungstenite::Connector::Rustls(trust.clone())),
            )
            .await
            .unwrap();
            // Compat mode, as wscat: the message comes back to its sender.
            use futures_util::{SinkExt, StreamExt};
            ws.send(r#"{"action":"sendmessage","data":"from afar"}"#.into())
                .await
                .unwrap();
            let echo = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(echo.to_text().unwrap(), "from afar");
        } else {
            next();
            next();
        }

        // Plaintext from loopback in the same namespace is served.
        let response = http_get(next(), "/healthz").await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "server {server}: {response}"
        );
    }
    assert!(common::refused_connections("plaintext") >= refused_before + 4);
}

#[tokio::test]
async fn certificate_reload_swaps_it_for_new_handshakes_only() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCert::write(dir.path(), "first");
    let data = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: data.path().to_owned(),
        ..tls_server(ServerConfig::unthrottled(), &first, false)
    };
    let backend = common::backend(&config);
    let server = dynamowave_server::Server::open(config, backend)
        .await
        .unwrap();
    let tls = server.tls().expect("TLS is on");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    let second = TestCert::write(dir.path(), "second");
    let both = client_config(&[&first.der, &second.der]);
    let url = format!("wss://127.0.0.1:{}/ws?name=early", addr.port());
    let mut early = Client::connect_with(&url, Some(Connector::Rustls(both.clone())))
        .await
        .unwrap();
    early.join("general", None).await.unwrap();
    until(&mut early, |f| matches!(f, ServerFrame::Joined { .. })).await;

    // A resumed TLS session would carry the certificate of its first handshake: a client that
    // keeps no sessions sees what a new handshake gets.
    let mut fresh = (*both).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let fresh = Arc::new(fresh);
    let peer_cert = |trust: Arc<rustls::ClientConfig>| async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connect(tcp, "127.0.0.1", trust).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(peer_cert(fresh.clone()).await, first.der);

    // The files now hold the second certificate.
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    tls.reload().unwrap();
    assert_eq!(tls.current_certificate(), second.der);
    assert_eq!(peer_cert(fresh.clone()).await, second.der);

    // A file that is not a certificate: the reload fails, the second one stays.
    std::fs::write(&first.cert, "not a certificate").unwrap();
    assert!(tls.reload().is_err());
    std::fs::write(&first.cert, "").unwrap();
    assert!(tls.reload().is_err());
    // A key that does not fit the certificate.
    std::fs::copy(&second.cert, &first.cert).unwrap();
    let stranger = TestCert::write(dir.path(), "stranger");
    std::fs::copy(&stranger.key, &first.key).unwrap();
    let err = tls.reload().unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    assert_eq!(peer_cert(fresh.clone()).await, second.der);

    // The connection made under the first certificate goes on.
    early
        .send_message("general", "still here", "e1")
        .await
        .unwrap();
    let (ack, _) = until(&mut early, |f| matches!(f, ServerFrame::Ack { .. })).await;
    assert!(
        matches!(ack, ServerFrame::Ack { seq, .. } if seq.0 == 1),
        "{ack:?}"
    );

    let _ = stop.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_bad_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write(dir.path(), "server");
    let other = TestCert::write(dir.path(), "other");
    let bad = [
        (cert.cert.clone(), other.key.clone(), "does not fit"),
        (
            dir.path().join("missing.crt"),
            cert.key.clone(),
            "missing.crt",
        ),
        (cert.cert.clone(), cert.cert.clone(), "key"),
    ];
    for (cert_path, key_path, says) in bad {
        let data = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            data_dir: data.path().to_owned(),
            tls: TlsConfig {
                cert: Some(cert_path),
                key: Some(key_path),
                require: false,
            },
            ..ServerConfig::unthrottled()
        };
        let backend = common::backend(&config);
        let err = dynamowave_server::Server::open(config, backend)
            .await
            .err()
            .expect("the server does not start");
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[tokio::test]
async fn failed_and_silent_tls_handshakes_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write(dir.path(), "server");
    let mut config = tls_server(ServerConfig::unthrottled(), &cert, false);
    config.limits.handshake_timeout_ms = 1_000;
    let server = TestServer::start_with(config).await;
    let (tls_errors, timeouts) = (
        common::refused_connections("tls_error"),
        common::refused_connections("handshake_timeout"),
    );

    // Connected, silent: dropped after the handshake timeout (before any peek answer).
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // A TLS handshake started, never finished: dropped too.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();

    // Meanwhile: a TLS record header followed by garbage.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, garbage.read_to_end(&mut buf))
        .await
        .expect("closed")
        .ok();
    // A client whose certificate check fails aborts the handshake: the server counts it too.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let untrusted = TestCert::write(dir.path(), "other");
    assert!(
        tls_connect(tcp, "127.0.0.1", client_config(&[&untrusted.der]))
            .await
            .is_err()
    );

    for (name, tcp) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut [0u8; 64]))
            .await
            .unwrap_or_else(|_| panic!("the {name} client is closed well within {WAIT:?}"));
        assert!(matches!(n, Ok(0) | Err(_)), "{name}: {n:?}");
    }

    // The server counts right after closing: wait for it.
    let settle = tokio::time::Instant::now() + WAIT;
    while common::refused_connections("tls_error") < tls_errors + 2
        || common::refused_connections("handshake_timeout") < timeouts + 2
    {
        assert!(tokio::time::Instant::now() < settle, "refusals counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

//! The accept loop: which connections get in, and how each one is served (TLS or plaintext).
//!
//! For every accepted TCP connection, in this order:
//! 1. **IP lists** (`[access] allow-ips / deny-ips`): checked on the peer address before any TLS
//!    or HTTP work; a refused connection is closed at once, without an answer.
//! 2. `TCP_NODELAY` is set (chat frames are small and latency-bound).
//! 3. With a certificate configured, the first byte is peeked: `0x16` (a TLS handshake record)
//!    starts a TLS handshake, anything else is plaintext HTTP. Without a certificate there is
//!    no peek: everything is plaintext, as before TLS existed. This is decided once per
//!    connection; the plaintext path serves the bare `TcpStream`, with no wrapper per read.
//! 4. **require-tls**: a plaintext connection from a non-loopback address gets a short
//!    `400` telling it to use https/wss, then is closed ([`refuse_plaintext`]).
//! 5. **Handshake timeout** (`[limits] handshake-timeout-ms`): from accept until the headers of
//!    the first request are read (peek and TLS handshake included); later requests on a
//!    keep-alive connection get the same time for their headers.
//! 6. The axum router serves the connection (HTTP/1.1 with upgrades) with
//!    `ConnectInfo<SocketAddr>` in every request's extensions.
//!
//! Every refusal is counted in `dynamowave_connections_refused_total{reason}`.
//!
//! On shutdown the loop stops accepting, connections still in their handshake are dropped,
//! HTTP connections finish their request (idle ones close), and [`serve`] returns when every
//! connection task has ended or the grace period is over. Upgraded WebSocket connections are
//! not the listener's: the hub closes them.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::config::ServerConfig;
use crate::tls::{TlsError, TlsFiles};

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the plaintext refusal says.
const USE_TLS: &str = "this server accepts plaintext only from loopback: use https:// or wss://\n";

/// Why a connection was refused; the `reason` label of `dynamowave_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The peer is in `deny-ips`.
    DenyList,
    /// `allow-ips` is set and the peer is in none of its networks.
    NotAllowed,
    /// Plaintext from a non-loopback peer with `require-tls`.
    Plaintext,
    /// No request headers within `handshake-timeout-ms` of the accept.
    HandshakeTimeout,
    /// The TLS handshake failed.
    TlsError,
}

impl Refused {
    pub const ALL: [Refused; 5] = [
        Refused::DenyList,
        Refused::NotAllowed,
        Refused::Plaintext,
        Refused::HandshakeTimeout,
        Refused::TlsError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::DenyList => "deny_list",
            Refused::NotAllowed => "not_allowed",
            Refused::Plaintext => "plaintext",
            Refused::HandshakeTimeout => "handshake_timeout",
            Refused::TlsError => "tls_error",
        }
    }

    fn count(self) {
        metrics::counter!("dynamowave_connections_refused_total", "reason" => self.label())
            .increment(1);
    }
}

/// `[access] allow-ips / deny-ips`: deny wins; a non-empty allow list admits only its networks.
#[derive(Clone, Debug, Default)]
pub struct IpAccess {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpAccess {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        IpAccess { allow, deny }
    }

    /// Whether `peer` may connect. An IPv4 peer seen on an IPv6 socket (`::ffff:a.b.c.d`) is
    /// checked as the IPv4 address it is.
    pub fn check(&self, peer: IpAddr) -> Result<(), Refused> {
        if self.allow.is_empty() && self.deny.is_empty() {
            return Ok(());
        }
        let peer = peer.to_canonical();
        if self.deny.iter().any(|net| net.contains(&peer)) {
            return Err(Refused::DenyList);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&peer)) {
            return Err(Refused::NotAllowed);
        }
        Ok(())
    }
}

/// `require-tls`: whether a connection is refused for being plaintext. Loopback peers (a
/// TLS-terminating proxy on the same host, local tools) may always use plaintext.
pub fn refuse_plaintext(is_tls: bool, peer: IpAddr, require_tls: bool) -> bool {
    require_tls && !is_tls && !peer.to_canonical().is_loopback()
}

/// Everything the accept loop decides with, built once from the config.
#[derive(Clone, Debug)]
pub struct Gate {
    access: IpAccess,
    require_tls: bool,
    tls: Option<TlsFiles>,
    handshake_timeout: Duration,
}

impl Gate {
    /// Reads the certificate (when `[tls]` names one): a bad one stops the server from starting.
    pub fn new(config: &ServerConfig) -> Result<Self, TlsError> {
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(TlsFiles::load(cert, key)?),
            _ => None,
        };
        Ok(Gate {
            access: IpAccess::new(
                config.access.allow_ips.clone(),
                config.access.deny_ips.clone(),
            ),
            require_tls: config.tls.require,
            tls,
            handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
        })
    }

    /// The certificate files, to reload them (SIGHUP); `None` without TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }
}

/// Accepts connections on `listener` and serves `app` on them until `shutdown` resolves; then
/// stops accepting, lets HTTP connections finish, and returns when every connection task has
/// ended or `grace` has passed. Returns that deadline, for the caller's own waits.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    gate: Gate,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<Instant> {
    metrics::describe_counter!(
        "dynamowave_connections_refused_total",
        "Connections the listener closed before serving a request, by reason: deny_list, \
         not_allowed, plaintext, handshake_timeout, tls_error"
    );
    metrics::describe_counter!(
        "dynamowave_tls_reloads_total",
        "TLS certificate reloads (SIGHUP), by result: ok, error (the old certificate stays)"
    );
    for reason in Refused::ALL {
        metrics::counter!("dynamowave_connections_refused_total", "reason" => reason.label())
            .increment(0);
    }
    let conn = Arc::new(ConnContext {
        acceptor: gate
            .tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.server_config())),
        require_tls: gate.require_tls,
        handshake_timeout: gate.handshake_timeout,
        refusal: Router::new().fallback(|| async {
            (
                StatusCode::BAD_REQUEST,
                [(header::CONNECTION, "close")],
                USE_TLS,
            )
                .into_response()
        }),
        app,
    });
    match (listener.local_addr(), &gate.tls) {
        (Ok(addr), None) if !addr.ip().is_loopback() && !gate.require_tls => tracing::warn!(
            %addr,
            "serving plaintext beyond loopback: give --tls-cert and --tls-key, or end TLS in a \
             proxy on this host and set --require-tls"
        ),
        (Ok(addr), Some(tls)) => tracing::info!(%addr, cert = %tls.cert_path().display(), "TLS on"),
        _ => {}
    }
    let access = gate.access;
    // Each connection task holds a receiver: `closed()` resolves when they have all ended.
    let (drain, draining) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to be freed.
                    tracing::error!(error = %e, "accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        if let Err(refused) = access.check(peer.ip()) {
            refused.count();
            tracing::debug!(%peer, reason = refused.label(), "connection refused");
            drop(tcp);
            continue;
        }
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        tokio::spawn(connection(tcp, peer, conn.clone(), draining.clone()));
    }
    drop(listener);
    let deadline = Instant::now() + grace;
    drop(draining);
    drop(conn);
    drain.send_replace(true);
    if tokio::time::timeout_at(deadline, drain.closed())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the grace period");
    }
    Ok(deadline)
}

/// What every connection task shares.
struct ConnContext {
    acceptor: Option<TlsAcceptor>,
    require_tls: bool,
    handshake_timeout: Duration,
    app: Router,
    /// Answers every request with 400 "use https/wss" (plaintext refused by require-tls).
    refusal: Router,
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection, from the accept to its end (or to its upgrade: a WebSocket then lives in its
/// own task).
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    conn: Arc<ConnContext>,
    mut draining: watch::Receiver<bool>,
) {
    let deadline = Instant::now() + conn.handshake_timeout;
    let Some(acceptor) = &conn.acceptor else {
        return plaintext(tcp, peer, &conn, deadline, draining).await;
    };
    // Waits for the client's first byte without taking it.
    let first = tokio::select! {
        first = tokio::time::timeout_at(deadline, peek_first_byte(&tcp)) => first,
        _ = draining.changed() => return,
    };
    match first {
        Err(_elapsed) => Refused::HandshakeTimeout.count(),
        // Closed (or failed) before sending anything.
        Ok(Err(_) | Ok(None)) => {}
        Ok(Ok(Some(TLS_HANDSHAKE_RECORD))) => {
            let handshake = tokio::select! {
                tls = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => tls,
                _ = draining.changed() => return,
            };
            match handshake {
                Ok(Ok(tls)) => {
                    serve_http(tls, peer, conn.app.clone(), &conn, deadline, draining).await;
                }
                Ok(Err(e)) => {
                    Refused::TlsError.count();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_elapsed) => Refused::HandshakeTimeout.count(),
            }
        }
        Ok(Ok(Some(_))) => plaintext(tcp, peer, &conn, deadline, draining).await,
    }
}

async fn plaintext(
    tcp: TcpStream,
    peer: SocketAddr,
    conn: &ConnContext,
    deadline: Instant,
    draining: watch::Receiver<bool>,
) {
    let app = if refuse_plaintext(false, peer.ip(), conn.require_tls) {
        Refused::Plaintext.count();
        tracing::debug!(%peer, "plaintext refused: TLS is required");
        conn.refusal.clone()
    } else {
        conn.app.clone()
    };
    serve_http(tcp, peer, app, conn, deadline, draining).await;
}

async fn peek_first_byte(tcp: &TcpStream) -> io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    match tcp.peek(&mut byte).await? {
        0 => Ok(None),
        _ => Ok(Some(byte[0])),
    }
}

/// HTTP/1.1 with upgrades on `io` (a `TcpStream` or a TLS stream over one).
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    conn: &ConnContext,
    deadline: Instant,
    mut draining: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Set when the first request's headers have been read: the handshake is over.
    let started = Arc::new(AtomicBool::new(false));
    let service = {
        let started = started.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            started.store(true, Ordering::Relaxed);
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { app.call(request.map(Body::new)).await }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(conn.handshake_timeout);
    let http = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(http);
    let mut handshaking = true;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            served = http.as_mut() => {
                if let Err(e) = served {
                    // hyper's own header timer (the same length) may beat ours to it.
                    if e.is_timeout() && !started.load(Ordering::Relaxed) {
                        Refused::HandshakeTimeout.count();
                    }
                    tracing::trace!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline), if handshaking => {
                handshaking = false;
                if !started.load(Ordering::Relaxed) {
                    Refused::HandshakeTimeout.count();
                    tracing::debug!(%peer, "no request within the handshake timeout");
                    return;
                }
            }
            _ = draining.changed(), if !shutting_down => {
                shutting_down = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn require_tls_refuses_only_non_loopback_plaintext() {
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(
                !refuse_plaintext(false, ip(peer), true),
                "{peer} is loopback"
            );
        }
        for peer in [
            "10.1.2.3",
            "192.168.1.5",
            "203.0.113.9",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(refuse_plaintext(false, ip(peer), true), "{peer} plaintext");
            assert!(!refuse_plaintext(true, ip(peer), true), "{peer} over TLS");
            assert!(
                !refuse_plaintext(false, ip(peer), false),
                "{peer} not required"
            );
        }
    }

    #[test]
    fn ip_lists_deny_wins_and_allow_restricts() {
        let open = IpAccess::default();
        assert_eq!(open.check(ip("203.0.113.9")), Ok(()));

        let deny = IpAccess::new(vec![], nets(&["127.0.0.1/32", "2001:db8::/32"]));
        assert_eq!(deny.check(ip("127.0.0.1")), Err(Refused::DenyList));
        assert_eq!(deny.check(ip("::ffff:127.0.0.1")), Err(Refused::DenyList));
        assert_eq!(deny.check(ip("2001:db8::5")), Err(Refused::DenyList));
        assert_eq!(deny.check(ip("127.0.0.2")), Ok(()));

        let allow = IpAccess::new(nets(&["10.0.0.0/8"]), vec![]);
        assert_eq!(allow.check(ip("10.20.30.40")), Ok(()));
        assert_eq!(allow.check(ip("127.0.0.1")), Err(Refused::NotAllowed));
        assert_eq!(allow.check(ip("::1")), Err(Refused::NotAllowed));

        let both = IpAccess::new(nets(&["10.0.0.0/8"]), nets(&["10.9.0.0/16"]));
        assert_eq!(both.check(ip("10.8.1.1")), Ok(()));
        assert_eq!(
            both.check(ip("10.9.1.1")),
            Err(Refused::DenyList),
            "deny wins"
        );
    }

    #[test]
    fn every_reason_has_its_label() {
        let labels: Vec<_> = Refused::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "deny_list",
                "not_allowed",
                "plaintext",
                "handshake_timeout",
                "tls_error"
            ]
        );
    }
}

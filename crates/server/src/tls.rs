//! TLS for the listener: rustls with the ring provider, and a certificate that can be replaced
//! while the server runs (SIGHUP in `dynamowave serve`).
//!
//! [`TlsFiles::load`] reads the PEM certificate chain and private key named by `[tls]` and builds
//! the [`rustls::ServerConfig`] once. The config resolves its certificate through
//! [`CertResolver`], which holds the current [`CertifiedKey`] behind a lock that is read once per
//! handshake; [`TlsFiles::reload`] re-reads the files and swaps it. A certificate that does not
//! load (unreadable, not PEM, key not matching) leaves the old one in place. Connections already
//! established are not touched: only new handshakes see the new certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {0}: {1}")]
    Cert(PathBuf, String),
    #[error("cannot read the TLS key {0}: {1}")]
    Key(PathBuf, String),
    #[error("the TLS certificate {0} does not fit the key {1}: {2}")]
    Mismatch(PathBuf, PathBuf, rustls::Error),
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

/// The only crypto provider the server uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate new handshakes get; swapped by [`TlsFiles::reload`].
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn replace(&self, key: Arc<CertifiedKey>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = key;
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The `[tls]` files, the server config built on them, and the way to reload them.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<CertResolver>,
    config: Arc<rustls::ServerConfig>,
}

impl TlsFiles {
    /// Reads the certificate chain and key (PEM) and builds the server config: TLS 1.2 and 1.3,
    /// no client certificates, ALPN `http/1.1` (the server speaks HTTP/1.1 only).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = provider();
        let certified = Arc::new(read_certified_key(cert, key, &provider)?);
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(certified),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            resolver,
            config: Arc::new(config),
        })
    }

    /// Re-reads the files; on success new handshakes use the new certificate. On failure the
    /// current certificate stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = read_certified_key(&self.cert, &self.key, &provider())?;
        self.resolver.replace(Arc::new(certified));
        Ok(())
    }

    /// [`TlsFiles::reload`], logged and counted (`dynamowave_tls_reloads_total{result}`).
    pub fn reload_logged(&self) -> bool {
        match self.reload() {
            Ok(()) => {
                metrics::counter!("dynamowave_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                metrics::counter!("dynamowave_tls_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "TLS certificate not reloaded; keeping the current one");
                false
            }
        }
    }

    /// The end-entity certificate new handshakes get (DER).
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        self.resolver.current().cert[0].clone()
    }

    /// The certificate file (as configured).
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

fn read_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert(cert.to_owned(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Cert(
            cert.to_owned(),
            "no CERTIFICATE block in the file".to_owned(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.to_owned(), e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Key(key.to_owned(), e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    // Also parses the end-entity certificate.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e @ rustls::Error::InconsistentKeys(_)) => {
            Err(TlsError::Mismatch(cert.to_owned(), key.to_owned(), e))
        }
        Err(e) => Err(TlsError::Cert(
            cert.to_owned(),
            format!("not a usable certificate ({e})"),
        )),
    }
}

//! TLS for every connection the gateway makes or takes: rustls with the ring provider (no OpenSSL).
//!
//! - Out: [`client`] builds a `reqwest` client that trusts the platform's store, the webpki roots
//!   and, if given, a PEM bundle (`[outbound] ca_file`, `--ca-file`) for private CAs.
//! - In: [`ServerTls`] holds the certificate chain and key of `[server] tls_cert_file` and
//!   `tls_key_file`; [`ServerTls::reload`] swaps in a new pair (all or nothing) while connections
//!   already open keep the one they shook hands with. [`TlsListener`] is an axum listener that
//!   hands each accepted connection to a task of its own for the handshake, so a slow or silent
//!   client never holds up the next one.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::secrets::{read_private, SecretError};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM file of certificates")]
    BadCertificates { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    BadKey { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the key in {key} does not fit the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("ca file {path} holds no usable PEM certificate")]
    BadBundle { path: PathBuf, source: reqwest::Error },
    #[error("cannot build an HTTPS client")]
    Client(#[source] reqwest::Error),
    #[error("{path} holds a certificate that cannot be a CA")]
    BadCa { path: PathBuf, source: rustls::Error },
    #[error("the client CA file {path} cannot check certificates")]
    ClientCa { path: PathBuf, source: rustls::server::VerifierBuilderError },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client for one purpose (chat and tracker, the worker's gateway): rustls, the platform's
/// trust store plus the webpki roots, and the certificates of `ca_file` if given.
pub fn client(builder: reqwest::ClientBuilder, ca_file: Option<&Path>) -> Result<reqwest::Client, TlsError> {
    let mut builder = builder.use_rustls_tls().tls_built_in_root_certs(true);
    if let Some(path) = ca_file {
        for certificate in ca_bundle(path)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(TlsError::Client)
}

/// The certificates of a PEM bundle (at least one).
pub fn ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Unreadable { path: path.to_owned(), source })?;
    let certificates = reqwest::Certificate::from_pem_bundle(&bytes)
        .map_err(|source| TlsError::BadBundle { path: path.to_owned(), source })?;
    if certificates.is_empty() || CertificateDer::pem_slice_iter(&bytes).next().is_none() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certificates)
}

/// The certificate files a gateway serves HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TlsFiles {
    #[schema(value_type = String)]
    pub cert_file: PathBuf,
    #[schema(value_type = String)]
    pub key_file: PathBuf,
}

/// Reads a certificate chain and its private key (the key with the token files' permission
/// checks) into a server configuration, or says which file is wrong.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    serving(files, None)
}

/// [`server_config`] for the node API's own listener: a client certificate from the CA in
/// `clients` is required before anything else (mutual TLS; `[nodes] client_ca_file`).
pub fn node_server_config(files: &TlsFiles, clients: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let bytes = std::fs::read(clients).map_err(|source| TlsError::Unreadable { path: clients.to_owned(), source })?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&bytes) {
        let certificate =
            certificate.map_err(|source| TlsError::BadCertificates { path: clients.to_owned(), source })?;
        roots.add(certificate).map_err(|source| TlsError::BadCa { path: clients.to_owned(), source })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate { path: clients.to_owned() });
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|source| TlsError::ClientCa { path: clients.to_owned(), source })?;
    serving(files, Some(verifier))
}

fn serving(
    files: &TlsFiles,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let TlsFiles { cert_file, key_file } = files;
    let cert_bytes =
        std::fs::read(cert_file).map_err(|source| TlsError::Unreadable { path: cert_file.clone(), source })?;
    let chain = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificates { path: cert_file.clone(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_file.clone() });
    }
    let key_bytes = read_private(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|source| TlsError::BadKey { path: key_file.clone(), source })?;
    let mismatch = |source| TlsError::Mismatch { cert: cert_file.clone(), key: key_file.clone(), source };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(mismatch)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener's configuration: asking for client certificates of `clients` if given.
fn listener_config(files: &TlsFiles, clients: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    match clients {
        Some(ca) => node_server_config(files, ca),
        None => server_config(files),
    }
}

/// The identity the gateway presents, replaceable while it serves; on the node API's own
/// listener, with the CA nodes' certificates must come from.
pub struct ServerTls {
    current: RwLock<(TlsFiles, Arc<rustls::ServerConfig>)>,
    clients: Option<PathBuf>,
}

impl ServerTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(ServerTls { current: RwLock::new((files.clone(), server_config(files)?)), clients: None })
    }

    /// The node API's listener: `clients` (`[nodes] client_ca_file`) makes it require a client
    /// certificate from that CA.
    pub fn load_for_nodes(files: &TlsFiles, clients: Option<PathBuf>) -> Result<Self, TlsError> {
        let config = listener_config(files, clients.as_deref())?;
        Ok(ServerTls { current: RwLock::new((files.clone(), config)), clients })
    }

    /// The configuration new connections get.
    fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()).1)
    }

    pub fn files(&self) -> TlsFiles {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Reads the pair (and the client CA file, if this listener asks for client certificates),
    /// to be put in force with [`ServerTls::replace`] (all or nothing with the tokens reloaded
    /// beside it).
    pub fn prepare(&self, files: &TlsFiles) -> Result<(TlsFiles, Arc<rustls::ServerConfig>), TlsError> {
        Ok((files.clone(), listener_config(files, self.clients.as_deref())?))
    }

    pub fn replace(&self, prepared: (TlsFiles, Arc<rustls::ServerConfig>)) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = prepared;
    }
}

/// An axum listener serving TLS: accepts on its own task, shakes hands on one task per
/// connection, and yields connections that completed their handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: JoinHandle<()>,
}

/// How long and how many TLS handshakes a listener lets run.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    pub timeout: Duration,
    /// Handshakes in flight at most; past that, new connections wait in the kernel's backlog.
    pub in_flight: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits { timeout: HANDSHAKE_TIMEOUT, in_flight: 1024 }
    }
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: Arc<ServerTls>) -> io::Result<Self> {
        TlsListener::with_limits(listener, tls, HandshakeLimits::default())
    }

    /// A listener whose handshakes are bounded in time and number: a connection that never sends
    /// its hello is closed at `limits.timeout`, like an idle plain-HTTP one at the header timeout.
    pub fn with_limits(listener: TcpListener, tls: Arc<ServerTls>, limits: HandshakeLimits) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(listener, tls, tx, limits));
        Ok(TlsListener { ready, local, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    limits: HandshakeLimits,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.in_flight));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&handshakes).acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            _ = ready.closed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = ready.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::error!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let acceptor = TlsAcceptor::from(tls.config());
        let ready = ready.clone();
        tokio::spawn(async move {
            let shaken = tokio::time::timeout(limits.timeout, acceptor.accept(tcp)).await;
            drop(permit);
            match shaken {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %crate::report::chain(&e), "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

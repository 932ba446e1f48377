//! Where the shared log's database is and how it is reached: the connection URL with libpq's
//! `sslmode` and `sslrootcert`, read once when the log is opened.
//!
//! | `sslmode` | the connection |
//! |---|---|
//! | `disable` | plain text |
//! | `require` | TLS; the server's certificate is not checked (as libpq without a root certificate) |
//! | `verify-ca` | TLS; the certificate must chain to a trusted root, whatever name it is for |
//! | `verify-full` | TLS; it must chain to a trusted root and be for the host connected to |
//!
//! Without `sslmode`, a database on this machine (loopback or a Unix socket) is reached in plain
//! text and any other with `verify-full`. `prefer` and `allow`, which fall back to plain text
//! without saying so, are refused. The trusted roots are those of `sslrootcert` (or `[store]
//! ca_file`), else the platform's store and the webpki roots. TLS is rustls with ring, as
//! everywhere else in the gateway.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode as DriverMode};
use tokio_postgres::Client;

use super::pg_failed;
use crate::store::StoreError;

/// How the connection is protected (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, StoreError> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "prefer" | "allow" => Err(StoreError::failed(format!(
                "sslmode={value} falls back to plain text without saying so: use verify-full (or verify-ca, \
                 require), or disable for a database on a network you trust"
            ))),
            other => Err(StoreError::failed(format!(
                "unknown sslmode `{other}`: disable, require, verify-ca or verify-full"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The database, as parsed once: the driver's configuration, the TLS it is reached with and
/// where, for error messages (never the password).
pub struct Target {
    config: tokio_postgres::Config,
    tls: postgres_rustls::MakeTlsConnector,
    mode: SslMode,
    place: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("place", &self.place).field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// The URL without `sslmode` and `sslrootcert` (which the driver does not know in every form),
/// and their values.
fn split_ssl(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root = Some(value.to_owned());
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None, None) };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key, &percent_decode(value))
            })
            .collect();
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, mode, root);
    }
    // `host=… sslmode=…` (values without spaces or quotes).
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            !take(key.trim(), value.trim())
        })
        .collect();
    (kept.join(" "), mode, root)
}

/// `%2F` → `/` (a path in a URL's query).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether every host is this machine.
fn local(config: &tokio_postgres::Config) -> bool {
    config.get_hosts().iter().all(|host| match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    })
}

impl Target {
    /// Reads `url` (with `ca_file` as the roots when the URL names no `sslrootcert`).
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Target, StoreError> {
        let (rest, mode, root) = split_ssl(url);
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| StoreError::caused("the event log's database URL is not one PostgreSQL reads", e))?;
        let mode = match mode {
            Some(mode) => SslMode::parse(&mode)?,
            None if local(&config) => SslMode::Disable,
            None => SslMode::VerifyFull,
        };
        config.ssl_mode(if mode == SslMode::Disable { DriverMode::Disable } else { DriverMode::Require });
        let roots = root.map(PathBuf::from).or_else(|| ca_file.map(Path::to_owned));
        let place = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let tls = client_config(mode, roots.as_deref())?;
        let tls = postgres_rustls::MakeTlsConnector::new(tokio_rustls::TlsConnector::from(Arc::new(tls)));
        Ok(Target { config, tls, mode, place })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Opens a connection and drives it on a task of its own.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(|e| self.failed(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %crate::report::chain(&e), "a connection to the event log's database ended");
            }
        });
        Ok(client)
    }

    /// Opens a connection whose messages (notifications) the caller reads.
    pub async fn connect_raw(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, postgres_rustls::TlsStream<tokio_postgres::Socket>>,
        ),
        StoreError,
    > {
        self.config.connect(self.tls.clone()).await.map_err(|e| self.failed(e))
    }

    /// What failed, where, how, and why to the bottom (`error performing TLS handshake: invalid
    /// peer certificate: UnknownIssuer`).
    fn failed(&self, e: tokio_postgres::Error) -> StoreError {
        let place =
            format!("cannot connect to the event log's database at {} (sslmode={})", self.place, self.mode.as_str());
        if e.as_db_error().is_some() {
            return pg_failed(place, e);
        }
        let message = format!("{place}: {}", crate::report::chain(&e));
        StoreError::Failed { message, source: Some(Arc::new(e)) }
    }
}

/// rustls with ring, trusting `roots` (a PEM bundle) or the platform's and the webpki roots.
fn client_config(mode: SslMode, roots: Option<&Path>) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::caused("cannot set up TLS to the database", e))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        // Never used to verify: the driver is told not to ask for TLS.
        SslMode::Disable | SslMode::Require => Arc::new(AnyCertificate(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let store = root_store(roots)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| StoreError::caused("cannot set up TLS to the database", e))?;
            if mode == SslMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

fn root_store(roots: Option<&Path>) -> Result<RootCertStore, StoreError> {
    let mut store = RootCertStore::empty();
    match roots {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                StoreError::caused(format_args!("cannot read the database's CA file {}", path.display()), e)
            })?;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::caused(format_args!("{} is not a PEM bundle", path.display()), e))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::failed(format!("{} holds no usable CA certificate", path.display())));
            }
        }
        None => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: any certificate (the handshake's signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_either_form_of_url() {
        let (rest, mode, root) =
            split_ssl("postgres://u:p@db.internal:5432/meshgate?sslmode=verify-ca&application_name=mg&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(rest, "postgres://u:p@db.internal:5432/meshgate?application_name=mg");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-ca"), Some("/etc/ca.pem")));
        let (rest, mode, _) = split_ssl("host=db.internal user=u sslmode=require dbname=m");
        assert_eq!((rest.as_str(), mode.as_deref()), ("host=db.internal user=u dbname=m", Some("require")));
        assert_eq!(split_ssl("postgres://u@h/db").0, "postgres://u@h/db");
    }

    #[test]
    fn a_remote_database_is_verified_in_full_unless_the_url_says_otherwise_and_a_local_one_is_plain() {
        let mode = |url: &str| Target::parse(url, None).map(|t| t.mode());
        assert_eq!(mode("postgres://u@db.internal/m").unwrap(), SslMode::VerifyFull);
        assert_eq!(mode("postgres://u@10.0.0.5:6432/m").unwrap(), SslMode::VerifyFull);
        assert_eq!(mode("postgres://u@127.0.0.1:5432/m").unwrap(), SslMode::Disable);
        assert_eq!(mode("postgres://u@localhost/m").unwrap(), SslMode::Disable);
        assert_eq!(mode("postgres://u@[::1]/m").unwrap(), SslMode::Disable);
        assert_eq!(mode("postgres://u@db.internal/m?sslmode=disable").unwrap(), SslMode::Disable);
        assert_eq!(mode("postgres://u@127.0.0.1/m?sslmode=verify-full").unwrap(), SslMode::VerifyFull);
        for refused in ["prefer", "allow", "verify_full"] {
            let e = mode(&format!("postgres://u@db/m?sslmode={refused}")).unwrap_err().to_string();
            assert!(e.contains(refused), "{e}");
        }
        let missing = Target::parse("postgres://u@db/m", Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/ca.pem"), "{missing}");
    }
}

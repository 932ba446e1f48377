//! A throwaway certificate authority for the tests: stand-ins and gateways serve HTTPS with
//! certificates it signs, and the gateway, the worker and the tests' clients trust it only
//! through its CA file, as a deployment with a private CA does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use meshgate::tls::{ServerTls, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber};

pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM), to be trusted through `ca_file`.
    pub ca_file: PathBuf,
    dir: PathBuf,
}

/// The CA shared by the whole test binary.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::new("meshgate test CA"))
}

impl Pki {
    /// A new CA, its files in a folder kept for the life of the test binary (named after its
    /// process; the folders of test binaries that have ended are removed here).
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = kept_dir();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).unwrap();
        Pki { issuer, ca_file, dir }
    }

    /// A server certificate for `localhost` and `127.0.0.1` with this serial: the chain (leaf,
    /// then the CA) and the key, both PEM.
    pub fn leaf(&self, serial: u64) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.distinguished_name.push(DnType::CommonName, format!("meshgate test server {serial}"));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (format!("{}{}", cert.pem(), self.issuer.pem()), key.serialize_pem())
    }

    /// Writes a server certificate's chain and key (mode 0400) into `dir`.
    pub fn write_leaf(&self, dir: &Path, name: &str, serial: u64) -> TlsFiles {
        let (chain, key) = self.leaf(serial);
        let files = TlsFiles { cert_file: dir.join(format!("{name}.crt")), key_file: dir.join(format!("{name}.key")) };
        write_private(&files.cert_file, &chain);
        write_private(&files.key_file, &key);
        files
    }

    /// A server identity for a stand-in.
    pub fn server(&self, serial: u64) -> Arc<ServerTls> {
        let dir = self.dir.join(format!("server-{serial}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Arc::new(ServerTls::load(&self.write_leaf(&dir, "server", serial)).unwrap())
    }
}

/// Replaces a file with `text`, readable by its owner only (a key file's permissions).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
}

/// A client trusting the test CA only through its file, as the gateway's own clients do.
pub fn https_client() -> reqwest::Client {
    meshgate::tls::client(reqwest::Client::builder().tls_info(true), Some(&pki().ca_file)).unwrap()
}

/// The DER of a PEM file's first certificate, to compare with what a server presented.
pub fn first_certificate(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path).unwrap().next().unwrap().unwrap().to_vec()
}

/// The certificate a server presented on the connection that carried `response`.
pub fn presented(response: &reqwest::Response) -> Vec<u8> {
    response.extensions().get::<reqwest::tls::TlsInfo>().and_then(|i| i.peer_certificate()).unwrap().to_vec()
}

/// A folder of this test binary's, `meshgate-test-pki-<pid>-…`, after removing those of processes
/// that no longer run (a static is never dropped, so nothing else removes them).
fn kept_dir() -> PathBuf {
    const PREFIX: &str = "meshgate-test-pki-";
    let root = std::env::temp_dir();
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = root.join(format!("{PREFIX}{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

//! The shared log over TLS to the tests' real PostgreSQL (`ssl = on`, a certificate of the tests'
//! CA): `verify-full` with the CA keeps the store's contract and is encrypted; a certificate of
//! another CA is refused, naming the database; `require` encrypts without checking; a database
//! on this machine is plain unless the URL asks; and a gateway process, its config in another
//! folder than its working directory, serves over it with `[store] ca_file`.

use std::path::Path;
use std::sync::Arc;

use meshgate::store::postgres::{PostgresOptions, PostgresStore, SslMode, Target};
use meshgate::store::EventStore;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::pki::pki;
use crate::postgres::database;
use crate::process::{start, token, write_config};
use crate::store::contract;

/// Whether the connection `target` opens is encrypted, as the server sees it.
async fn encrypted(target: &Target) -> bool {
    let client = target.connect().await.unwrap();
    let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    row.get(0)
}

/// A CA of its own, which signed nothing the server holds.
fn another_ca(dir: &Path) -> std::path::PathBuf {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "not the database's CA");
    let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

#[tokio::test]
async fn the_shared_log_over_verified_tls_keeps_the_contract_and_a_certificate_of_another_ca_is_refused() {
    let url = database().await;
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", pki().ca_file.display());
    let target = Target::parse(&verified, None).unwrap();
    assert_eq!(target.mode(), SslMode::VerifyFull);
    assert!(encrypted(&target).await, "verify-full is encrypted");
    // The whole contract, every connection (writer, readers, tail, lease) over TLS.
    let options = PostgresOptions { ca_file: Some(pki().ca_file.clone()), ..PostgresOptions::default() };
    let store: Arc<dyn EventStore> =
        Arc::new(PostgresStore::open(&format!("{url}?sslmode=verify-full"), options).await.unwrap());
    contract(store).await;

    // Another CA: refused, and the error says where and how.
    let dir = tempfile::tempdir().unwrap();
    let other = another_ca(dir.path());
    let refused = Target::parse(&format!("{url}?sslmode=verify-full"), Some(&other)).unwrap();
    let e = refused.connect().await.unwrap_err().to_string();
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("sslmode=verify-full"), "{e}");
    assert!(e.contains("certificate"), "{e}");
    let options = PostgresOptions { ca_file: Some(other.clone()), ..PostgresOptions::default() };
    assert!(
        PostgresStore::open(&format!("{url}?sslmode=verify-ca"), options).await.is_err(),
        "verify-ca checks the chain"
    );

    // `require` encrypts and checks nothing; loopback without `sslmode` is plain text.
    let required = Target::parse(&format!("{url}?sslmode=require"), Some(&other)).unwrap();
    assert!(encrypted(&required).await);
    let plain = Target::parse(&url, None).unwrap();
    assert_eq!(plain.mode(), SslMode::Disable);
    assert!(!encrypted(&plain).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_on_a_shared_log_reached_over_tls_with_its_configured_ca_file() {
    let url = database().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    std::fs::copy(&pki().ca_file, dir.path().join("db-ca.pem")).unwrap();
    let toml = std::fs::read_to_string(&config).unwrap()
        + &format!("\n[store]\nbackend = \"postgres\"\nurl = \"{url}?sslmode=verify-full\"\nca_file = \"db-ca.pem\"\n");
    std::fs::write(&config, toml).unwrap();
    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let body =
        std::fs::read_to_string(crate::helpers::fixtures().join("youtrack/mob-issueUpdated-state-building.json"))
            .unwrap();
    let answer = reqwest::Client::new()
        .post(gateway.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", token(dir.path(), "webhook.token"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    gateway.stop();

    // The same gateway told another CA does not start, and says why.
    let other = another_ca(dir.path());
    let toml =
        std::fs::read_to_string(&config).unwrap().replace("db-ca.pem", other.file_name().unwrap().to_str().unwrap());
    std::fs::write(&config, toml).unwrap();
    let refused = std::process::Command::new(crate::process::BIN)
        .args(["--config", config.to_str().unwrap(), "serve"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("127.0.0.1") && said.contains("verify-full") && said.contains("certificate"), "{said}");
}

//! The gateway serving HTTPS: the webhook, the read API and a real `meshgate worker` over TLS; a
//! renewed certificate served after SIGHUP while the gateway keeps answering; broken pairs and
//! loose key files refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use meshgate::app::App;
use meshgate::tls::TlsFiles;
use serde_json::Value;

use crate::helpers::*;
use crate::pki::{first_certificate, https_client, pki, presented, write_private};
use crate::process::{launch, start, token};
use crate::workers::{agent, scripts_file, wait_for};

/// A configuration file in `dir/etc` serving HTTPS with `tls/gateway.{crt,key}` (relative to it).
fn https_config(dir: &Path, serial: u64) -> (std::path::PathBuf, TlsFiles) {
    let etc = dir.join("etc");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    test_config(&etc, vec![]); // token files
    let files = pki().write_leaf(&etc.join("tls"), "gateway", serial);
    let toml = std::fs::read_to_string(fixtures().join("config/one-trigger.toml")).unwrap().replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\ntls_cert_file = \"tls/gateway.crt\"\ntls_key_file = \"tls/gateway.key\"",
    );
    let path = etc.join("meshgate.toml");
    std::fs::write(&path, toml).unwrap();
    (path, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_and_the_read_api_answer_over_https_and_links_are_https() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    let files = pki().write_leaf(dir.path(), "gateway", 20);
    config.server.tls_cert_file = Some(files.cert_file.clone());
    config.server.tls_key_file = Some(files.key_file);
    let app = spawn_with(dir, config).await;
    assert!(app.url("").starts_with("https://"));

    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    let read = app.get(&format!("/api/v1/builds/{build}")).await;
    assert_eq!(read.status(), 200);
    assert_eq!(presented(&read), first_certificate(&files.cert_file), "the configured certificate is served");
    let read: Value = read.json().await.unwrap();
    let link = read["log_url"].as_str().unwrap();
    assert!(link.starts_with(&format!("https://{}/api/v1/builds/{build}/log?key=", app.addr)), "{link}");

    // HTTPS only: a plain request gets no answer.
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", app.addr)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test]
async fn a_key_file_others_can_read_or_a_key_of_another_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    let files = pki().write_leaf(dir.path(), "gateway", 21);
    config.server.tls_cert_file = Some(files.cert_file.clone());
    config.server.tls_key_file = Some(files.key_file.clone());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&files.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = format!("{:#}", App::start(&config).await.err().expect("a world-readable key is refused"));
    assert!(refused.contains("gateway.key") && refused.contains("world-readable"), "{refused}");

    write_private(&files.key_file, &pki().leaf(22).1);
    let refused = format!("{:#}", App::start(&config).await.err().expect("a key of another certificate is refused"));
    assert!(refused.contains("does not fit") && refused.contains("gateway.key"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_worker_with_the_ca_file_runs_a_build_from_a_gateway_serving_https() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = https_config(dir.path(), 30);
    let etc = dir.path().join("etc");
    let gw = start(&etc, &["--config", config.to_str().unwrap()], &[]);
    assert_eq!(gw.scheme, "https");
    let scripts = scripts_file(&etc, &[("ios-build", "ok.sh")]);
    let (tx, lines) = mpsc::channel();
    let _agent = agent(&etc, &gw.url(""), "mac-1", "", 1, &scripts, &tx);
    crate::workers::deliver(&gw, &etc, "MOB-7").await;
    let reported = wait_for(&lines, "reported", 1);
    assert!(reported[0].1.ends_with("accepted"), "{reported:?}");

    let builds: Value = https_client()
        .get(gw.url("/api/v1/builds"))
        .bearer_auth(token(&etc, "admin.token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(builds["builds"][0]["state"]["state"], "succeeded", "{builds}");
    gw.stop();
}

/// Waits for `n` lines containing `needle` on the gateway's standard error (read on a thread).
fn said(lines: &mpsc::Receiver<String>, needle: &str) {
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(e) => panic!("the gateway never said `{needle}`: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_sighup_and_a_broken_pair_keeps_the_one_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let (config, files) = https_config(dir.path(), 40);
    let etc = dir.path().join("etc");
    let mut gw = launch(&etc, &["--config", config.to_str().unwrap()], &[("RUST_LOG", "info")], Stdio::piped());
    let stderr = BufReader::new(gw.child.stderr.take().unwrap());
    let (tx, log) = mpsc::channel();
    // Read until the process ends (a reader that stopped early would leave it a closed pipe).
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|line| drop(tx.send(line))));
    let healthz = |client: &reqwest::Client| client.get(gw.url("/healthz")).send();

    let kept_open = https_client();
    let first = healthz(&kept_open).await.unwrap();
    let old = presented(&first);
    assert_eq!(old, first_certificate(&files.cert_file));

    // The renewal replaces both files; SIGHUP puts them in force for new connections.
    let renewed = pki().write_leaf(&etc.join("tls"), "gateway", 41);
    assert_eq!(renewed, files);
    let new = first_certificate(&files.cert_file);
    assert_ne!(new, old);
    let hangup = Command::new("kill").args(["-HUP", &gw.child.id().to_string()]).status().unwrap();
    assert!(hangup.success());
    said(&log, "tokens reloaded");
    assert_eq!(presented(&healthz(&https_client()).await.unwrap()), new, "a new connection gets the renewal");
    let again = healthz(&kept_open).await.unwrap();
    assert_eq!((again.status().as_u16(), presented(&again)), (200, old), "an open connection keeps answering");

    // A certificate with the key of another one is refused, naming the file; the renewal stays.
    write_private(&files.cert_file, &pki().leaf(42).0);
    write_private(&files.key_file, &pki().leaf(43).1);
    let refused = https_client()
        .post(gw.url("/api/v1/tokens/reload"))
        .bearer_auth(token(&etc, "admin.token"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let answer: Value = refused.json().await.unwrap();
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("gateway.key") && message.contains("does not fit"), "{message}");
    said(&log, "reload refused");
    assert_eq!(presented(&healthz(&https_client()).await.unwrap()), new);
    gw.stop();
}

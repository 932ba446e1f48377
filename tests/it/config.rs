//! Loading the configuration file: the sample, paths resolved against its folder, refusals that
//! name the key.

use meshgate::config::{Config, ConfigError, SAMPLE};

#[test]
fn the_sample_config_loads_and_resolves_paths_against_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshgate.toml");
    std::fs::write(&file, SAMPLE).unwrap();
    let config = Config::load(Some(&file)).unwrap();
    assert_eq!(config.triggers, Config::sample_triggers());
    assert_eq!(config.triggers.len(), 1);
    assert_eq!(config.webhook.token_files, [dir.path().join("secrets/webhook.token")]);
    assert_eq!(config.server.data_dir, dir.path().join("meshgate-data"));
    assert_eq!(config.youtrack.bot_login.as_deref(), Some("meshgate-bot"));
}

#[test]
fn bad_values_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[webhook]\npath = \"nope\"\n").unwrap();
    assert!(Config::load(Some(&file)).unwrap_err().to_string().contains("webhook.path"));
    std::fs::write(&file, "[webhook]\nunknown = 1\n").unwrap();
    assert!(Config::load(Some(&file)).unwrap_err().to_string().contains("unknown"));
    std::fs::write(&file, "[[triggers]]\nname = \"a\"\nfield = \"State\"\nto = [\"B\"]\nscript = \"s\"\nlane = \"x\"\ngit_ref = \"main\"\n[[lanes]]\nname = \"default\"\n").unwrap();
    assert!(Config::load(Some(&file)).unwrap_err().to_string().contains("lane `x`"));
    assert!(matches!(Config::load(Some(&dir.path().join("absent.toml"))), Err(ConfigError::Missing(_))));
    // A nodes' CA without the node API's own listener (or without HTTPS) would check nothing.
    std::fs::write(&file, "[nodes]\nclient_ca_file = \"nodes-ca.pem\"\n").unwrap();
    assert!(Config::load(Some(&file)).unwrap_err().to_string().contains("nodes.client_ca_file needs nodes.listen"));
    std::fs::write(&file, "[nodes]\nlisten = \"127.0.0.1:8444\"\nclient_ca_file = \"nodes-ca.pem\"\n").unwrap();
    assert!(Config::load(Some(&file)).unwrap_err().to_string().contains("server.tls_cert_file"));
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:8443\"\n[nodes]\nlisten = \"127.0.0.1:8443\"\n").unwrap();
    assert!(Config::load(Some(&file)).unwrap_err().to_string().contains("nodes.listen must differ"));
    // The older name of the artifacts' days is still read, and wins.
    std::fs::write(&file, "[artifacts]\nkeep_days = 3\n[retention]\nartifacts_days = 30\n").unwrap();
    assert_eq!(Config::load(Some(&file)).unwrap().artifacts_days(), 3);
    std::fs::write(&file, "[artifacts]\nkeep_days = 0\n").unwrap();
    assert!(Config::load(Some(&file)).unwrap_err().to_string().contains("retention.artifacts_days = 0"));
}

#[test]
fn the_build_pool_token_being_rotated_out_is_read_beside_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshgate.toml");
    std::fs::write(&file, "[nodes]\ntoken_file = \"new.token\"\nprevious_token_file = \"old.token\"\n").unwrap();
    let config = Config::load(Some(&file)).unwrap();
    assert_eq!(config.nodes_token_files(), [dir.path().join("new.token"), dir.path().join("old.token")]);
    assert_eq!(config.file.as_deref(), Some(file.as_path()));
}

/// `meshgate config check` on `file`: (succeeded, stdout, stderr).
fn check(file: &std::path::Path) -> (bool, String, String) {
    let output = std::process::Command::new(crate::process::BIN)
        .args(["config", "check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

#[test]
fn config_check_passes_a_good_file_and_prints_it_with_secrets_as_paths_only() {
    let dir = tempfile::tempdir().unwrap();
    let init =
        std::process::Command::new(crate::process::BIN).args(["init", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(init.status.success());
    let secrets = std::fs::metadata(dir.path().join("secrets")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&secrets.permissions()) & 0o777, 0o700, "secrets/ is private");
    let file = dir.path().join("meshgate.toml");
    let slack = "https://hooks.slack.com/services/T0/B0/very-secret-part";
    let mut toml = std::fs::read_to_string(&file).unwrap();
    toml.push_str(&format!("\n[[chat]]\nname = \"team\"\nkind = \"slack_webhook\"\nurl = \"{slack}\"\n"));
    std::fs::write(&file, toml).unwrap();
    let (ok, out, err) = check(&file);
    assert!(ok, "{err}");
    assert!(out.starts_with("# configuration OK"), "{out}");
    // The effective configuration: paths resolved, defaults filled in, TOML that loads again.
    let printed: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(printed["admin"]["token_file"].as_str(), Some(dir.path().join("secrets/admin.token").to_str().unwrap()));
    assert_eq!(printed["nodes"]["lease_seconds"].as_integer(), Some(120));
    // Token values never; an inline webhook URL only as its host, with a warning.
    let token = std::fs::read_to_string(dir.path().join("secrets/webhook.token")).unwrap();
    assert!(!out.contains(token.trim()) && !out.contains("very-secret-part"), "{out}");
    assert!(out.contains("https://hooks.slack.com/… (not shown)"), "{out}");
    assert!(err.contains("warning: chat sink `team`") && err.contains("url_file"), "{err}");
}

#[test]
fn config_check_names_every_broken_key_and_file_and_fails() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshgate.toml");
    let loose = dir.path().join("webhook.token");
    std::fs::write(&loose, "w".repeat(40)).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let short = dir.path().join("youtrack.token");
    std::fs::write(&short, "perm:short").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::write(
        &file,
        "[webhook]\ntoken_files = [\"webhook.token\"]\n\n[youtrack]\nbase_url = \"https://yt.example.com\"\n\
         token_file = \"youtrack.token\"\n\n[server]\ntls_cert_file = \"none.crt\"\ntls_key_file = \"none.key\"\n\n\
         [outbound]\nca_file = \"missing-ca.pem\"\n",
    )
    .unwrap();
    let (ok, out, err) = check(&file);
    assert!(!ok && out.is_empty(), "{out}");
    for expected in [
        "webhook.token_files[0]: secret file",
        "world-readable",
        "youtrack.token_file: token file",
        "server.tls_cert_file / server.tls_key_file: cannot read",
        "none.crt",
        "outbound.ca_file: cannot read",
        "4 problem(s)",
    ] {
        assert!(err.contains(expected), "`{expected}` missing from {err}");
    }

    // A value of the wrong type is named with its key and file before anything is read.
    std::fs::write(&file, "[webhook]\nmax_body_bytes = \"lots\"\n").unwrap();
    let (ok, _, err) = check(&file);
    assert!(!ok && err.contains("webhook.max_body_bytes") && err.contains("meshgate.toml"), "{err}");
}

#[test]
fn the_version_names_what_an_upgrade_may_move() {
    let out = std::process::Command::new(crate::process::BIN).arg("--version").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with(&format!("meshgate {}", env!("CARGO_PKG_VERSION"))), "{said}");
    for (name, version) in meshgate_projections::ProjectionSet::VERSIONS {
        assert!(said.contains(&format!("{name} {version}")), "{said}");
    }
    assert!(
        said.contains("event schema 1") && said.contains("SQLite log layout") && said.contains("PostgreSQL schema")
    );
    assert!(said.contains(&format!("read model: layout {}, ", meshgate::readmodel::LAYOUT)), "{said}");
    // The backends this binary holds (the tests build it with EventStoreDB's).
    let backends = if cfg!(feature = "eventstoredb") { "sqlite, postgres, eventstoredb" } else { "sqlite, postgres" };
    assert!(said.contains(&format!("backends: {backends}\n")), "{said}");
}

#[test]
fn a_wrong_key_or_value_is_named_as_the_file_spells_it_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshgate.toml");
    std::fs::write(&path, "[youtrack]\nbase_ur = \"https://example.youtrack.cloud\"\n").unwrap();
    let e = meshgate::config::Config::load(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("youtrack.base_ur: unknown key `base_ur`") && e.contains("base_url"), "{e}");
    assert!(e.contains(path.to_str().unwrap()) && !e.contains("default."), "{e}");
    std::fs::write(&path, "[server]\nlisten = 8080\n").unwrap();
    let e = meshgate::config::Config::load(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("server.listen: signed int `8080` where socket address is expected"), "{e}");
}

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

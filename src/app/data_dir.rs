//! The gateway's own files in its data dir: the token files it generates where the configuration
//! names none, and the key that signs log and artifact links.

use std::path::PathBuf;

use crate::config::Config;
use crate::secrets::{generate_token_file, private_dir, write_token_file, Token};

/// Generates the default token files under the data dir where they are missing (only for tokens
/// the configuration does not name). Returns the files written.
pub fn generate_missing_default_tokens(config: &Config) -> anyhow::Result<Vec<PathBuf>> {
    private_dir(&config.server.data_dir)?;
    let mut defaults = Vec::new();
    if config.webhook.token_files.is_empty() {
        defaults.push((config.secrets_dir().join("webhook.token"), 0o400));
    }
    if config.admin.token_file.is_none() {
        defaults.push((config.secrets_dir().join("admin.token"), 0o400));
    }
    if config.nodes.token_file.is_none() {
        defaults.push((config.secrets_dir().join("nodes.token"), 0o400));
    }
    let mut written = Vec::new();
    for (path, mode) in defaults {
        if !path.exists() {
            private_dir(&config.secrets_dir())?;
            generate_token_file(&path, mode)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The key per-build log links are signed with, read from its file under the data dir.
///
/// Links were first signed with a key derived from the admin token; so that links made then keep
/// working, the file is created holding the admin token of its first start. From then on it is
/// its own secret: rotating the admin token leaves links alone, and removing the file (then
/// restarting) changes every link.
pub(super) fn log_link_secret(config: &Config, admin_token: &Token) -> anyhow::Result<[u8; 32]> {
    use sha2::Digest;
    let path = config.log_link_key_file();
    if !path.exists() {
        private_dir(&config.secrets_dir())?;
        write_token_file(&path, admin_token.expose(), 0o400)?;
    }
    let key = Token::read(&path)?;
    Ok(sha2::Sha256::new().chain_update(b"meshgate log links\0").chain_update(key.expose()).finalize().into())
}

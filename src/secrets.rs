//! Tokens: read from files with tight permissions, held redacted, compared in constant time.
//!
//! Architecture Invariant: a token value is never logged, echoed or put in an error message. Only
//! file paths and lengths are.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Shortest token accepted; YouTrack's app requires 32 characters as well.
pub const MIN_TOKEN_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("secret file {path} is {problem}; run `chmod 0400 {path}`")]
    LoosePermissions { path: PathBuf, problem: &'static str },
    #[error("token file {path} holds a token of {len} characters; at least {MIN_TOKEN_LEN} are required (`meshgate token generate` makes one)")]
    TooShort { path: PathBuf, len: usize },
    #[error("token file {path} holds the placeholder `secret`; put a real token there (`meshgate token generate`)")]
    Placeholder { path: PathBuf },
    #[error("token file {path} is not valid utf-8")]
    NotText { path: PathBuf },
    #[error("cannot write token file {path}: {source}")]
    Unwritable { path: PathBuf, source: std::io::Error },
    #[error("cannot create {path}")]
    Directory { path: PathBuf, source: std::io::Error },
}

/// A token read from a file.
pub struct Token {
    value: SecretString,
    pub path: PathBuf,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("path", &self.path).field("value", &"[redacted]").finish()
    }
}

impl Token {
    /// Reads a token file, refusing loose permissions, short tokens and the `secret` placeholder.
    pub fn read(path: &Path) -> Result<Token, SecretError> {
        let bytes = read_private(path)?;
        let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText { path: path.to_owned() })?;
        let value = text.trim();
        if value == "secret" {
            return Err(SecretError::Placeholder { path: path.to_owned() });
        }
        if value.chars().count() < MIN_TOKEN_LEN {
            return Err(SecretError::TooShort { path: path.to_owned(), len: value.chars().count() });
        }
        Ok(Token { value: SecretString::from(value.to_owned()), path: path.to_owned() })
    }

    /// Reads every file, or names the first one refused.
    pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Token>, SecretError> {
        paths.iter().map(|path| Token::read(path)).collect()
    }

    /// For sending the token (tests, the worker agent); never for logging.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }
}

/// Reads a file holding a secret (a token, a URL with a key in it, a TLS private key), refusing
/// it if it is group- or world-writable or world-readable.
pub fn read_private(path: &Path) -> Result<Vec<u8>, SecretError> {
    let unreadable = |source| SecretError::Unreadable { path: path.to_owned(), source };
    let mode = fs::metadata(path).map_err(unreadable)?.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(SecretError::LoosePermissions { path: path.to_owned(), problem: "group- or world-writable" });
    }
    if mode & 0o004 != 0 {
        return Err(SecretError::LoosePermissions { path: path.to_owned(), problem: "world-readable" });
    }
    fs::read(path).map_err(unreadable)
}

/// 32 bytes from the operating system's random source, as 64 hex characters: tokens, session ids.
pub fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `dir` (and its parents) readable by its owner only (0700), if it is missing: the data
/// dir and its secrets.
pub fn private_dir(dir: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SecretError::Directory { path: dir.to_owned(), source })?;
    }
    Ok(())
}

/// Writes a fresh 64-hex-character token to `path` with `mode`, replacing any file there.
pub fn generate_token_file(path: &Path, mode: u32) -> Result<(), SecretError> {
    let hex = random_hex()
        .map_err(|e| SecretError::Unwritable { path: path.to_owned(), source: std::io::Error::other(e.to_string()) })?;
    write_token_file(path, &hex, mode)
}

/// Writes `value` as the token in `path` with `mode`, replacing any file there.
pub fn write_token_file(path: &Path, value: &str, mode: u32) -> Result<(), SecretError> {
    let unwritable = |source| SecretError::Unwritable { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(unwritable)?;
    }
    // Write beside the target and rename, so a reader never sees half a token and a read-only
    // (0400) file can be replaced.
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(unwritable)?;
    file.write_all(format!("{value}\n").as_bytes()).map_err(unwritable)?;
    file.sync_all().map_err(unwritable)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(unwritable)?;
    fs::rename(&tmp, path).map_err(unwritable)?;
    Ok(())
}

/// The digests of every live token of one kind; a presented value matches if it equals any. The
/// set can be replaced while requests are being checked (a reload during a rotation).
pub struct TokenSet {
    digests: RwLock<Vec<[u8; 32]>>,
}

impl TokenSet {
    pub fn new(tokens: &[Token]) -> Self {
        TokenSet { digests: RwLock::new(digests(tokens)) }
    }

    /// Constant-time: digests are compared (so length is not leaked) and every token is checked.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut matched = subtle::Choice::from(0);
        for d in self.digests.read().unwrap_or_else(|poisoned| poisoned.into_inner()).iter() {
            matched |= d.ct_eq(&presented);
        }
        matched.into()
    }

    /// Which live token `presented` is (its digest), if it is one: a dashboard session remembers
    /// it and ends when that token is rotated out.
    pub fn identify(&self, presented: &[u8]) -> Option<[u8; 32]> {
        self.verify(presented).then(|| digest(presented))
    }

    /// Whether the token with this digest is still live.
    pub fn holds(&self, token_digest: &[u8; 32]) -> bool {
        let mut matched = subtle::Choice::from(0);
        for d in self.digests.read().unwrap_or_else(|poisoned| poisoned.into_inner()).iter() {
            matched |= d.ct_eq(token_digest);
        }
        matched.into()
    }

    /// From now on, these tokens and no others are live.
    pub fn replace(&self, tokens: &[Token]) {
        *self.digests.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = digests(tokens);
    }
}

fn digests(tokens: &[Token]) -> Vec<[u8; 32]> {
    tokens.iter().map(|t| digest(t.expose().as_bytes())).collect()
}

/// SHA-256, ring's (with the processor's SHA or vector instructions): every webhook takes one.
fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, value: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, value).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn token_files_with_loose_permissions_short_values_or_the_placeholder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = "a".repeat(40);
        assert!(matches!(
            Token::read(&write(dir.path(), "w", &good, 0o620)),
            Err(SecretError::LoosePermissions { .. })
        ));
        assert!(matches!(
            Token::read(&write(dir.path(), "r", &good, 0o604)),
            Err(SecretError::LoosePermissions { .. })
        ));
        assert!(matches!(Token::read(&write(dir.path(), "s", "short", 0o400)), Err(SecretError::TooShort { .. })));
        assert!(matches!(
            Token::read(&write(dir.path(), "p", "secret\n", 0o400)),
            Err(SecretError::Placeholder { .. })
        ));
        assert!(Token::read(&write(dir.path(), "ok", &format!("{good}\n"), 0o440)).is_ok());
    }

    #[test]
    fn generated_tokens_are_64_hex_characters_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets/webhook.token");
        generate_token_file(&path, 0o400).unwrap();
        generate_token_file(&path, 0o400).unwrap();
        let token = Token::read(&path).unwrap();
        assert_eq!(token.expose().len(), 64);
        assert!(token.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn any_live_token_verifies_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let a = Token::read(&write(dir.path(), "a", &"a".repeat(32), 0o400)).unwrap();
        let b = Token::read(&write(dir.path(), "b", &"b".repeat(32), 0o400)).unwrap();
        let set = TokenSet::new(&[a, b]);
        assert!(set.verify("a".repeat(32).as_bytes()));
        assert!(set.verify("b".repeat(32).as_bytes()));
        assert!(!set.verify("a".repeat(31).as_bytes()));
        assert!(!set.verify(b""));
    }
}

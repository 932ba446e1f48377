//! `meshgate store backup DIR` and `meshgate store restore DIR`: a log backed up beside a serving
//! gateway and restored into a new data dir.
//!
//! A backup folder holds the log as it stood at one commit (`events.sqlite`, SQLite's online
//! backup), the log-link key (so links already posted keep working) and `manifest.json`: what
//! wrote it, the last position it holds, and each file's SHA-256. A restore checks all of that,
//! refuses a data dir that already holds a log, and copies the files in; the gateway started there
//! rebuilds the stream index and the read model from the log. A log in PostgreSQL is backed up the
//! same way with PostgreSQL's own tools (`pg_dump` of meshgate's tables into `meshgate.dump`,
//! `pg_restore` into an empty database, [`crate::store::postgres::dump`]); EventStoreDB's with the
//! server's own procedure (docs/operations.md, "Backups").

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, StoreBackend};
use crate::store::sqlite::backup;
use secrecy::ExposeSecret;

const MANIFEST: &str = "manifest.json";
const LOG: &str = "events.sqlite";
const DUMP: &str = "meshgate.dump";
const LINK_KEY: &str = "secrets/log-links.key";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// `meshgate-backup`: what this folder is.
    kind: String,
    meshgate: String,
    backend: String,
    /// The last position the log holds.
    head: u64,
    created_at: chrono::DateTime<chrono::Utc>,
    /// Each file's SHA-256 (hex), by its path in the folder.
    files: std::collections::BTreeMap<String, String>,
}

fn not_eventstoredb(config: &Config) -> anyhow::Result<()> {
    if config.store.backend == StoreBackend::EventStoreDb {
        bail!(
            "an EventStoreDB log is backed up with the server's own procedure (a file copy of a stopped node, \
             or its managed backups): docs/operations.md, \"Backups\""
        );
    }
    Ok(())
}

/// The backend's name in a manifest.
fn backend_name(config: &Config) -> &'static str {
    match config.store.backend {
        StoreBackend::Sqlite => "sqlite",
        StoreBackend::Postgres => "postgres",
        StoreBackend::EventStoreDb => "eventstoredb",
    }
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a backup of the configured log into `dir` (new or empty).
pub async fn run_backup(config: &Config, dir: &Path) -> anyhow::Result<()> {
    not_eventstoredb(config)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty; a backup goes to a new folder", dir.display());
    }
    let log = config.log_path();
    if config.store.backend == StoreBackend::Sqlite && !log.exists() {
        bail!("no event log at {}", log.display());
    }
    crate::secrets::private_dir(dir)?;
    let started = std::time::Instant::now();
    let mut files = std::collections::BTreeMap::new();
    let head = if config.store.backend == StoreBackend::Postgres {
        let url = crate::store::open::url(config)?;
        let head =
            crate::store::postgres::dump::dump(url.expose_secret(), config.store.ca_file.as_deref(), &dir.join(DUMP))
                .await
                .context("cannot dump the event log")?;
        files.insert(DUMP.to_owned(), sha256(&dir.join(DUMP))?);
        head
    } else {
        let head = backup::copy(&log, &dir.join(LOG)).context("cannot copy the event log")?;
        files.insert(LOG.to_owned(), sha256(&dir.join(LOG))?);
        head
    };
    let key = config.log_link_key_file();
    if key.exists() {
        crate::secrets::private_dir(&dir.join("secrets"))?;
        std::fs::copy(&key, dir.join(LINK_KEY)).with_context(|| format!("cannot copy {}", key.display()))?;
        files.insert(LINK_KEY.to_owned(), sha256(&dir.join(LINK_KEY))?);
    }
    let manifest = Manifest {
        kind: "meshgate-backup".into(),
        meshgate: env!("CARGO_PKG_VERSION").into(),
        backend: backend_name(config).into(),
        head,
        created_at: chrono::Utc::now(),
        files,
    };
    std::fs::write(dir.join(MANIFEST), serde_json::to_string_pretty(&manifest)?)?;
    println!("backed up the log up to position {head} into {} in {:.2?}", dir.display(), started.elapsed());
    Ok(())
}

/// Reads and checks the backup in `dir` of a `backend` log: its manifest, each file's checksum,
/// the log itself (SQLite's; a dump is checked by its restore).
fn checked(dir: &Path, backend: &str) -> anyhow::Result<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST))
        .with_context(|| format!("{} is not a meshgate backup (no {MANIFEST})", dir.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .ok()
        .filter(|m: &Manifest| m.kind == "meshgate-backup")
        .with_context(|| format!("{} is not a meshgate backup's manifest", dir.join(MANIFEST).display()))?;
    let main = if backend == "postgres" { DUMP } else { LOG };
    if manifest.backend != backend || !manifest.files.contains_key(main) {
        bail!("{} is a backup of a {} log, not of a {backend} one", dir.display(), manifest.backend);
    }
    for (name, expected) in &manifest.files {
        if name.contains("..") || name.starts_with('/') {
            bail!("the manifest names a file outside the backup: {name}");
        }
        if &sha256(&dir.join(name))? != expected {
            bail!("{} does not match its checksum in the manifest: the backup is damaged", dir.join(name).display());
        }
    }
    if backend == "sqlite" {
        let head = backup::check(&dir.join(LOG))?;
        if head != manifest.head {
            bail!("the backup's log ends at position {head}, its manifest says {}", manifest.head);
        }
    }
    Ok(manifest)
}

/// Restores the backup in `dir` into the configured data dir (SQLite) or database (PostgreSQL),
/// which must hold no log.
pub async fn run_restore(config: &Config, dir: &Path) -> anyhow::Result<()> {
    not_eventstoredb(config)?;
    let manifest = checked(dir, backend_name(config))?;
    if config.store.backend == StoreBackend::Postgres {
        let url = crate::store::open::url(config)?;
        let ca = config.store.ca_file.as_deref();
        let head = crate::store::postgres::dump::restore(url.expose_secret(), ca, &dir.join(DUMP))
            .await
            .context("cannot restore the event log")?;
        if head < manifest.head {
            bail!("the restored log ends at position {head}, before the {} its manifest names", manifest.head);
        }
        restore_link_key(config, &manifest, dir)?;
        println!(
            "restored the log up to position {head} (backed up {} by meshgate {}) into the configured database; \
             each gateway rebuilds its read model at start",
            manifest.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            manifest.meshgate,
        );
        return Ok(());
    }
    let log = config.log_path();
    let derived: Vec<PathBuf> = vec![config.readmodel_path(), log.with_extension("streams")];
    if log.exists() || derived.iter().any(|p| p.exists()) {
        bail!("{} already holds a log; restore into a new data dir", config.server.data_dir.display());
    }
    crate::secrets::private_dir(&config.server.data_dir)?;
    let partial = log.with_extension("sqlite.restoring");
    std::fs::copy(dir.join(LOG), &partial).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &log)?;
    restore_link_key(config, &manifest, dir)?;
    println!(
        "restored the log up to position {} (backed up {} by meshgate {}) into {}; the gateway rebuilds its \
         stream index and read model at start",
        manifest.head,
        manifest.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        manifest.meshgate,
        log.display()
    );
    Ok(())
}

/// The backup's log-link key, where the configuration keeps it (unless one is there already).
fn restore_link_key(config: &Config, manifest: &Manifest, dir: &Path) -> anyhow::Result<()> {
    if manifest.files.contains_key(LINK_KEY) && !config.log_link_key_file().exists() {
        crate::secrets::private_dir(&config.secrets_dir())?;
        let key = std::fs::read_to_string(dir.join(LINK_KEY))?;
        crate::secrets::write_token_file(&config.log_link_key_file(), key.trim(), 0o400)?;
    }
    Ok(())
}

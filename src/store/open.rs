//! The configured event log, opened: the SQLite file in the data dir (which locks it), or a shared
//! log (PostgreSQL, EventStoreDB) with this gateway's read model locked in its data dir.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

#[cfg(feature = "eventstoredb")]
use super::eventstoredb::{EventStoreDbOptions, EventStoreDbStore};
use super::postgres::{PostgresOptions, PostgresStore};
use super::sqlite::{Reader, SqliteStore, WriterOptions};
use super::{EventStore, LogReader, StoreError};
use crate::config::{Config, StoreBackend};
use crate::secrets::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the event log at {path}")]
    Log { path: PathBuf, source: StoreError },
    #[error("cannot open the event log in {backend}")]
    Shared { backend: &'static str, source: StoreError },
    #[error("cannot lock {path}")]
    Lock { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{0} does not hold a UTF-8 URL")]
    NotText(PathBuf),
    #[error("{0} is empty; it should hold the event log's connection URL")]
    EmptyUrl(PathBuf),
    #[error("store.backend = \"{0}\" needs store.url_file (or store.url)")]
    NoUrl(&'static str),
    #[error("the SQLite log is not shared")]
    NotShared,
    #[error("{}", crate::config::EVENTSTOREDB_NOT_BUILT_IN)]
    NotBuiltIn,
}

/// A log and, with a shared log, this gateway's hold on its data dir's read model (the SQLite
/// store holds the log's own lock).
pub struct Opened {
    pub store: Arc<dyn EventStore>,
    pub lock: Option<std::fs::File>,
}

/// Opens the configured event log to append to it.
pub async fn log(config: &Config) -> Result<Opened, OpenError> {
    let max_batch = if config.store.group_commit { config.store.max_batch } else { 1 };
    match config.store.backend {
        StoreBackend::Sqlite => {
            let options = WriterOptions {
                max_batch,
                busy_timeout: Duration::from_millis(config.store.busy_timeout_ms),
                linger: Duration::from_micros(config.store.linger_us),
                ..WriterOptions::default()
            };
            let path = config.log_path();
            let store = SqliteStore::open(&path, options).map_err(|source| OpenError::Log { path, source })?;
            Ok(Opened { store: Arc::new(store), lock: None })
        }
        StoreBackend::Postgres | StoreBackend::EventStoreDb => {
            crate::secrets::private_dir(&config.server.data_dir)?;
            let path = config.readmodel_path();
            let lock = super::sqlite::lock_log(&path).map_err(|source| OpenError::Lock { path, source })?;
            Ok(Opened { store: shared(config, max_batch).await?, lock: Some(lock) })
        }
    }
}

/// Opens the configured shared log (PostgreSQL or EventStoreDB), without the read model's lock:
/// for commands that only read beside running gateways.
pub async fn shared(config: &Config, max_batch: usize) -> Result<Arc<dyn EventStore>, OpenError> {
    let url = url(config)?;
    let lease = Duration::from_secs(config.store_lease_seconds());
    let backend = match config.store.backend {
        StoreBackend::Postgres => "PostgreSQL",
        StoreBackend::EventStoreDb => "EventStoreDB",
        StoreBackend::Sqlite => return Err(OpenError::NotShared),
    };
    let failed = |source| OpenError::Shared { backend, source };
    match config.store.backend {
        StoreBackend::Postgres => {
            let options = PostgresOptions {
                ca_file: config.store.ca_file.clone(),
                max_batch,
                lease,
                renew: lease / 5,
                // The projector is the one follower.
                followed: Some(meshgate_projections::ProjectionSet::projected_types()),
                ..PostgresOptions::default()
            };
            let store = PostgresStore::open(url.expose_secret(), options).await.map_err(failed)?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "eventstoredb")]
        StoreBackend::EventStoreDb => {
            let options = EventStoreDbOptions {
                prefix: config.store.stream_prefix.clone(),
                max_batch,
                max_append_bytes: config.store.max_append_bytes,
                lease,
                renew: lease / 3,
                ..EventStoreDbOptions::default()
            };
            let store = EventStoreDbStore::open(url.expose_secret(), options).await.map_err(failed)?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "eventstoredb"))]
        StoreBackend::EventStoreDb => Err(OpenError::NotBuiltIn),
        StoreBackend::Sqlite => Err(OpenError::NotShared),
    }
}

/// Opens the configured log to read it beside running gateways: the SQLite file as it is, without
/// its lock, or the shared log.
pub async fn reader(config: &Config) -> Result<Arc<dyn LogReader>, OpenError> {
    match config.store.backend {
        StoreBackend::Sqlite => {
            let path = config.log_path();
            let reader = Reader::open(&path).map_err(|source| OpenError::Log { path, source })?;
            Ok(Arc::new(reader))
        }
        StoreBackend::Postgres | StoreBackend::EventStoreDb => {
            let store: Arc<dyn LogReader> = shared(config, 1).await?;
            Ok(store)
        }
    }
}

/// Holds what keeps this data dir's gateway from running (the SQLite log's lock, or the read
/// model's with a shared log), for a command that replaces what the gateway owns.
pub fn hold(config: &Config) -> Result<std::fs::File, OpenError> {
    let path = match config.store.backend {
        StoreBackend::Sqlite => config.log_path(),
        StoreBackend::Postgres | StoreBackend::EventStoreDb => config.readmodel_path(),
    };
    super::sqlite::lock_log(&path).map_err(|source| OpenError::Lock { path, source })
}

/// A shared log's connection URL: from `store.url_file` (checked like a token file) or `store.url`.
pub fn url(config: &Config) -> Result<SecretString, OpenError> {
    if let Some(file) = &config.store.url_file {
        let bytes = crate::secrets::read_private(file)?;
        let url = String::from_utf8(bytes).map_err(|_| OpenError::NotText(file.clone()))?.trim().to_owned();
        if url.is_empty() {
            return Err(OpenError::EmptyUrl(file.clone()));
        }
        return Ok(SecretString::from(url));
    }
    match &config.store.url {
        Some(url) => Ok(SecretString::from(url.clone())),
        None => Err(OpenError::NoUrl(config.store.backend.name())),
    }
}

/// [`reader`], with the archives in `archives` (if any) read beside the live log.
pub async fn reader_with_archives(
    config: &Config,
    archives: Option<&std::path::Path>,
) -> anyhow::Result<Arc<dyn LogReader>> {
    let live = reader(config).await?;
    let Some(dir) = archives else { return Ok(live) };
    let owned = dir.to_owned();
    let merged = tokio::task::spawn_blocking(move || super::archive::WithArchives::open(live, &owned)).await??;
    eprintln!("read {} archived events from {} archive(s) in {}", merged.events, merged.files, dir.display());
    Ok(Arc::new(merged))
}

//! Wiring: open the log, load the secrets, start the projections, build the router, serve.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::http::HeaderName;
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::builds::BuildService;
use crate::config::ChatKind;
use crate::config::{Config, StoreBackend};
use crate::http::{router, AppState, Counters, NodeSettings};
use crate::ingest::IngestService;
use crate::links::LogLinks;
use crate::outbound::{self, Sink, Target};
use crate::projector;
use crate::secrets::{generate_token_file, write_token_file, Token, TokenSet};
use crate::store::eventstoredb::{EventStoreDbOptions, EventStoreDbStore};
use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::sqlite::{SqliteStore, WriterOptions};
use crate::store::EventStore;
use crate::tls::{ServerTls, TlsListener};
use meshgate_domain::notify::Milestone;

/// A running gateway, minus its listener.
pub struct App {
    pub state: Arc<AppState>,
    pub router: Router,
    projector: projector::Follower,
    stop_projector: oneshot::Sender<()>,
    /// The work done once per team of gateways, while this one holds the lease.
    elected: JoinHandle<()>,
    /// Old artifacts removed from this gateway's disk (each gateway keeps the files sent to it).
    retention: JoinHandle<()>,
    /// `GET /metrics` on its own listener, if configured.
    metrics: Option<JoinHandle<()>>,
    /// Where the metrics listener is bound.
    pub metrics_addr: Option<SocketAddr>,
    /// With a shared log: this gateway's hold on its data dir's read model (the SQLite store holds
    /// the log's own lock).
    _lock: Option<std::fs::File>,
}

impl App {
    /// Opens everything the gateway needs; fails with a clear message if anything is amiss.
    pub async fn start(config: &Config) -> anyhow::Result<App> {
        create_private_dir(&config.server.data_dir)?;
        let webhook_tokens = Token::read_all(&config.webhook_token_files())?;
        let admin_tokens = Token::read_all(&config.admin_token_files())?;
        let nodes_tokens = Token::read_all(&config.nodes_token_files())?;
        let log_secret = log_link_secret(config, &admin_tokens[0])?;
        let sinks = outbound_sinks(config)?;
        let sink_milestones = sinks
            .iter()
            .map(|s| (s.name.clone(), Milestone::ALL.into_iter().filter(|m| s.wants(*m)).collect()))
            .collect();
        let tls = match config.tls_files() {
            Some(files) => Some(Arc::new(ServerTls::load(&files).context("cannot serve HTTPS")?)),
            None => None,
        };
        let links = LogLinks::new(&config.public_url(), log_secret);

        let (store, lock) = open_store(config).await?;
        let (stop_projector, stopped) = oneshot::channel::<()>();
        let readmodel = open_readmodel(config)?;
        let (projections, follow) =
            projector::start(Arc::clone(&store), readmodel, outbound::outbox_config(config), async move {
                let _ = stopped.await;
            })
            .await
            .context("cannot load the read model")?;
        let projector = projector::Follower::spawn(follow).context("cannot start the projections' thread")?;

        let state = Arc::new(AppState {
            ingest: IngestService::new(
                Arc::clone(&store),
                config.triggers.clone(),
                config.youtrack.bot_login.clone(),
                config.same_transition(),
            ),
            store: Arc::clone(&store),
            projections,
            webhook_tokens: TokenSet::new(&webhook_tokens),
            admin_tokens: TokenSet::new(&admin_tokens),
            token_header: HeaderName::from_bytes(config.webhook.header.as_bytes())?,
            max_body_bytes: config.webhook.max_body_bytes,
            body_timeout: Duration::from_secs(config.server.body_timeout_seconds),
            lane_priorities: config.lane_priorities(),
            counters: Counters::default(),
            builds: BuildService::new(Arc::clone(&store)),
            nodes_tokens: TokenSet::new(&nodes_tokens),
            lanes: config.lane_rules(),
            nodes: NodeSettings {
                lease: chrono::Duration::seconds(config.nodes.lease_seconds as i64),
                claim_wait: std::time::Duration::from_secs(config.nodes.claim_wait_seconds),
                max_attempts: config.nodes.max_attempts,
                max_log_bytes: config.nodes.max_log_bytes,
            },
            claim_lock: tokio::sync::Mutex::new(()),
            stopping: tokio::sync::watch::channel(false).0,
            logs: Arc::new(crate::files::BuildLogs::new(
                config.files_dir().join("logs"),
                config.nodes.max_log_bytes as u64,
            )),
            artifacts: Arc::new(crate::files::Artifacts::new(
                config.files_dir().join("artifacts"),
                config.nodes.max_artifact_bytes,
            )),
            links: links.clone(),
            tls,
            pagers: config
                .pager
                .routing_key_file
                .as_ref()
                .map(|_| "pager".to_owned())
                .into_iter()
                .chain(config.pager.alert_chat.clone())
                .collect(),
            config_file: config.file.clone(),
            reconciler: reconciler(config, &store)?,
            sessions: Default::default(),
            bad_tokens: crate::http::BadTokens::new(config.webhook.max_bad_tokens_per_minute),
            bad_api_tokens: crate::http::BadTokens::new(config.webhook.max_bad_tokens_per_minute),
            sinks: sink_milestones,
            config: Arc::new(config.clone()),
        });
        let rules = outbound::Rules {
            // The alert channel is the pager's, not a chat path for the paging rule.
            chat_sinks: Arc::new(
                config
                    .chat
                    .iter()
                    .filter(|c| config.pager.alert_chat.as_deref() != Some(c.name.as_str()))
                    .map(|c| c.name.clone())
                    .collect(),
            ),
            tracker: config.youtrack.base_url.as_ref().map(|_| "youtrack".to_owned()),
            pager: config.pager.routing_key_file.is_some() || config.pager.alert_chat.is_some(),
            window: chrono::Duration::seconds(config.outbound.dedupe_window_seconds as i64),
            retry: meshgate_domain::retry::RetryPolicy {
                base: std::time::Duration::from_millis(config.outbound.retry_base_ms),
                cap: std::time::Duration::from_secs(config.outbound.retry_cap_seconds),
                max_wait: std::time::Duration::from_secs(config.outbound.max_wait_seconds),
                max_attempts: 1,
            },
        };
        // One client for every sink (chat, tracker, pager), built once: HTTPS trusting the
        // platform's store, the webpki roots and `[outbound] ca_file`.
        let http = crate::tls::client(
            reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(config.outbound.timeout_seconds))
                .redirect(reqwest::redirect::Policy::none()),
            config.outbound.ca_file.as_deref(),
        )
        .context("cannot build the outbound HTTPS client")?;
        let jobs = crate::elected::Jobs {
            store: Arc::clone(&store),
            projections: state.projections.clone(),
            links,
            rules,
            http,
            sinks: sinks.into_iter().map(Arc::new).collect(),
            reconciler: state.reconciler.clone(),
            config: Arc::clone(&state.config),
        };
        let elected = tokio::spawn(crate::elected::run(jobs, store.leadership(), state.stopping.subscribe()));
        let retention = crate::files::retention::Retention {
            artifacts: Arc::clone(&state.artifacts),
            store: Arc::clone(&store),
            projections: state.projections.clone(),
            keep_days: config.artifacts.keep_days,
        };
        let mut stopping = state.stopping.subscribe();
        let retention = tokio::spawn(retention.run(async move {
            let _ = stopping.wait_for(|s| *s).await;
        }));
        let (metrics, metrics_addr) = match config.metrics.listen.parse::<SocketAddr>() {
            Ok(listen) => match crate::metrics::bind(listen).await {
                Some(listener) => {
                    let addr = listener.local_addr().ok();
                    let serving = crate::metrics::serve(listener, Arc::clone(&state), state.stopping.subscribe());
                    (Some(tokio::spawn(serving)), addr)
                }
                None => (None, None),
            },
            Err(_) => (None, None),
        };
        let router = router(Arc::clone(&state), &config.webhook.path);
        Ok(App { state, router, projector, stop_projector, elected, retention, metrics, metrics_addr, _lock: lock })
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight requests finish and
    /// saves the projections.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let limits = crate::http::serve::ConnectionLimits {
            max_connections: self.state.config.server.max_connections,
            header_timeout: Duration::from_secs(self.state.config.server.header_timeout_seconds),
            idle_timeout: Duration::from_secs(self.state.config.server.idle_timeout_seconds),
        };
        let router = self.router.clone();
        let stopping = self.state.stopping.clone();
        let shutdown = async move {
            shutdown.await;
            // Long polls answer at once, so in-flight requests can drain.
            stopping.send_replace(true);
        };
        use axum::serve::ListenerExt;
        match self.state.tls.clone() {
            Some(tls) => {
                // HTTPS only.
                // A handshake is bounded like a request's head: in time, and in number.
                let handshakes =
                    crate::tls::HandshakeLimits { timeout: limits.header_timeout, in_flight: limits.max_connections };
                let listener = TlsListener::with_limits(listener, tls, handshakes)?;
                crate::http::serve::serve(listener, router, limits, shutdown).await;
            }
            None => {
                // Answers are small and written at once: no waiting for an acknowledgement (Nagle).
                let listener = listener.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
                    }
                });
                crate::http::serve::serve(listener, router, limits, shutdown).await;
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Stops following the log and saves the projections' checkpoints.
    pub async fn stop(self) {
        self.state.stopping.send_replace(true);
        let _ = self.elected.await;
        // The work done once has stopped here: another gateway may take it over now.
        self.state.store.close().await;
        let _ = self.retention.await;
        if let Some(metrics) = self.metrics {
            let _ = metrics.await;
        }
        let _ = self.stop_projector.send(());
        self.projector.join().await;
    }
}

/// Opens the configured event log: the SQLite file in the data dir (which locks it), or the
/// shared PostgreSQL database, with the data dir's read model locked for this gateway.
pub async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn EventStore>, Option<std::fs::File>)> {
    let max_batch = if config.store.group_commit { config.store.max_batch } else { 1 };
    match config.store.backend {
        StoreBackend::Sqlite => {
            let options = WriterOptions {
                max_batch,
                busy_timeout: std::time::Duration::from_millis(config.store.busy_timeout_ms),
                linger: std::time::Duration::from_micros(config.store.linger_us),
                ..WriterOptions::default()
            };
            let store = SqliteStore::open(&config.log_path(), options)
                .with_context(|| format!("cannot open the event log at {}", config.log_path().display()))?;
            Ok((Arc::new(store), None))
        }
        StoreBackend::Postgres | StoreBackend::EventStoreDb => {
            create_private_dir(&config.server.data_dir)?;
            let lock = crate::store::sqlite::lock_log(&config.readmodel_path())?;
            Ok((open_shared(config, max_batch).await?, Some(lock)))
        }
    }
}

/// Opens the configured shared log (PostgreSQL or EventStoreDB), without the read model's lock:
/// for commands that only read beside running gateways.
pub async fn open_shared(config: &Config, max_batch: usize) -> anyhow::Result<Arc<dyn EventStore>> {
    let url = store_url(config)?;
    match config.store.backend {
        StoreBackend::Postgres => {
            let lease = std::time::Duration::from_secs(config.store_lease_seconds());
            let options = PostgresOptions { max_batch, lease, renew: lease / 5, ..PostgresOptions::default() };
            let store = PostgresStore::open(url.expose_secret(), options)
                .await
                .context("cannot open the event log in PostgreSQL")?;
            Ok(Arc::new(store))
        }
        StoreBackend::EventStoreDb => {
            let lease = std::time::Duration::from_secs(config.store_lease_seconds());
            let options = EventStoreDbOptions {
                prefix: config.store.stream_prefix.clone(),
                max_batch,
                max_append_bytes: config.store.max_append_bytes,
                lease,
                renew: lease / 3,
                ..EventStoreDbOptions::default()
            };
            let store = EventStoreDbStore::open(url.expose_secret(), options)
                .await
                .context("cannot open the event log in EventStoreDB")?;
            Ok(Arc::new(store))
        }
        StoreBackend::Sqlite => anyhow::bail!("the SQLite log is not shared"),
    }
}

/// A shared log's connection URL: from `store.url_file` (checked like a token file) or `store.url`.
pub fn store_url(config: &Config) -> anyhow::Result<SecretString> {
    if let Some(file) = &config.store.url_file {
        let bytes = crate::secrets::read_private(file)?;
        let url = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{} does not hold a UTF-8 URL", file.display()))?
            .trim()
            .to_owned();
        if url.is_empty() {
            anyhow::bail!("{} is empty; it should hold the event log's connection URL", file.display());
        }
        return Ok(SecretString::from(url));
    }
    match &config.store.url {
        Some(url) => Ok(SecretString::from(url.clone())),
        None => {
            anyhow::bail!("store.backend = \"{}\" needs store.url_file (or store.url)", config.store.backend.name())
        }
    }
}

/// The read model beside the log (`events.readmodel.sqlite`). The checkpoint file of earlier
/// versions (`events.checkpoints.sqlite`, whole states) is removed: the read model replaces it.
pub fn open_readmodel(config: &Config) -> anyhow::Result<Arc<crate::readmodel::ReadModel>> {
    let log = config.log_path();
    let old = log.with_extension("checkpoints.sqlite");
    for stale in [old.clone(), old.with_extension("sqlite-wal"), old.with_extension("sqlite-shm")] {
        if stale.exists() {
            let _ = std::fs::remove_file(&stale);
        }
    }
    let path = config.readmodel_path();
    let readmodel = crate::readmodel::ReadModel::open(&path)
        .with_context(|| format!("cannot open the read model at {}", path.display()))?;
    Ok(Arc::new(readmodel))
}

/// The reconciler, when `[youtrack] base_url` and `token_file` are set.
pub fn reconciler(
    config: &Config,
    store: &Arc<dyn EventStore>,
) -> anyhow::Result<Option<Arc<crate::reconcile::Reconciler>>> {
    let (Some(base_url), Some(token_file)) = (&config.youtrack.base_url, &config.youtrack.token_file) else {
        return Ok(None);
    };
    let token = secrecy::SecretString::from(Token::read(token_file)?.expose().to_owned());
    let http = crate::tls::client(
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(config.outbound.timeout_seconds))
            .redirect(reqwest::redirect::Policy::none()),
        config.outbound.ca_file.as_deref(),
    )
    .context("cannot build the YouTrack HTTPS client")?;
    let r = &config.reconcile;
    let settings = crate::reconcile::Settings {
        interval: std::time::Duration::from_secs(r.interval_seconds),
        lookback: chrono::Duration::hours(r.lookback_hours.min(24 * 365 * 10) as i64),
        overlap: chrono::Duration::seconds(r.overlap_seconds.min(86_400 * 365) as i64),
        max_activities: r.max_activities_per_sweep,
        same_transition: config.same_transition(),
    };
    Ok(Some(Arc::new(crate::reconcile::Reconciler::new(
        Arc::clone(store),
        crate::youtrack::YouTrack::new(http, base_url, token),
        config.triggers.clone(),
        config.youtrack.bot_login.clone(),
        settings,
    ))))
}

/// The configured outbound sinks, with their secrets read.
pub(crate) fn outbound_sinks(config: &Config) -> anyhow::Result<Vec<Sink>> {
    use crate::outbound::{console, discord, generic, matrix, openclaw, pagerduty, slack, teams, youtrack};
    let secret = |file: &std::path::Path| -> anyhow::Result<String> { Ok(Token::read(file)?.expose().to_owned()) };
    let specs = outbound::specs(config);
    let wants = |name: &str| specs.iter().find(|s| s.name == name).map(|s| s.wants.clone()).unwrap_or_default();
    let mut sinks = Vec::new();
    let consoles = config.chat.iter().filter(|c| c.kind == ChatKind::Console).count();
    for chat in &config.chat {
        let url = match (&chat.url, &chat.url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(file)) => secret(file)?,
            (None, None) if chat.kind == ChatKind::Console => String::new(),
            (None, None) => anyhow::bail!("chat sink `{}` has no url", chat.name),
        };
        let token = || match &chat.token_file {
            Some(file) => secret(file),
            None => anyhow::bail!("chat sink `{}` has no token_file", chat.name),
        };
        let target = match chat.kind {
            ChatKind::Console => {
                Target::Console(console::Console { prefix: (consoles > 1).then(|| chat.name.clone()) })
            }
            ChatKind::Generic => Target::Generic(generic::Hook { url }),
            ChatKind::SlackWebhook => Target::SlackWebhook(slack::Webhook { url }),
            ChatKind::TeamsWorkflow => Target::Teams(teams::Workflow { url }),
            ChatKind::Discord => Target::Discord(discord::Webhook { url }),
            ChatKind::SlackApi => Target::SlackApi(slack::Api {
                api: url,
                channel: chat.channel.clone().unwrap_or_default(),
                token: token()?,
            }),
            ChatKind::Matrix => Target::Matrix(matrix::Room {
                homeserver: url,
                edit_in_place: chat.edit_in_place,
                room_id: chat.room_id.clone().unwrap_or_default(),
                token: token()?,
            }),
            ChatKind::Openclaw => Target::OpenClaw(openclaw::Hook {
                url,
                token: token()?,
                channel: chat.channel.clone().unwrap_or_default(),
                to: chat.to.clone().unwrap_or_default(),
                agent_id: chat.agent_id.clone(),
            }),
        };
        sinks.push(Sink { name: chat.name.clone(), target, max_attempts: chat.max_attempts, wants: wants(&chat.name) });
    }
    if let (Some(base_url), Some(token_file)) = (&config.youtrack.base_url, &config.youtrack.token_file) {
        let previous = match &config.youtrack.previous_token_file {
            Some(file) => {
                let written = std::fs::metadata(token_file)?.modified()?;
                let grace = std::time::Duration::from_secs(config.youtrack.previous_token_grace_minutes * 60);
                Some((secret(file)?, written + grace))
            }
            None => None,
        };
        sinks.push(Sink {
            name: "youtrack".into(),
            target: Target::YouTrack(youtrack::Comments {
                base_url: base_url.clone(),
                token: secret(token_file)?,
                previous,
                comment_on_success: config.youtrack.comment_on_success,
            }),
            max_attempts: config.youtrack.max_attempts,
            wants: wants("youtrack"),
        });
    }
    if let Some(file) = &config.pager.routing_key_file {
        sinks.push(Sink {
            name: "pager".into(),
            target: Target::PagerDuty(pagerduty::Events {
                url: config.pager.url.clone().unwrap_or_else(|| "https://events.pagerduty.com/v2/enqueue".into()),
                routing_key: secret(file)?,
            }),
            max_attempts: config.pager.max_attempts,
            wants: wants("pager"),
        });
    }
    Ok(sinks)
}

/// Generates the default token files under the data dir where they are missing (only for tokens
/// the configuration does not name). Returns the files written.
pub fn generate_missing_default_tokens(config: &Config) -> anyhow::Result<Vec<PathBuf>> {
    create_private_dir(&config.server.data_dir)?;
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
            create_private_dir(&config.secrets_dir())?;
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
fn log_link_secret(config: &Config, admin_token: &Token) -> anyhow::Result<[u8; 32]> {
    use sha2::Digest;
    let path = config.log_link_key_file();
    if !path.exists() {
        create_private_dir(&config.secrets_dir())?;
        write_token_file(&path, admin_token.expose(), 0o400)?;
    }
    let key = Token::read(&path)?;
    Ok(sha2::Sha256::new().chain_update(b"meshgate log links\0").chain_update(key.expose()).finalize().into())
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

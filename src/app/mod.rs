//! A running gateway: [`App::start`] reads its secrets, opens the log and the read model, loads
//! the projections and wires every part ([`wiring`]); [`App::serve`] takes requests until its
//! shutdown resolves; [`App::stop`] ends the background work and saves the projections.

mod data_dir;
mod runtime;
mod wiring;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use data_dir::generate_missing_default_tokens;
pub use runtime::runtime;
pub use wiring::reconciler;

use crate::builds::BuildService;
use crate::config::Config;
use crate::files::Artifacts;
use crate::http::{router, Surfaces};
use crate::links::LogLinks;
use crate::projector::{self, Projections};
use crate::secrets::{Token, TokenSet};
use crate::store::EventStore;
use crate::tls::{ServerTls, TlsListener};

/// What a running gateway hands out: the router's state and the handles it was wired from, for
/// the signal handlers of `meshgate serve` and for tests.
#[derive(Clone)]
pub struct Handles {
    pub surfaces: Surfaces,
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    pub builds: BuildService,
    pub artifacts: Arc<Artifacts>,
}

/// A running gateway, minus its listener.
pub struct App {
    pub handles: Handles,
    pub router: Router,
    config: Arc<Config>,
    /// Turns true when the gateway stops; every part that waits watches it.
    stopping: watch::Sender<bool>,
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
    /// The node API's own listener (`[nodes] listen`), served beside the main one.
    nodes: Option<(TcpListener, Router)>,
    /// With a shared log: this gateway's hold on its data dir's read model (the SQLite store holds
    /// the log's own lock).
    _lock: Option<std::fs::File>,
}

impl App {
    /// Opens everything the gateway needs; fails with a clear message if anything is amiss.
    pub async fn start(config: &Config) -> anyhow::Result<App> {
        crate::secrets::private_dir(&config.server.data_dir)?;
        let webhook_tokens = Token::read_all(&config.webhook_token_files())?;
        let admin_tokens = Token::read_all(&config.admin_token_files())?;
        let nodes_tokens = Token::read_all(&config.nodes_token_files())?;
        let log_secret = data_dir::log_link_secret(config, &admin_tokens[0])?;
        let sinks = crate::outbound::sinks(config)?;
        let tls = match config.tls_files() {
            Some(files) => Some(Arc::new(ServerTls::load(&files).context("cannot serve HTTPS")?)),
            None => None,
        };
        let node_tls = match config.node_tls() {
            Some((files, clients)) => Some(Arc::new(
                ServerTls::load_for_nodes(&files, clients).context("cannot serve the node API over HTTPS")?,
            )),
            None => None,
        };
        // Bound before the log opens, like the main listener: a busy port is a start-up error.
        let node_listener = match config.nodes.listen {
            Some(listen) => Some(
                TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (nodes.listen)"))?,
            ),
            None => None,
        };
        let secrets = wiring::Secrets {
            webhook: Arc::new(TokenSet::new(&webhook_tokens)),
            admin: Arc::new(TokenSet::new(&admin_tokens)),
            nodes: Arc::new(TokenSet::new(&nodes_tokens)),
            tls,
            node_tls,
            links: LogLinks::new(&config.public_url(), log_secret),
            sinks,
        };

        let opened = crate::store::open::log(config).await?;
        let store = opened.store;
        let (stop_projector, stopped) = oneshot::channel::<()>();
        let readmodel = crate::readmodel::open_beside(config)
            .with_context(|| format!("cannot open the read model at {}", config.readmodel_path().display()))?;
        let outbox = crate::outbound::outbox_config(config);
        let (projections, follow) = projector::start(Arc::clone(&store), readmodel, outbox, async move {
            let _ = stopped.await;
        })
        .await
        .context("cannot load the read model")?;
        let projector = projector::Follower::spawn(follow).context("cannot start the projections' thread")?;

        let stopping = watch::channel(false).0;
        let parts = wiring::parts(config, &store, &projections, secrets, &stopping.subscribe())?;
        let elected = tokio::spawn(crate::elected::run(parts.jobs, store.leadership(), stopping.subscribe()));
        let mut stopped = stopping.subscribe();
        let retention = tokio::spawn(parts.retention.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let (metrics, metrics_addr) = match config.metrics.listen.parse::<SocketAddr>() {
            Ok(listen) => match crate::scrape::bind(listen).await {
                Some(listener) => {
                    let addr = listener.local_addr().ok();
                    let serving = crate::scrape::serve(listener, Arc::new(parts.gauges), stopping.subscribe());
                    (Some(tokio::spawn(serving)), addr)
                }
                None => (None, None),
            },
            Err(_) => (None, None),
        };
        let router = match node_listener {
            Some(_) => crate::http::router_without_nodes(parts.surfaces.clone(), &config.webhook.path),
            None => router(parts.surfaces.clone(), &config.webhook.path),
        };
        let nodes = node_listener.map(|listener| (listener, crate::http::node_router(parts.surfaces.clone())));
        let handles =
            Handles { surfaces: parts.surfaces, store, projections, builds: parts.builds, artifacts: parts.artifacts };
        Ok(App {
            handles,
            router,
            config: Arc::new(config.clone()),
            stopping,
            projector,
            stop_projector,
            elected,
            retention,
            metrics,
            metrics_addr,
            nodes,
            _lock: opened.lock,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight requests finish and
    /// saves the projections.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let server = &self.config.server;
        let limits = crate::http::serve::ConnectionLimits {
            max_connections: server.max_connections,
            header_timeout: Duration::from_secs(server.header_timeout_seconds),
            idle_timeout: Duration::from_secs(server.idle_timeout_seconds),
        };
        let router = self.router.clone();
        let nodes = self.nodes.take().map(|(listener, router)| {
            let mut stop = self.stopping.subscribe();
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let tls = self.handles.surfaces.reload.node_tls.clone();
            tokio::spawn(serve_on(listener, tls, router, limits, shutdown))
        });
        let stopping = self.stopping.clone();
        let shutdown = async move {
            shutdown.await;
            // Long polls answer at once, so in-flight requests can drain.
            stopping.send_replace(true);
        };
        serve_on(listener, self.handles.surfaces.reload.tls.clone(), router, limits, shutdown).await?;
        if let Some(nodes) = nodes {
            nodes.await??;
        }
        self.stop().await;
        Ok(())
    }

    /// Where the node API's own listener is bound (`[nodes] listen`), if it has one.
    pub fn node_addr(&self) -> Option<SocketAddr> {
        self.nodes.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Stops following the log and saves the projections' checkpoints.
    pub async fn stop(self) {
        self.stopping.send_replace(true);
        let _ = self.elected.await;
        // The work done once has stopped here: another gateway may take it over now.
        self.handles.store.close().await;
        let _ = self.retention.await;
        if let Some(metrics) = self.metrics {
            let _ = metrics.await;
        }
        let _ = self.stop_projector.send(());
        self.projector.join().await;
    }
}

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown` resolves and the
/// requests in flight are answered.
async fn serve_on(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    limits: crate::http::serve::ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    match tls {
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
    Ok(())
}

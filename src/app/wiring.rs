//! What a gateway is made of, from its configuration: every surface's state, the work done once
//! per team of gateways, artifact retention and the gauges Prometheus scrapes. Nothing here runs;
//! [`super::App`] starts and stops it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderName;
use meshgate_domain::notify::Milestone;
use secrecy::SecretString;
use tokio::sync::watch;

use crate::builds::BuildService;
use crate::config::Config;
use crate::files::retention::Retention;
use crate::files::{Artifacts, BuildLogs};
use crate::http::access::Access;
use crate::http::api::AdminApi;
use crate::http::nodes::{NodeApi, NodeSettings};
use crate::http::reload::{OutboundSecrets, Reloadable};
use crate::http::slack::{SlackActions, SlackSink};
use crate::http::webhook::Webhook;
use crate::http::{BadTokens, Counters, Health, Surfaces};
use crate::ingest::IngestService;
use crate::links::LogLinks;
use crate::outbound::{self, Sink};
use crate::projector::Projections;
use crate::reconcile::Reconciler;
use crate::secrets::{Token, TokenSet};
use crate::store::EventStore;
use crate::tls::ServerTls;

/// The parts of a gateway, wired and not yet started.
pub(super) struct Parts {
    pub surfaces: Surfaces,
    pub builds: BuildService,
    pub artifacts: Arc<Artifacts>,
    pub jobs: crate::elected::Jobs,
    pub retention: Retention,
    pub gauges: crate::scrape::Gauges,
}

/// What a gateway reads from its secret files before it wires anything.
pub(super) struct Secrets {
    /// The token sets in force, each shared by the surface that checks it and the reload.
    pub webhook: Arc<TokenSet>,
    pub admin: Arc<TokenSet>,
    pub nodes: Arc<TokenSet>,
    /// The certificate HTTPS is served with (none: plain HTTP).
    pub tls: Option<Arc<ServerTls>>,
    /// The node API's own listener's TLS (`[nodes] listen` on an HTTPS gateway).
    pub node_tls: Option<Arc<ServerTls>>,
    /// Links to logs and artifacts, signed with the data dir's key.
    pub links: LogLinks,
    /// Every outbound sink with its secrets.
    pub sinks: Vec<Sink>,
}

/// Wires every part of a gateway over an opened log and its projections.
pub(super) fn parts(
    config: &Config,
    store: &Arc<dyn EventStore>,
    projections: &Projections,
    secrets: Secrets,
    stopping: &watch::Receiver<bool>,
) -> anyhow::Result<Parts> {
    let Secrets { webhook: webhook_tokens, admin: admin_tokens, nodes: nodes_tokens, tls, node_tls, links, sinks } =
        secrets;
    let config = Arc::new(config.clone());
    let builds = BuildService::new(Arc::clone(store));
    let ingest = Arc::new(IngestService::new(
        Arc::clone(store),
        config.triggers.clone(),
        config.youtrack.bot_login.clone(),
        config.same_transition(),
    ));
    let reconciler = reconciler(&config, store)?;
    let logs = Arc::new(BuildLogs::new(config.files_dir().join("logs"), config.nodes.max_log_bytes as u64));
    let artifacts = Arc::new(Artifacts::new(config.files_dir().join("artifacts"), config.nodes.max_artifact_bytes));
    let counters = Arc::new(Counters::default());
    let polls = Arc::new(crate::polls::Polls::new(Duration::from_secs(config.nodes.claim_wait_seconds)));
    // One client for every outbound call (chat, tracker, pager, Slack's answers, Matrix rooms).
    let http = outbound::client(&config).context("cannot build the outbound HTTPS client")?;
    let lanes: Vec<_> = config.watched_lanes().into_iter().map(|(rule, _)| rule).collect();
    // What holds an outbound secret, shared with the reload that replaces them.
    let sinks: Vec<Arc<Sink>> = sinks.into_iter().map(Arc::new).collect();
    let followers = followers(&config, &http)?;
    let slack = Arc::new(SlackActions::new(
        SlackSink::configured(&config)?,
        Arc::clone(store),
        projections.clone(),
        http.clone(),
    ));
    let sink_milestones =
        sinks.iter().map(|s| (s.name.clone(), Milestone::ALL.into_iter().filter(|m| s.wants(*m)).collect())).collect();

    let sources =
        Arc::new(crate::http::client::Sources::new(&config.server.trusted_proxies, &config.webhook.allowed_sources));
    let surfaces = Surfaces {
        webhook: Arc::new(Webhook {
            sources: Arc::clone(&sources),
            ingest: Arc::clone(&ingest),
            tokens: Arc::clone(&webhook_tokens),
            token_header: HeaderName::from_bytes(config.webhook.header.as_bytes())?,
            max_body_bytes: config.webhook.max_body_bytes,
            body_timeout: Duration::from_secs(config.server.body_timeout_seconds),
            counters: Arc::clone(&counters),
            bad_tokens: BadTokens::new(config.webhook.max_bad_tokens_per_minute),
        }),
        nodes: Arc::new(NodeApi {
            store: Arc::clone(store),
            projections: projections.clone(),
            builds: builds.clone(),
            tokens: Arc::clone(&nodes_tokens),
            lanes: config.lane_rules(),
            settings: NodeSettings {
                lease: chrono::Duration::seconds(config.nodes.lease_seconds as i64),
                claim_wait: Duration::from_secs(config.nodes.claim_wait_seconds),
                max_attempts: config.nodes.max_attempts,
                max_log_bytes: config.nodes.max_log_bytes,
            },
            claim_lock: tokio::sync::Mutex::new(()),
            stopping: stopping.clone(),
            logs: Arc::clone(&logs),
            artifacts: Arc::clone(&artifacts),
            links: links.clone(),
            polls: Arc::clone(&polls),
        }),
        admin: Arc::new(AdminApi {
            store: Arc::clone(store),
            projections: projections.clone(),
            builds: builds.clone(),
            ingest,
            reconciler: reconciler.clone(),
            links: links.clone(),
            // Every lane a build can be in, configured or named by a trigger only (`default`).
            lanes: lanes.clone(),
            polls: Arc::clone(&polls),
            sinks: sink_milestones,
            config: Arc::clone(&config),
            stopping: stopping.clone(),
        }),
        access: Arc::new(Access::new(
            Arc::clone(&admin_tokens),
            tls.is_some(),
            links.derived_key(b"dashboard sessions"),
        )),
        health: Arc::new(Health {
            store: Arc::clone(store),
            projections: projections.clone(),
            counters,
            pagers: outbound::pagers(&config),
            reconciler: reconciler.clone(),
        }),
        reload: Arc::new(Reloadable {
            config_file: config.file.clone(),
            webhook: webhook_tokens,
            admin: admin_tokens,
            nodes: nodes_tokens,
            tls,
            node_tls,
            outbound: OutboundSecrets {
                sinks: sinks.clone(),
                slack: Arc::clone(&slack),
                followers: followers.clone(),
                reconciler: reconciler.clone(),
            },
        }),
        slack: Arc::clone(&slack),
        bad_api_tokens: Arc::new(BadTokens::new(config.webhook.max_bad_tokens_per_minute)),
        sources: Arc::clone(&sources),
    };
    let gauges = crate::scrape::Gauges {
        store: Arc::clone(store),
        projections: projections.clone(),
        lanes,
        polls: Arc::clone(&polls),
        sinks: sinks.iter().map(|s| s.name.clone()).collect(),
    };
    let jobs = crate::elected::Jobs {
        store: Arc::clone(store),
        projections: projections.clone(),
        links,
        rules: outbound::rules(&config),
        http: http.clone(),
        sinks,
        reconciler,
        max_attempts: config.nodes.max_attempts,
        followers,
        lane_watch: Arc::new(crate::lane_watch::LaneWatch::new(
            projections.clone(),
            Arc::clone(&polls),
            config.watched_lanes(),
        )),
        max_queue: config
            .lanes
            .iter()
            .filter_map(|l| {
                Some((
                    l.name.clone(),
                    chrono::Duration::seconds(l.max_queue_seconds?.min(i64::MAX as u64 / 1000) as i64),
                ))
            })
            .collect(),
    };
    let retention = Retention {
        logs: Arc::clone(&logs),
        artifacts: Arc::clone(&artifacts),
        store: Arc::clone(store),
        projections: projections.clone(),
        build_logs_days: config.retention.build_logs_days,
        artifacts_days: config.artifacts_days(),
    };
    Ok(Parts { surfaces, builds, artifacts, jobs, retention, gauges })
}

/// The `matrix` sinks whose rooms are followed for reactions (someone is allowed to act).
fn followers(config: &Config, http: &reqwest::Client) -> anyhow::Result<Vec<Arc<crate::reactions::Follower>>> {
    let mut followers = Vec::new();
    for chat in config.chat.iter().filter(|c| c.kind == crate::config::ChatKind::Matrix && !c.allowed_users.is_empty())
    {
        let (Some(room_id), Some(token)) = (&chat.room_id, &chat.token_file) else { continue };
        let homeserver = match (&chat.url, &chat.url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(file)) => Token::read(file)?.expose().to_owned(),
            (None, None) => continue,
        };
        followers.push(Arc::new(crate::reactions::Follower {
            sink: chat.name.clone(),
            homeserver,
            room_id: room_id.clone(),
            token: std::sync::RwLock::new(Token::read(token)?.expose().to_owned()),
            allowed_users: chat.allowed_users.clone(),
            http: http.clone(),
        }));
    }
    Ok(followers)
}

/// The reconciler, when `[youtrack] base_url` and `token_file` are set.
pub fn reconciler(config: &Config, store: &Arc<dyn EventStore>) -> anyhow::Result<Option<Arc<Reconciler>>> {
    let (Some(base_url), Some(token_file)) = (&config.youtrack.base_url, &config.youtrack.token_file) else {
        return Ok(None);
    };
    let token = SecretString::from(Token::read(token_file)?.expose().to_owned());
    let http = outbound::client(config).context("cannot build the YouTrack HTTPS client")?;
    let r = &config.reconcile;
    let settings = crate::reconcile::Settings {
        interval: Duration::from_secs(r.interval_seconds),
        lookback: chrono::Duration::hours(r.lookback_hours.min(24 * 365 * 10) as i64),
        overlap: chrono::Duration::seconds(r.overlap_seconds.min(86_400 * 365) as i64),
        max_activities: r.max_activities_per_sweep,
        same_transition: config.same_transition(),
    };
    Ok(Some(Arc::new(Reconciler::new(
        Arc::clone(store),
        crate::youtrack::YouTrack::new(http, base_url, token),
        config.triggers.clone(),
        config.youtrack.bot_login.clone(),
        settings,
    ))))
}

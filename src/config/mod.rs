//! Configuration: defaults, then a TOML file, then `MESHGATE_…` environment variables (sections
//! and keys joined by `__`, such as `MESHGATE_SERVER__LISTEN=0.0.0.0:8080`), validated at start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use meshgate_domain::trigger::is_simple_name;
use meshgate_domain::Trigger;
use serde::{Deserialize, Serialize};

mod files;
mod sections;
pub use sections::*;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub webhook: WebhookConfig,
    pub youtrack: YouTrackConfig,
    pub admin: AdminConfig,
    pub nodes: NodesConfig,
    pub worker: WorkerConfig,
    pub chat: Vec<ChatConfig>,
    pub pager: PagerConfig,
    pub outbound: OutboundConfig,
    pub reconcile: ReconcileConfig,
    pub store: StoreConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub lanes: Vec<LaneConfig>,
    pub triggers: Vec<Trigger>,
    pub artifacts: ArtifactsConfig,
    pub retention: RetentionConfig,
    /// The file this was loaded from (none: defaults and environment only).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// What is wrong with a configuration, in its own words: the key as the file spells it
/// (`youtrack.x`), what was found and what it takes, and the file or variable it came from.
fn describe(error: figment::Error) -> String {
    use figment::error::Kind;
    let described: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let what = match &e.kind {
                Kind::UnknownField(field, takes) => {
                    format!(
                        "unknown key `{field}`; `[{}]` takes {}",
                        e.path[..e.path.len().saturating_sub(1)].join("."),
                        takes.join(", ")
                    )
                }
                Kind::InvalidType(found, expected) => format!("{found} where {expected} is expected"),
                Kind::InvalidValue(found, expected) => format!("{found}: {expected} is expected"),
                Kind::MissingField(field) => format!("`{field}` is required"),
                other => other.to_string(),
            };
            let from = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
                _ => match e.metadata.as_ref() {
                    Some(m) if m.name.contains("environment") => " (from the environment)".to_owned(),
                    _ => String::new(),
                },
            };
            if key.is_empty() {
                format!("{what}{from}")
            } else {
                format!("{key}: {what}{from}")
            }
        })
        .collect();
    described.join("; ")
}

/// An address range as the configuration names it: a CIDR range (`10.0.0.0/8`) or one address.
pub fn parse_range(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// What a binary built without the EventStoreDB backend says of a configuration that names it.
pub const EVENTSTOREDB_NOT_BUILT_IN: &str =
    "this meshgate was built without the EventStoreDB backend (store.backend = \
     \"eventstoredb\"): install it with `cargo install --locked --path . --features eventstoredb`";

/// Every section the environment may set (each of [`Config`]'s fields).
const SECTIONS: [&str; 17] = [
    "server",
    "webhook",
    "youtrack",
    "admin",
    "nodes",
    "worker",
    "chat",
    "pager",
    "outbound",
    "reconcile",
    "store",
    "metrics",
    "log",
    "lanes",
    "triggers",
    "artifacts",
    "retention",
];

impl Config {
    /// Loads defaults, then `file` (if given), then the environment, and validates the result.
    /// Relative paths are resolved against the config file's folder (or the working directory).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Missing(file.to_owned()));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Keys keep the variable's case (`SERVER.LISTEN`): sections are matched without it.
        let env = Env::prefixed("MESHGATE_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| key.starts_with(&format!("{s}.")))
        });
        let mut config: Config = figment.merge(env).extract().map_err(|e| ConfigError::Parse(describe(e)))?;
        let base = file.and_then(Path::parent).map(Path::to_owned).unwrap_or_default();
        config.resolve_paths(&base);
        config.file = file.map(Path::to_owned);
        config.validate()?;
        Ok(config)
    }

    /// Every key naming a file or folder resolves against `base` (the config file's folder), so a
    /// service manager may start the gateway from any working directory.
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.server.data_dir);
        self.worker.resolve_paths(base);
        self.webhook.token_files.iter_mut().for_each(resolve);
        let chat = self.chat.iter_mut().flat_map(|c| [&mut c.url_file, &mut c.token_file, &mut c.signing_secret_file]);
        for p in [
            &mut self.server.tls_cert_file,
            &mut self.server.tls_key_file,
            &mut self.admin.token_file,
            &mut self.admin.previous_token_file,
            &mut self.nodes.token_file,
            &mut self.nodes.previous_token_file,
            &mut self.youtrack.token_file,
            &mut self.youtrack.previous_token_file,
            &mut self.pager.routing_key_file,
            &mut self.store.url_file,
            &mut self.store.ca_file,
            &mut self.outbound.ca_file,
            &mut self.nodes.files_dir,
            &mut self.nodes.client_ca_file,
        ]
        .into_iter()
        .chain(chat)
        .flatten()
        {
            resolve(p);
        }
    }

    /// The triggers of the sample configuration (`meshgate init`): one build of script
    /// `ios-build` when an issue of project `MOB` moves to `State` = `Building`.
    pub fn sample_triggers() -> Vec<Trigger> {
        #[derive(Deserialize)]
        struct Triggers {
            triggers: Vec<Trigger>,
        }
        Figment::from(Toml::string(SAMPLE)).extract::<Triggers>().map(|t| t.triggers).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.webhook.path.starts_with('/') || self.webhook.path.len() < 2 {
            return invalid(format!("webhook.path `{}` must start with `/`", self.webhook.path));
        }
        if axum::http::HeaderName::from_bytes(self.webhook.header.as_bytes()).is_err() {
            return invalid(format!("webhook.header `{}` is not a valid header name", self.webhook.header));
        }
        for (key, ranges) in [
            ("server.trusted_proxies", &self.server.trusted_proxies),
            ("webhook.allowed_sources", &self.webhook.allowed_sources),
        ] {
            if let Some(wrong) = ranges.iter().find(|r| parse_range(r).is_none()) {
                return invalid(format!(
                    "{key}: `{wrong}` is not an address or a CIDR range (10.0.0.0/8, 2001:db8::/32)"
                ));
            }
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.webhook.max_body_bytes) {
            return invalid("webhook.max_body_bytes must be between 1024 and 67108864".into());
        }
        if self.server.max_connections == 0
            || self.server.header_timeout_seconds == 0
            || self.server.idle_timeout_seconds == 0
            || self.server.body_timeout_seconds == 0
        {
            return invalid(
                "server.max_connections, header_timeout_seconds, idle_timeout_seconds and body_timeout_seconds must be at least 1"
                    .into(),
            );
        }
        if self.artifacts.keep_days == Some(0) {
            return invalid(
                "artifacts.keep_days must be at least 1 (to keep artifacts, set retention.artifacts_days = 0)".into(),
            );
        }
        if self.nodes.lease_seconds == 0 || self.nodes.max_attempts == 0 {
            return invalid("nodes.lease_seconds and nodes.max_attempts must be at least 1".into());
        }
        if self.server.tls_cert_file.is_some() != self.server.tls_key_file.is_some() {
            return invalid("server.tls_cert_file and server.tls_key_file go together".into());
        }
        if self.nodes.client_ca_file.is_some() && (self.nodes.listen.is_none() || self.tls_files().is_none()) {
            return invalid(
                "nodes.client_ca_file needs nodes.listen (the node API's own listener, which then requires client \
                 certificates) and server.tls_cert_file / tls_key_file (the certificate it serves)"
                    .into(),
            );
        }
        if self.nodes.listen == Some(self.server.listen) && self.server.listen.port() != 0 {
            return invalid("nodes.listen must differ from server.listen".into());
        }
        if self.reconcile.lookback_hours == 0 || self.reconcile.max_activities_per_sweep == 0 {
            return invalid(
                "reconcile.lookback_hours and reconcile.max_activities_per_sweep must be at least 1".into(),
            );
        }
        if self.youtrack.max_attempts == 0 || self.pager.max_attempts == 0 {
            return invalid("youtrack.max_attempts and pager.max_attempts must be at least 1".into());
        }
        if self.store.max_batch == 0 {
            return invalid("store.max_batch must be at least 1".into());
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(format!("metrics.listen `{}` is not host:port (empty: no metrics)", self.metrics.listen));
        }
        if !(1..=3600).contains(&self.store_lease_seconds()) {
            return invalid("store.lease_seconds must be between 1 and 3600".into());
        }
        if self.store.max_append_bytes < 64 * 1024 {
            return invalid("store.max_append_bytes must be at least 65536".into());
        }
        let backend = self.store.backend;
        match (backend.is_shared(), self.store.url_file.is_some(), self.store.url.is_some()) {
            (true, false, false) => {
                return invalid(format!("store.backend = \"{}\" needs store.url_file (or store.url)", backend.name()))
            }
            (true, true, true) => return invalid("store.url_file and store.url are alternatives: set one".into()),
            (false, true, _) | (false, _, true) => return invalid(
                "store.url_file and store.url are for a shared log (store.backend = \"postgres\" or \"eventstoredb\")"
                    .into(),
            ),
            _ => {}
        }
        if self.store.stream_prefix.is_empty()
            || self.store.stream_prefix.starts_with('$')
            || self.store.stream_prefix.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return invalid("store.stream_prefix must be non-empty, not start with `$` and hold no spaces".into());
        }
        let mut lanes = HashSet::new();
        for lane in &self.lanes {
            if !is_simple_name(&lane.name) {
                return invalid(format!("lane name `{}` must be 1-64 of [A-Za-z0-9._-]", lane.name));
            }
            if lane.max_running == Some(0) {
                return invalid(format!("lane `{}`: max_running must be at least 1", lane.name));
            }
            if let Some(xcode) = &lane.xcode {
                if let Err(e) = meshgate_domain::xcode::Requirement::parse(xcode) {
                    return invalid(format!("lane `{}`: {e}", lane.name));
                }
            }
            if !lanes.insert(lane.name.as_str()) {
                return invalid(format!("lane `{}` is defined twice", lane.name));
            }
        }
        let mut sinks = HashSet::new();
        for chat in &self.chat {
            if !is_simple_name(&chat.name)
                || !sinks.insert(chat.name.as_str())
                || chat.name == "youtrack"
                || chat.name == "pager"
            {
                return invalid(format!(
                    "chat sink `{}`: names must be unique, 1-64 of [A-Za-z0-9._-], not `youtrack`",
                    chat.name
                ));
            }
            if chat.kind == ChatKind::Console {
                if chat.url.is_some() || chat.url_file.is_some() {
                    return invalid(format!("chat sink `{}`: a console sink takes no url", chat.name));
                }
            } else if chat.url.is_some() == chat.url_file.is_some() {
                return invalid(format!("chat sink `{}`: give exactly one of url and url_file", chat.name));
            }
            if chat.kind == ChatKind::Matrix && (chat.room_id.is_none() || chat.token_file.is_none()) {
                return invalid(format!("chat sink `{}`: a matrix sink needs room_id and token_file", chat.name));
            }
            if chat.kind == ChatKind::SlackApi && (chat.channel.is_none() || chat.token_file.is_none()) {
                return invalid(format!("chat sink `{}`: a slack_api sink needs channel and token_file", chat.name));
            }
            if chat.kind == ChatKind::Openclaw
                && (chat.channel.is_none() || chat.to.is_none() || chat.token_file.is_none())
            {
                return invalid(format!(
                    "chat sink `{}`: an openclaw sink needs channel, to and token_file",
                    chat.name
                ));
            }
            if chat.max_attempts == 0 {
                return invalid(format!("chat sink `{}`: max_attempts must be at least 1", chat.name));
            }
            if !chat.allowed_users.is_empty() && !matches!(chat.kind, ChatKind::SlackApi | ChatKind::Matrix) {
                return invalid(format!("chat sink `{}`: allowed_users is for slack_api and matrix sinks", chat.name));
            }
            if chat.signing_secret_file.is_some() && chat.kind != ChatKind::SlackApi {
                return invalid(format!("chat sink `{}`: signing_secret_file is for slack_api sinks", chat.name));
            }
            if chat.kind == ChatKind::SlackApi && !chat.allowed_users.is_empty() && chat.signing_secret_file.is_none() {
                return invalid(format!(
                    "chat sink `{}`: buttons (allowed_users) need signing_secret_file, the Slack app's signing secret",
                    chat.name
                ));
            }
        }
        if let Some(alert) = &self.pager.alert_chat {
            if !self.chat.iter().any(|c| &c.name == alert) {
                return invalid(format!("pager.alert_chat `{alert}` is not a configured [[chat]] sink"));
            }
        }
        if self.youtrack.base_url.is_some() != self.youtrack.token_file.is_some() {
            return invalid("youtrack.base_url and youtrack.token_file go together".into());
        }
        let mut names = HashSet::new();
        for trigger in &self.triggers {
            trigger.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if !names.insert(trigger.name.as_str()) {
                return invalid(format!("trigger `{}` is defined twice", trigger.name));
            }
            if !self.lanes.is_empty() && !lanes.contains(trigger.lane.as_str()) {
                return invalid(format!(
                    "trigger `{}` names lane `{}`, which is not configured",
                    trigger.name, trigger.lane
                ));
            }
        }
        Ok(())
    }

    /// The certificate and key HTTPS is served with, if TLS is on.
    /// How the node API's own listener serves TLS: the gateway's certificate, and the CA nodes'
    /// client certificates must come from (none: no client certificate asked for).
    pub fn node_tls(&self) -> Option<(crate::tls::TlsFiles, Option<PathBuf>)> {
        self.nodes.listen?;
        Some((self.tls_files()?, self.nodes.client_ca_file.clone()))
    }

    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.server.tls_cert_file, &self.server.tls_key_file) {
            (Some(cert_file), Some(key_file)) => {
                Some(crate::tls::TlsFiles { cert_file: cert_file.clone(), key_file: key_file.clone() })
            }
            _ => None,
        }
    }

    /// How people reach the gateway, without a trailing `/`.
    pub fn public_url(&self) -> String {
        let scheme = if self.tls_files().is_some() { "https" } else { "http" };
        let url = self.server.public_url.clone().unwrap_or_else(|| format!("{scheme}://{}", self.server.listen));
        url.trim_end_matches('/').to_owned()
    }

    /// Days a build's artifacts are kept: `[artifacts] keep_days` where an older file sets it,
    /// else `[retention] artifacts_days`.
    pub fn artifacts_days(&self) -> u32 {
        self.artifacts.keep_days.unwrap_or(self.retention.artifacts_days)
    }

    pub fn log_path(&self) -> PathBuf {
        self.server.data_dir.join("events.sqlite")
    }

    /// This gateway's read model: beside the SQLite log, or in the data dir for a shared log.
    pub fn readmodel_path(&self) -> PathBuf {
        match self.store.backend {
            StoreBackend::Sqlite => self.log_path().with_extension("readmodel.sqlite"),
            StoreBackend::Postgres => self.server.data_dir.join("postgres.readmodel.sqlite"),
            StoreBackend::EventStoreDb => self.server.data_dir.join("eventstoredb.readmodel.sqlite"),
        }
    }

    /// Where build logs and artifacts are kept: `[nodes] files_dir`, else the data dir.
    pub fn files_dir(&self) -> PathBuf {
        self.nodes.files_dir.clone().unwrap_or_else(|| self.server.data_dir.clone())
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.server.data_dir.join("secrets")
    }

    /// The webhook token files in force: the configured ones, or the generated default.
    pub fn webhook_token_files(&self) -> Vec<PathBuf> {
        if self.webhook.token_files.is_empty() {
            vec![self.secrets_dir().join("webhook.token")]
        } else {
            self.webhook.token_files.clone()
        }
    }

    pub fn admin_token_file(&self) -> PathBuf {
        self.admin.token_file.clone().unwrap_or_else(|| self.secrets_dir().join("admin.token"))
    }

    /// The admin token files in force: the current one and the one being rotated out.
    pub fn admin_token_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.admin_token_file()).chain(self.admin.previous_token_file.clone()).collect()
    }

    /// The key per-build log links are signed with (created on first start).
    pub fn log_link_key_file(&self) -> PathBuf {
        self.secrets_dir().join("log-links.key")
    }

    pub fn nodes_token_file(&self) -> PathBuf {
        self.nodes.token_file.clone().unwrap_or_else(|| self.secrets_dir().join("nodes.token"))
    }

    /// The build pool's token files in force: the current one and the one being rotated out.
    pub fn nodes_token_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.nodes_token_file()).chain(self.nodes.previous_token_file.clone()).collect()
    }

    /// The lease on the work done once, in seconds: `[store] lease_seconds`, else the backend's
    /// default (a renewal on EventStoreDB is an event: it renews seldom).
    pub fn store_lease_seconds(&self) -> u64 {
        self.store.lease_seconds.unwrap_or(match self.store.backend {
            StoreBackend::EventStoreDb => 30,
            _ => 5,
        })
    }

    /// Deliveries larger than this may not fit the log's appends (on EventStoreDB): the bodies
    /// between it and `max_body_bytes` are refused with 413.
    pub fn largest_recordable_body(&self) -> Option<usize> {
        // A delivery's decision holds its body once and a few kilobytes besides (the build's
        // request, the intent, the routing), more with several triggers.
        let room = self.store.max_append_bytes.saturating_sub(16 * 1024 * (1 + self.triggers.len()));
        (self.store.backend == StoreBackend::EventStoreDb && room < self.webhook.max_body_bytes).then_some(room)
    }

    /// How close two reports of one intent's transition are to be one transition.
    pub fn same_transition(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.reconcile.same_transition_ms.min(i64::MAX as u64) as i64)
    }

    /// Every lane a build can be queued in: those configured, and those triggers name without
    /// configuring (`default` among them), which have priority 0, no labels and no cap.
    pub fn lane_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lanes.iter().map(|l| l.name.clone()).collect();
        for lane in self.triggers.iter().map(|t| &t.lane).chain(std::iter::once(&"default".to_owned())) {
            if !names.contains(lane) {
                names.push(lane.clone());
            }
        }
        names
    }

    /// Every lane (those triggers name without configuring with no labels and no cap), and how
    /// long it may go unserved before on-call is paged.
    pub fn watched_lanes(&self) -> Vec<(meshgate_projections::LaneRule, chrono::Duration)> {
        let rules = self.lane_rules();
        self.lane_names()
            .into_iter()
            .map(|name| {
                let rule = rules.iter().find(|r| r.name == name).cloned();
                let alert = self.lanes.iter().find(|l| l.name == name).map_or(300, |l| l.unservable_alert_seconds);
                let rule = rule.unwrap_or(meshgate_projections::LaneRule { name, ..Default::default() });
                (rule, chrono::Duration::seconds(alert.min(i64::MAX as u64 / 1000) as i64))
            })
            .collect()
    }

    pub fn lane_rules(&self) -> Vec<meshgate_projections::LaneRule> {
        self.lanes
            .iter()
            .map(|l| meshgate_projections::LaneRule {
                name: l.name.clone(),
                priority: l.priority,
                required_labels: l.required_labels.clone(),
                max_running: l.max_running,
                xcode: l.xcode.clone(),
            })
            .collect()
    }
}

/// The sample written by `meshgate init`.
pub const SAMPLE: &str = include_str!("../meshgate.sample.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_may_set_every_section() {
        let every = serde_json::to_value(Config::default()).unwrap();
        let mut fields: Vec<&str> = every.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sections = SECTIONS.to_vec();
        fields.sort();
        sections.sort();
        assert_eq!(fields, sections, "a section the environment cannot set");
    }
}

//! The sections of the configuration file, each with its defaults. `docs/configuration.md`
//! describes every key.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// How people reach the gateway (for log links in chat and comments). Default: `http://{listen}`,
    /// or `https://{listen}` with TLS.
    pub public_url: Option<String>,
    /// PEM certificate chain (leaf first): with `tls_key_file`, `listen` serves HTTPS only.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the certificate (same permission checks as token files).
    pub tls_key_file: Option<PathBuf>,
    /// Connections served at once; past that, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// A request's head must arrive within this (idle and slowloris connections are closed).
    pub header_timeout_seconds: u64,
    /// A kept-alive connection may stay silent this long between requests (longer than a load
    /// balancer's own idle timeout, so the balancer lets a pooled connection go first).
    pub idle_timeout_seconds: u64,
    /// The webhook's body must arrive within this (`408` otherwise).
    pub body_timeout_seconds: u64,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client: for a request
    /// from one of them, the client is the rightmost address of the header that is not a trusted
    /// proxy. Empty: the peer is the client and the header is ignored.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub path: String,
    /// Header carrying the shared token; matched case-insensitively.
    pub header: String,
    /// Every live token (several during a rotation). Empty: one generated under the data dir.
    pub token_files: Vec<PathBuf>,
    pub max_body_bytes: usize,
    /// Bad tokens from one address in a minute before its requests without a correct token are
    /// answered 429 (0: never). The admin and node API and the dashboard's sign-in apply the same
    /// limit, counted apart.
    pub max_bad_tokens_per_minute: u32,
    /// Clients (addresses or CIDR ranges, such as YouTrack Cloud's egress) the webhook takes
    /// deliveries from; any other is answered `403` before its token or body is read. Empty: any.
    pub allowed_sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct YouTrackConfig {
    /// Deliveries authored by this login are ignored (the gateway's own comments).
    pub bot_login: Option<String>,
    /// YouTrack's base URL, for failure comments (`POST /api/issues/{id}/comments`). None: no comments.
    pub base_url: Option<String>,
    /// Permanent token of the bot account (`perm:…`), for comments.
    pub token_file: Option<PathBuf>,
    /// The token being rotated out: tried after a 401 with the current one, until
    /// `previous_token_grace_minutes` after the current token file was written.
    pub previous_token_file: Option<PathBuf>,
    pub previous_token_grace_minutes: u64,
    /// Comment on success too (off by default).
    pub comment_on_success: bool,
    /// Tries per comment before it is abandoned.
    pub max_attempts: u32,
}

impl Default for YouTrackConfig {
    fn default() -> Self {
        YouTrackConfig {
            bot_login: None,
            base_url: None,
            token_file: None,
            previous_token_file: None,
            previous_token_grace_minutes: 15,
            comment_on_success: false,
            max_attempts: default_max_attempts(),
        }
    }
}

/// One `[[chat]]` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// `[A-Za-z0-9._-]{1,64}`; part of every notification key.
    pub name: String,
    pub kind: ChatKind,
    /// The endpoint. For a Slack incoming webhook the URL is a secret: prefer `url_file`.
    pub url: Option<String>,
    /// A file holding the endpoint URL (same permission checks as token files).
    pub url_file: Option<PathBuf>,
    /// Matrix: the room to post in (`!id` or `!id:server`).
    pub room_id: Option<String>,
    /// Matrix and Slack API: a file holding the bot's token (Matrix: log in once with a fixed
    /// device id).
    pub token_file: Option<PathBuf>,
    /// Slack API: the channel to post in. OpenClaw: the channel it delivers to (`whatsapp`,
    /// `telegram`, …).
    pub channel: Option<String>,
    /// OpenClaw: the recipient on that channel (a phone number, a chat id).
    pub to: Option<String>,
    /// OpenClaw: the agent that relays the line (its default agent if absent).
    pub agent_id: Option<String>,
    /// Matrix: later states of a build edit its first message (`m.replace`) instead of adding lines.
    #[serde(default)]
    pub edit_in_place: bool,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// `meshgate selftest` posts a visible test line here (otherwise it only checks the endpoint
    /// answers).
    #[serde(default)]
    pub selftest: bool,
    /// Slack API: a file holding the app's signing secret, which Slack signs its interactivity
    /// requests (`POST /chat/slack/actions`) with. Needed for buttons.
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,
    /// Slack API and Matrix: who may rebuild and cancel builds from the channel (Slack user ids
    /// `U…`; Matrix user ids `@alice:example.org`). Empty: nobody, and no buttons or reactions
    /// are shown.
    #[serde(default)]
    pub allowed_users: Vec<String>,
}

fn default_max_attempts() -> u32 {
    8
}

impl ChatConfig {
    /// A sink of `kind` with nothing else set (every optional key absent, the default attempts).
    pub fn new(name: &str, kind: ChatKind) -> Self {
        ChatConfig {
            name: name.to_owned(),
            kind,
            url: None,
            url_file: None,
            room_id: None,
            token_file: None,
            channel: None,
            to: None,
            agent_id: None,
            edit_in_place: false,
            max_attempts: default_max_attempts(),
            selftest: false,
            signing_secret_file: None,
            allowed_users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// JSON POST of the build state.
    Generic,
    /// Slack incoming webhook (`{"text": …}`).
    SlackWebhook,
    /// Microsoft Teams Workflows webhook: an Adaptive Card 1.4 (202 means queued).
    TeamsWorkflow,
    /// Discord webhook (`?wait=true`).
    Discord,
    /// Slack Web API with a bot token: `chat.postMessage` once per build, then `chat.update`, so the
    /// channel shows one message per build. `url` is the API base (`https://slack.com/api`).
    SlackApi,
    /// A Matrix room: `m.notice` messages, the transaction id derived from the notification key.
    Matrix,
    /// An OpenClaw gateway's `POST /hooks/agent`, which relays each line to the channel it serves
    /// (WhatsApp, Telegram, Signal, iMessage, …).
    Openclaw,
    /// The gateway's standard output: each line as it would go to chat (no `url`).
    Console,
}

/// `[pager]`: PagerDuty Events API v2, for builds neither chat nor the tracker could be told about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagerConfig {
    /// Default `https://events.pagerduty.com/v2/enqueue` when a routing key is given.
    pub url: Option<String>,
    /// File holding the integration's routing key. None: no PagerDuty.
    pub routing_key_file: Option<PathBuf>,
    /// A `[[chat]]` sink (its own channel) that gets the pages, and nothing else.
    pub alert_chat: Option<String>,
    /// Tries per page before it is abandoned.
    pub max_attempts: u32,
}

impl Default for PagerConfig {
    fn default() -> Self {
        PagerConfig { url: None, routing_key_file: None, alert_chat: None, max_attempts: default_max_attempts() }
    }
}

/// `[reconcile]`: sweeps of YouTrack's activity stream for transitions no webhook brought. On when
/// How log lines are written (to standard error; `RUST_LOG` sets the level).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, its fields (the correlation id among them) as keys.
    Json,
}

/// Prometheus metrics (`GET /metrics`), on a listener of their own without auth: keep it on
/// loopback or a private network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port`; empty: no metrics listener.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9464".into() }
    }
}

/// `[youtrack] base_url` and `token_file` are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Seconds between sweeps (one also runs at start); 0: only on demand (API, command).
    pub interval_seconds: u64,
    /// How far back a sweep looks at most: the first on an empty log, and after a long stop.
    pub lookback_hours: u64,
    /// Each sweep reads again this much before where the last one ended.
    pub overlap_seconds: u64,
    /// Activities one sweep reads at most; the next continues where it stopped.
    pub max_activities_per_sweep: usize,
    /// A webhook and an activity of one intent whose change times are this close are one
    /// transition.
    pub same_transition_ms: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval_seconds: 300,
            lookback_hours: 24,
            overlap_seconds: 120,
            max_activities_per_sweep: 1000,
            same_transition_ms: 2000,
        }
    }
}

/// `[outbound]`: delivery rules shared by every sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// A notification key is delivered at most once within this window; older milestones are not sent.
    pub dedupe_window_seconds: u64,
    pub retry_base_ms: u64,
    pub retry_cap_seconds: u64,
    /// No wait between tries is longer, whatever `Retry-After` says.
    pub max_wait_seconds: u64,
    pub timeout_seconds: u64,
    /// A PEM bundle trusted beside the platform's store and the webpki roots (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            dedupe_window_seconds: 3600,
            retry_base_ms: 1000,
            retry_cap_seconds: 300,
            max_wait_seconds: 900,
            timeout_seconds: 10,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for the read API. Absent: one generated under the data dir.
    pub token_file: Option<PathBuf>,
    /// The admin token being rotated out, still accepted while its users move to the new one.
    pub previous_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Where the log lives: `sqlite` (a file in the data dir, the default), `postgres` (a
    /// database shared by every gateway of a team, ADR 0009) or `eventstoredb` (EventStoreDB or
    /// KurrentDB, ADR 0010).
    pub backend: StoreBackend,
    /// `postgres`, `eventstoredb`: a file holding the connection URL
    /// (`postgres://user:password@host/db`, `esdb://user:password@host:2113?tls=true`), a secret
    /// with the token files' permission checks.
    pub url_file: Option<PathBuf>,
    /// `postgres`, `eventstoredb`: the connection URL itself, for local use (it then shows in the
    /// config file).
    pub url: Option<String>,
    /// `postgres`: the CA bundle (PEM) the database's certificate must chain to, for a private CA
    /// (a managed database's CA bundle, a company CA), when the URL names no `sslrootcert`. The URL's
    /// `sslmode` says how TLS is used: `verify-full` unless said, for any host not on this machine.
    pub ca_file: Option<PathBuf>,
    /// `eventstoredb`: put before every stream's name (`meshgate-build-…`); the log itself is the
    /// stream `{prefix}log`.
    pub stream_prefix: String,
    /// `postgres`, `eventstoredb`: how long the lease on the work done once (reaper, dispatchers,
    /// sweeps) lasts unrenewed; another gateway takes that work over at most this long after its
    /// holder died. None: 5 s on PostgreSQL (a renewal updates a row), 30 s on EventStoreDB (a
    /// renewal is an event).
    pub lease_seconds: Option<u64>,
    /// Most bytes in one append to the log, counted as EventStoreDB counts them (data, metadata and
    /// twice the type's length of each event): `eventstoredb` only, the server's `MaxAppendSize`.
    pub max_append_bytes: usize,
    /// Fold concurrent appends into one commit (group commit). Off: one commit per request.
    pub group_commit: bool,
    /// Most appends in one group commit.
    pub max_batch: usize,
    /// How long an append waits for a lock held by another process before it fails (503).
    pub busy_timeout_ms: u64,
    /// Under load, how long a group commit may wait for appends on their way (microseconds).
    pub linger_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    pub name: String,
    #[serde(default)]
    pub priority: i64,
    /// A node must carry every one of these labels to run the lane's builds.
    #[serde(default)]
    pub required_labels: Vec<String>,
    /// Most builds of the lane running at once across the pool (`1`: a mutex, e.g. around a
    /// signing identity).
    #[serde(default)]
    pub max_running: Option<usize>,
    /// The Xcode the lane's builds require when their trigger names none: `16.2` exactly, `16`
    /// any 16.x.
    #[serde(default)]
    pub xcode: Option<String>,
    /// A build queued this long (never claimed) is cancelled with reason `expired`: a queue that
    /// grew over an outage does not run every stale build when nodes come back. None: no limit.
    #[serde(default)]
    pub max_queue_seconds: Option<u64>,
    /// How long the lane may have queued builds no live node can run before on-call is paged.
    #[serde(default = "default_unservable_alert_seconds")]
    pub unservable_alert_seconds: u64,
}

fn default_unservable_alert_seconds() -> u64 {
    300
}

/// `meshgate worker` settings (the `[worker]` table the agent reads too); flags override them.
pub type WorkerConfig = meshgate_worker::FileSettings;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodesConfig {
    /// Bearer token shared by the build pool. Absent: one generated under the data dir.
    pub token_file: Option<PathBuf>,
    /// The pool token being rotated out, still accepted while the machines move to the new one.
    pub previous_token_file: Option<PathBuf>,
    /// How long a claim holds without a heartbeat.
    pub lease_seconds: u64,
    /// How long a claim request waits for work before answering empty.
    pub claim_wait_seconds: u64,
    /// Claims of one build before a lost node fails it with `node_lost`.
    pub max_attempts: u32,
    /// Largest log kept of an attempt: the rest is cut, with a line saying so.
    pub max_log_bytes: usize,
    /// Most bytes of artifacts kept of an attempt: a node skips the rest and says so.
    pub max_artifact_bytes: u64,
    /// Where build logs and artifacts are kept (`logs/`, `artifacts/`); none: the data dir. With
    /// several gateways, a folder every one of them mounts.
    pub files_dir: Option<PathBuf>,
    /// The node API's own address: when set, nodes are served there and only there (the main
    /// listener no longer answers their routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// A PEM bundle of the CA that signs the nodes' client certificates: the node API's listener
    /// (`listen`) then requires one from a node before anything else (mutual TLS), in addition to
    /// the pool token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// `[artifacts]`: what builds produced, kept by the gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Replaced by `[retention] artifacts_days`; when set, still honoured (and it wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
}

/// `[retention]`: how long the files builds leave on the gateway are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// A build's logs are removed this many days after its newest one was written (0: kept).
    pub build_logs_days: u32,
    /// A build's artifacts are removed this many days after its newest one was stored (0: kept).
    pub artifacts_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { build_logs_days: 90, artifacts_days: 14 }
    }
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            token_file: None,
            previous_token_file: None,
            lease_seconds: 120,
            claim_wait_seconds: 30,
            max_attempts: 3,
            max_log_bytes: 64 * 1024 * 1024,
            max_artifact_bytes: 2 * 1024 * 1024 * 1024,
            files_dir: None,
            listen: None,
            client_ca_file: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("meshgate-data"),
            public_url: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_connections: 4096,
            header_timeout_seconds: 10,
            idle_timeout_seconds: 75,
            body_timeout_seconds: 30,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            path: "/youtrack/webhook".into(),
            header: "X-YouTrack-Token".into(),
            token_files: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_bad_tokens_per_minute: 30,
            allowed_sources: Vec::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sqlite,
            url_file: None,
            url: None,
            ca_file: None,
            stream_prefix: "meshgate-".to_owned(),
            lease_seconds: None,
            max_append_bytes: 1024 * 1024,
            group_commit: true,
            max_batch: 512,
            busy_timeout_ms: 5000,
            linger_us: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Sqlite,
    Postgres,
    #[serde(rename = "eventstoredb")]
    EventStoreDb,
}

impl StoreBackend {
    /// A log several gateways can share, reached by a connection URL; each gateway keeps its read
    /// model in its data dir.
    pub fn is_shared(self) -> bool {
        self != StoreBackend::Sqlite
    }

    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            StoreBackend::Sqlite => "sqlite",
            StoreBackend::Postgres => "postgres",
            StoreBackend::EventStoreDb => "eventstoredb",
        }
    }
}

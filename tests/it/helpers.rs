//! `spawn_app()` and friends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshgate::app::{App, Handles};
use meshgate::config::{Config, LaneConfig};
use meshgate::projector::apply_batch;
use meshgate::secrets::generate_token_file;
use meshgate::store::{EventStore, StoredEvent, StreamAppend};
use meshgate_domain::build::{decide, replay, BuildCommand};
use meshgate_domain::stream::build_stream;
use meshgate_domain::{ExpectedVersion, Trigger};
use meshgate_projections::{BuildView, Outbox, ProjectionSet, Queue};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A YouTrack fixture body as sent (compact, one line).
pub fn fixture(name: &str) -> String {
    let path = fixtures().join("youtrack").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap();
    serde_json::to_string(&value).unwrap()
}

/// The same body with some top-level keys replaced (a new `timestamp`, another `updated`, …).
pub fn with(body: &str, overrides: &Value) -> String {
    let mut value: Value = serde_json::from_str(body).unwrap();
    for (k, v) in overrides.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::to_string(&value).unwrap()
}

/// `ios-build`: project `MOB`, `State` → `Building`, lane `default`, ref `feature/{issue}`.
pub fn ios_trigger() -> Trigger {
    Config::sample_triggers().remove(0)
}

/// A config in `dir` with fresh token files and the given triggers.
pub fn test_config(dir: &Path, triggers: Vec<Trigger>) -> Config {
    let mut config = Config::default();
    config.server.data_dir = dir.join("data");
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.webhook.token_files = vec![dir.join("webhook.token")];
    config.admin.token_file = Some(dir.join("admin.token"));
    config.nodes.token_file = Some(dir.join("nodes.token"));
    config.youtrack.bot_login = Some("meshgate-bot".into());
    // Sweeps of YouTrack's activity stream only when a test asks (tests/it/reconcile.rs).
    config.reconcile.interval_seconds = 0;
    // Metrics on a free port of their own.
    config.metrics.listen = "127.0.0.1:0".into();
    // Stand-ins serve HTTPS with certificates of the tests' CA, trusted through this file only.
    config.outbound.ca_file = Some(crate::pki::pki().ca_file.clone());
    config.lanes = vec![
        LaneConfig {
            name: "default".into(),
            priority: 0,
            required_labels: vec![],
            max_running: None,
            xcode: None,
            max_queue_seconds: None,
            unservable_alert_seconds: 300,
        },
        LaneConfig {
            name: "signing".into(),
            priority: 10,
            required_labels: vec!["signing".into()],
            max_running: Some(1),
            xcode: None,
            max_queue_seconds: None,
            unservable_alert_seconds: 300,
        },
    ];
    config.triggers = triggers;
    for file in [dir.join("webhook.token"), dir.join("admin.token"), dir.join("nodes.token")] {
        if !file.exists() {
            generate_token_file(&file, 0o400).unwrap();
        }
    }
    config
}

pub struct TestApp {
    pub config: Config,
    pub addr: SocketAddr,
    pub handles: Handles,
    pub webhook_token: String,
    pub admin_token: String,
    pub client: reqwest::Client,
    /// Where `GET /metrics` answers.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// The gateway's folder, declared last so it is removed last: fields drop in order, and
    /// `handles` keep the log and the read model open (their last flushes write into it).
    pub dir: TempDir,
}

pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), vec![ios_trigger()]);
    spawn_with(dir, config).await
}

pub async fn spawn_with(dir: TempDir, mut config: Config) -> TestApp {
    // Bound first, as `meshgate serve` does, so links name the port really bound.
    let listener = tokio::net::TcpListener::bind(config.server.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    config.server.listen = addr;
    let app = App::start(&config).await.expect("app starts");
    let handles = app.handles.clone();
    let metrics_addr = app.metrics_addr;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.serve(listener, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let read = |p: &Path| std::fs::read_to_string(p).unwrap().trim().to_owned();
    TestApp {
        webhook_token: read(&config.webhook.token_files[0]),
        admin_token: read(config.admin.token_file.as_ref().unwrap()),
        dir,
        config,
        addr,
        handles,
        client: crate::pki::https_client(),
        metrics_addr,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    /// A URL on this gateway (`https` when it serves TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.config.tls_files().is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub async fn post(&self, body: &str) -> reqwest::Response {
        self.client
            .post(self.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", &self.webhook_token)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// Posts and returns the JSON answer, asserting a 200.
    pub async fn deliver(&self, body: &str) -> Value {
        let response = self.post(body).await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 200, "delivery refused: {answer}");
        answer
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(&self.admin_token).send().await.unwrap()
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.handles.store
    }

    pub async fn all_events(&self) -> Vec<StoredEvent> {
        self.store().read_all(0, usize::MAX >> 1).await.unwrap()
    }

    pub async fn count(&self, event_type: &str) -> usize {
        self.all_events().await.iter().filter(|e| e.event_type == event_type).count()
    }

    /// Waits (on the projections' change signal, no polling) until the log holds `n` events of a type.
    pub async fn wait_for_count(&self, event_type: &str, n: usize) {
        let mut changes = self.handles.projections.changes();
        let reached = tokio::time::timeout(std::time::Duration::from_secs(90), async {
            while self.count(event_type).await < n {
                changes.changed().await.unwrap();
            }
        })
        .await;
        assert!(reached.is_ok(), "fewer than {n} {event_type}");
    }

    /// The live projections once they have caught up with the log: every build (memory and the
    /// read model), the queue and the outbox.
    pub async fn live(&self) -> Model {
        let head = *self.store().head().borrow();
        assert!(self.handles.projections.caught_up_to(head, std::time::Duration::from_secs(10)).await);
        let mut builds = self.handles.projections.page_builds(None, None, u64::MAX, usize::MAX).await.unwrap();
        builds.reverse();
        let (position, queue, outbox) =
            self.handles.projections.read(|p| (p.position, p.queue.clone(), p.outbox.clone()));
        Model { position, builds, queue, outbox }
    }

    /// The projections recomputed from position 0, in memory.
    pub async fn rebuilt(&self) -> Model {
        let mut set = ProjectionSet::new(meshgate::outbound::outbox_config(&self.config));
        apply_batch(&mut set, &self.all_events().await).unwrap();
        let mut builds: Vec<BuildView> = set.builds.in_memory().cloned().collect();
        builds.sort_by_key(|b| b.position);
        Model { position: set.position, builds, queue: set.queue, outbox: set.outbox }
    }

    /// Runs a build to its end the way a node would: claim, then report.
    pub async fn finish_build(&self, build_id: Uuid, succeeded: bool) {
        let stream = build_stream(build_id);
        // A lease a node would hold: the reaper must not requeue the build between the two steps,
        // however slow the log is.
        let lease_expires_at = chrono::Utc::now() + chrono::Duration::minutes(10);
        let claim = BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at };
        self.apply_command(&stream, build_id, claim).await;
        let result = if succeeded {
            BuildCommand::Succeed { attempt: 1 }
        } else {
            BuildCommand::Fail { attempt: 1, reason: "exit 65".into() }
        };
        self.apply_command(&stream, build_id, result).await;
    }

    pub async fn apply_command(&self, stream: &str, build_id: Uuid, command: BuildCommand) {
        let stored = self.store().read_stream(stream).await.unwrap();
        let events: Vec<_> = stored.iter().map(|s| s.decode().unwrap().event).collect();
        let new = decide(&replay(&events), build_id, &command, chrono::Utc::now()).unwrap();
        let append = StreamAppend {
            stream: stream.to_owned(),
            expected: ExpectedVersion::from_current(stored.last().map(|s| s.version)),
            events: new
                .iter()
                .map(|e| meshgate::store::NewEvent::from_domain(e, Uuid::now_v7(), None, chrono::Utc::now()))
                .collect(),
        };
        self.store().append(vec![append]).await.unwrap();
    }

    /// Stops serving and saves the projections; the data dir is kept for a restart (on a new
    /// free port).
    pub async fn shutdown(mut self) -> (TempDir, Config) {
        self.config.server.listen.set_port(0);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
        // The folder and configuration go on to the restart; an empty folder takes their place.
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, std::mem::take(&mut self.config))
    }

    pub async fn restart(self) -> TestApp {
        let (dir, config) = self.shutdown().await;
        spawn_with(dir, config).await
    }
}

/// A test that ends without [`TestApp::shutdown`]: the gateway is stopped and waited for before
/// its folder is removed (`dir` is the last field), so that nothing it still does (a save, the
/// stream index's flush) writes into a folder being removed, which left it behind in the temp
/// dir. Waiting needs a runtime with worker threads: on a current-thread runtime the
/// gateway cannot run while the test's thread waits, so a test there must call `shutdown`
/// itself, and one that does not fails here, saying so.
impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(server) = self.server.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            // Bounded: a test that failed may leave a gateway that cannot stop cleanly.
            let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), server);
            let _ = tokio::task::block_in_place(|| runtime.block_on(stopped));
        } else if !std::thread::panicking() {
            panic!(
                "a TestApp ended on a current-thread runtime without `shutdown`: its gateway cannot be waited for \
                 before its folder goes; use #[tokio::test(flavor = \"multi_thread\", worker_threads = 2)] or call \
                 `app.shutdown().await`"
            );
        }
    }
}

/// The projections as the API sees them: whatever memory holds and the read model saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub position: u64,
    /// Every build, in log order.
    pub builds: Vec<BuildView>,
    pub queue: Queue,
    pub outbox: Outbox,
}

pub fn build_id(answer: &Value) -> Uuid {
    answer["build_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("a build id")
}

/// The text a CommonMark renderer shows for `markdown` (YouTrack renders comments as Markdown):
/// text and code as shown, a line per rendered line, raw HTML marked as `<html:…>`.
pub fn displayed(markdown: &str) -> String {
    use pulldown_cmark::{Event, Parser, TagEnd};
    let mut shown = String::new();
    for event in Parser::new(markdown) {
        match event {
            Event::Text(text) | Event::Code(text) => shown.push_str(&text),
            Event::SoftBreak | Event::HardBreak | Event::End(TagEnd::Paragraph) => shown.push('\n'),
            Event::Html(html) | Event::InlineHtml(html) => shown.push_str(&format!("<html:{html}>")),
            _ => {}
        }
    }
    shown.trim_end().to_owned()
}

/// Every event of a log, in position order.
pub async fn read_everything(store: &dyn EventStore) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    loop {
        let page = store.read_all(all.len() as u64, 1000).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Sends a request and reads its answer as JSON.
pub async fn answer_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// A chat line without its build's name (` ios-build #3`), for tests that know the issue but
/// not the order builds were numbered in.
pub fn unnamed(line: &str) -> String {
    let Some(hash) = line.find(" #").map(|at| at + 1) else { return line.to_owned() };
    let start = line[..hash - 1].rfind(' ').unwrap_or(0);
    let rest = &line[hash + 1..];
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return line.to_owned();
    }
    format!("{}{}", &line[..start], &rest[digits..])
}

/// The trigger of project `SIGN`'s builds, in the `signing` lane (which needs the `signing`
/// label and runs one build at a time).
pub fn sign_trigger() -> Trigger {
    Trigger {
        name: "ios-sign".into(),
        projects: vec!["SIGN".into()],
        script: "ios-sign".into(),
        lane: "signing".into(),
        ..ios_trigger()
    }
}

/// A change of issue `SIGN-n` into `Building`: a build in the signing lane.
pub fn sign_issue(n: u32) -> String {
    with(
        &fixture("mob-issueUpdated-state-building.json"),
        &serde_json::json!({"id": format!("SIGN-{n}"), "project": {"id": "0-9", "name": "Signing", "shortName": "SIGN"}}),
    )
}

/// A stream prefix no other test uses, for a log shared by the whole test binary (EventStoreDB's).
pub fn fresh_prefix() -> String {
    format!("t{}-", uuid::Uuid::now_v7().simple())
}

//! A gateway measured in this process (`BenchServer`: the real gateway on a free loopback port in
//! a temp dir) and the deliveries the benchmarks send it: distinct changes of one sample body,
//! and the appends ingest makes for each.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use chrono::Utc;
use meshgate::app::App;
use meshgate::config::Config;
use meshgate::secrets::generate_token_file;
use meshgate::store::{NewEvent, StreamAppend};
use meshgate_domain::ingest::{decide_delivery, DeliveryInput, IngestPolicy, LogView};
use meshgate_domain::payload;
use meshgate_domain::Trigger;
use uuid::Uuid;

/// A delivery in the sender's compact format; `{n}` makes each one a distinct change.
pub(crate) const BODY: &str = r#"{"event":"issueUpdated","timestamp":"2026-08-24T10:00:00.000Z","id":"MOB-{n}","summary":"Crash on launch when the device is offline and the cache is cold (iOS 18.2, iPhone 15)","project":{"key":"MOB","name":"Mobile","shortName":"MOB"},"description":"Steps to reproduce:\n1. Install the app from TestFlight build 2.1.0 (412)\n2. Enable airplane mode\n3. Clear the cache from Settings > Storage\n4. Launch the app\n\nExpected: the offline screen.\nActual: crash in CacheController.load() with EXC_BAD_ACCESS.\n\nSeen on iOS 18.2 and 18.3 beta 1; not on iOS 17. Crash log attached; symbolicated stack points at the image decoder running on the main thread while the cache index is rebuilt on a background queue.","updated":1787565700000,"updatedBy":{"login":"omar.haddad","fullName":"Omar Haddad","email":"omar.haddad@example.com"},"changedFields":[{"name":"State","oldValue":{"name":"Open","presentation":"Open"},"value":{"name":"Building","presentation":"Building"}},{"name":"Assignee","oldValue":null,"value":{"login":"jane.doe","fullName":"Jane Doe","email":"jane.doe@example.com"}}]}"#;

pub(crate) fn trigger() -> Trigger {
    Config::sample_triggers().remove(0)
}

pub(crate) fn bench_config(dir: &Path, group_commit: bool) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.server.data_dir = dir.join("data");
    config.webhook.token_files = vec![dir.join("webhook.token")];
    config.admin.token_file = Some(dir.join("admin.token"));
    config.nodes.token_file = Some(dir.join("nodes.token"));
    config.store.group_commit = group_commit;
    // Metrics recorded as in production, served on a free port (never a running gateway's, nor
    // the other gateway's of the same run).
    config.metrics.listen = "127.0.0.1:0".into();
    config.triggers = vec![trigger()];
    generate_token_file(&dir.join("webhook.token"), 0o400)?;
    generate_token_file(&dir.join("admin.token"), 0o400)?;
    generate_token_file(&dir.join("nodes.token"), 0o400)?;
    Ok(config)
}

/// A gateway on a free loopback port in a temp dir, for the measurements.
pub(crate) struct BenchServer {
    pub addr: SocketAddr,
    pub dir: std::path::PathBuf,
    pub webhook_token: String,
    pub nodes_token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl BenchServer {
    pub async fn start(group_commit: bool) -> anyhow::Result<BenchServer> {
        Self::start_with(|config| config.store.group_commit = group_commit).await
    }

    /// A gateway with the benchmark's configuration changed by `adjust` (its log's backend).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<BenchServer> {
        let dir = tempfile_dir("meshgate-bench")?;
        let mut config = bench_config(&dir, true)?;
        adjust(&mut config);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).map(|t| t.trim().to_owned());
        let (webhook_token, nodes_token) = (read("webhook.token")?, read("nodes.token")?);
        let app = App::start(&config).await?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(BenchServer { addr, dir, webhook_token, nodes_token, stop, server })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await??;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// A distinct delivery that enqueues one build.
pub(crate) fn body(n: u64) -> String {
    let (head, tail) = BODY.split_once("{n}").unwrap_or((BODY, ""));
    let mut body = String::with_capacity(BODY.len() + 20);
    body.push_str(head);
    let _ = write!(body, "{n}");
    body.push_str(tail);
    body
}

/// Issue `n` moving from `from` to `to`, `later_ms` after the sample's change time.
pub(crate) fn transition(n: u64, from: &str, to: &str, later_ms: u64) -> String {
    body(n)
        .replace(
            r#""oldValue":{"name":"Open","presentation":"Open"},"value":{"name":"Building","presentation":"Building"}"#,
            &format!(
                r#""oldValue":{{"name":"{from}","presentation":"{from}"}},"value":{{"name":"{to}","presentation":"{to}"}}"#
            ),
        )
        .replace("\"updated\":1787565700000", &format!("\"updated\":{}", 1_787_565_700_000 + later_ms))
}

/// The appends ingest makes for delivery `n`, decided on the fast path.
pub(crate) fn plan_for(n: u64, policy: &IngestPolicy<'_>) -> anyhow::Result<Vec<StreamAppend>> {
    let body = body(n);
    let read = payload::read(&body).context("bench body")?;
    let payload::Read { body, fingerprint, delivery } = read;
    let correlation_id = Uuid::now_v7();
    let now = Utc::now();
    let input =
        DeliveryInput { correlation_id, received_at: now, fingerprint: &fingerprint, body: &body, delivery: &delivery };
    let plan = decide_delivery(&LogView::assume_new(), &input, policy, &mut Uuid::now_v7);
    Ok(plan
        .appends
        .into_iter()
        .map(|a| StreamAppend {
            stream: a.stream,
            expected: a.expected,
            events: a.events.iter().map(|e| NewEvent::from_domain(e, correlation_id, None, now)).collect(),
        })
        .collect())
}

pub(crate) fn tempfile_dir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

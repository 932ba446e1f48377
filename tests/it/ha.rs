//! Two real gateways on one PostgreSQL log, a real worker and a real Matrix homeserver: the
//! gateway that holds the lease is killed with SIGKILL in the middle of the deliveries, and
//! nothing accepted is lost, nothing is built twice, every build finishes and every line reaches
//! the room once.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use meshgate::config::StoreBackend;
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::helpers::*;
use crate::matrix::start_synapse_limited;
use crate::process::{start, token, Gateway, BIN};
use crate::workers::{agent, scripts_file, wait_for};

const ISSUES: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_lose_nothing_when_the_leaseholder_is_killed() {
    let synapse = start_synapse_limited(100.0, 100).await;
    let url = crate::postgres::database().await;
    let shared = tempfile::tempdir().unwrap();
    let mut config = test_config(shared.path(), vec![ios_trigger()]);
    let url_file = shared.path().join("postgres.url");
    std::fs::write(&url_file, &url).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    config.store.backend = StoreBackend::Postgres;
    config.store.url_file = Some(url_file);
    config.store.lease_seconds = Some(2);
    config.chat = vec![synapse.sink(shared.path())];
    config.outbound.retry_base_ms = 50;

    // Two gateways, each with a folder of its own (its data dir, its config), sharing the tokens.
    let mut gateways: Vec<(std::path::PathBuf, Gateway)> = Vec::new();
    for i in 0..2 {
        let dir = shared.path().join(format!("gateway-{i}"));
        std::fs::create_dir(&dir).unwrap();
        let mut own = config.clone();
        own.server.data_dir = dir.join("data");
        let file = dir.join("meshgate.toml");
        std::fs::write(&file, toml::to_string(&own).unwrap()).unwrap();
        let gateway = start(&dir, &["--config", file.to_str().unwrap()], &[]);
        gateways.push((file, gateway));
    }
    let client = reqwest::Client::new();
    let holder = leaseholder(&client, &gateways).await;
    let (_, mut leader) = gateways.remove(holder);
    let (survivor_config, survivor) = gateways.remove(0);

    let scripts = scripts_file(shared.path(), &[("ios-build", "ok.sh")]);
    let (tx, lines) = std::sync::mpsc::channel();
    let _worker = agent(shared.path(), &survivor.url(""), "mac-1", "", 2, &scripts, &tx);

    // Every issue's change posted to both gateways at once (two URLs); the leaseholder is killed
    // halfway.
    let webhook = token(shared.path(), "webhook.token");
    let building = fixture("mob-issueUpdated-state-building.json");
    let post = |gateway: &Gateway, body: String| {
        client
            .post(gateway.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", &webhook)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let mut accepted = Vec::new();
    for n in 0..ISSUES {
        let issue = format!("MOB-{n}");
        let body = with(&building, &json!({"id": issue}));
        let (one, other) = tokio::join!(post(&leader, body.clone()), post(&survivor, body));
        for answer in [one, other].into_iter().flatten() {
            if answer.status() == 200 {
                let answer: Value = answer.json().await.unwrap();
                accepted.push((issue.clone(), answer["correlation_id"].as_str().unwrap().to_owned()));
            }
        }
        if n == ISSUES / 2 {
            leader.child.kill().unwrap(); // SIGKILL
            leader.child.wait().unwrap();
        }
    }
    let issues: HashSet<&str> = accepted.iter().map(|(issue, _)| issue.as_str()).collect();
    assert_eq!(issues.len(), ISSUES, "every change was accepted by at least one gateway");

    // Every build runs on the worker (through the survivor), and every line goes out.
    wait_for(&lines, "reported", ISSUES);
    let log = Log::connect(&url).await.wait_for("NotificationDelivered", 3 * ISSUES as i64).await;

    let received: HashSet<String> = log.correlations("WebhookReceived").await;
    for (issue, correlation) in &accepted {
        assert!(received.contains(correlation), "the accepted delivery {correlation} for {issue} is not in the log");
    }
    let mut builds = BTreeMap::<String, usize>::new();
    for data in log.data("BuildRequested").await {
        *builds.entry(data["issue_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(builds.len(), ISSUES);
    assert!(builds.values().all(|n| *n == 1), "an issue got two builds: {builds:?}");
    assert_eq!(log.data("BuildSucceeded").await.len(), ISSUES, "every build finished");

    let said = synapse.notices().await;
    // Each build numbered once, from 1, without a gap, whichever gateway decided it.
    let numbers: std::collections::BTreeSet<u64> = said
        .iter()
        .filter(|l| l.starts_with("⏳ "))
        .filter_map(|l| l.split(" ios-build #").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(numbers, (1..=ISSUES as u64).collect(), "{said:#?}");
    let notices: Vec<String> = said.iter().map(|l| unnamed(l)).collect();
    for n in 0..ISSUES {
        for line in [format!("⏳ MOB-{n} queued"), format!("🔨 MOB-{n} running"), format!("✅ MOB-{n} succeeded")] {
            let times = notices.iter().filter(|l| l.starts_with(&format!("{line} ")) || **l == line).count();
            assert_eq!(times, 1, "`{line}` reached the room {times} times: {notices:#?}");
        }
    }
    assert_eq!(notices.len(), 3 * ISSUES, "{notices:#?}");

    // The survivor's projections equal a rebuild from the shared log.
    let verify = std::process::Command::new(BIN)
        .args(["--config", survivor_config.to_str().unwrap(), "projections", "rebuild", "--verify"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("the read model matches the log"));
}

/// Which gateway holds the lease, as each says in `/readyz` (asked until exactly one does: they
/// are other processes, with nothing to wait on but their answers).
async fn leaseholder(client: &reqwest::Client, gateways: &[(std::path::PathBuf, Gateway)]) -> usize {
    for _ in 0..200 {
        let mut holders = Vec::new();
        for (i, (_, gateway)) in gateways.iter().enumerate() {
            let ready: Value = client.get(gateway.url("/readyz")).send().await.unwrap().json().await.unwrap();
            if !ready["lease"]["term"].is_null() {
                holders.push(i);
            }
        }
        if let [holder] = holders[..] {
            return holder;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no single gateway took the lease");
}

/// The shared log, read directly, woken by the gateways' own notifications.
struct Log {
    client: tokio_postgres::Client,
    notified: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Log {
    async fn connect(url: &str) -> Log {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        let (tx, notified) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if matches!(message, AsyncMessage::Notification(_)) && tx.send(()).is_err() {
                    return;
                }
            }
        });
        client.batch_execute("LISTEN meshgate_events").await.unwrap();
        Log { client, notified }
    }

    async fn count(&self, event_type: &str) -> i64 {
        self.client
            .query_one("SELECT count(*) FROM meshgate_events WHERE type = $1", &[&event_type])
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until the log holds `n` events of a type, looking again at each commit.
    async fn wait_for(mut self, event_type: &str, n: i64) -> Log {
        loop {
            let seen = self.count(event_type).await;
            if seen >= n {
                return self;
            }
            let next = tokio::time::timeout(Duration::from_secs(60), self.notified.recv()).await;
            assert!(next.is_ok_and(|n| n.is_some()), "{seen} of {n} {event_type} after a minute");
        }
    }

    async fn data(&self, event_type: &str) -> Vec<Value> {
        let rows = self.client.query("SELECT data FROM meshgate_events WHERE type = $1", &[&event_type]).await.unwrap();
        rows.iter().map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap()).collect()
    }

    async fn correlations(&self, event_type: &str) -> HashSet<String> {
        let rows = self
            .client
            .query("SELECT correlation_id FROM meshgate_events WHERE type = $1", &[&event_type])
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, uuid::Uuid>(0).to_string()).collect()
    }
}

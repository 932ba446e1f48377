//! Repeated crashes: a gateway under webhook load, with two workers and a Matrix sink on a real
//! Synapse, killed with SIGKILL at a random moment each round and restarted. Each round's load is
//! a team's: many clients at once, most deliveries events no trigger watches (comments, work items,
//! other transitions) or copies, a few changes that start builds. After every round `projections
//! rebuild --verify` must pass; after all of them no delivery that got a 200 is missing, no change
//! has two builds, every build finished, and every chat line reached the room once.
//!
//! The test command runs a few light rounds; `scripts/chaos.sh 50 20 SEED` runs the heavy ones
//! (`MESHGATE_CHAOS_ROUNDS`, `MESHGATE_CHAOS_DELIVERIES` per round, `MESHGATE_CHAOS_CLIENTS`,
//! `MESHGATE_CHAOS_CHANGES` per round, `MESHGATE_WORKER_CHAOS_ROUNDS`, `MESHGATE_CHAOS_SEED`;
//! docs/reliability.md).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshgate::store::sqlite::query;
use meshgate::store::EventFilter;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::helpers::*;
use crate::matrix::start_synapse_limited;
use crate::process::{start, token, Gateway, BIN};
use crate::workers::{agent, scripts_file};

/// Events no trigger watches, sent as the bulk of each round's deliveries (each for an issue of
/// its own, so they never touch the changes' intents).
const NOISE: [&str; 6] = [
    "mob-commentAdded.json",
    "mob-issueUpdated-state-open.json",
    "mob-workItemAdded.json",
    "mob-workItemUpdated.json",
    "mob-issueAttachmentAdded.json",
    "mob-commentUpdated.json",
];

/// splitmix64: a seeded sequence, so a failing round can be run again.
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % below
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

/// Counts events of `types` about the builds of `issues` on the gateway's live tail (from the
/// position `after`, where the round began) until `wanted` distinct (type, build, key) triples are
/// seen; returns the last position read. (Read from the round's start, not the log's: a round's
/// wait stays the same length however many rounds came before.)
async fn wait_for_events(
    gateway: &Gateway,
    admin: &str,
    after: u64,
    issues: &HashSet<String>,
    types: &[&str],
    wanted: usize,
) -> u64 {
    let client = reqwest::Client::new();
    let url = gateway.url(&format!("/api/v1/events/stream?after={after}"));
    let mut answer = client.get(url).bearer_auth(admin).send().await.unwrap();
    let mut builds = HashSet::new();
    let mut last = after;
    let mut seen = HashSet::new();
    let mut pending = String::new();
    let mut event = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < wanted {
        let chunk = tokio::time::timeout_at(deadline, answer.chunk()).await;
        let chunk = chunk.unwrap_or_else(|_| panic!("saw {} of {wanted} {types:?} in 120 s", seen.len()));
        pending.push_str(&String::from_utf8_lossy(&chunk.unwrap().expect("the tail ended")));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if let Some(kind) = line.strip_prefix("event:") {
                event = kind.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                let data: Value = serde_json::from_str(data.trim()).unwrap();
                last = last.max(data["position"].as_u64().unwrap_or(0));
                let build = data["data"]["build_id"].to_string();
                if event == "BuildRequested" && issues.contains(data["data"]["issue_id"].as_str().unwrap_or_default()) {
                    builds.insert(build.clone());
                }
                if types.contains(&event.as_str()) && builds.contains(&build) {
                    seen.insert((event.clone(), build, data["data"]["key"].to_string()));
                }
            }
        }
    }
    last
}

fn verify(config: &Path) {
    let verify = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "projections", "rebuild", "--verify"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("the read model matches the log"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_at_random_moments_round_after_round_loses_nothing_and_repeats_nothing() {
    let rounds = env_number("MESHGATE_CHAOS_ROUNDS").unwrap_or(3) as usize;
    // Changes that start builds per round (each delivered twice), deliveries per round in all (the
    // rest: events no trigger watches, and further copies of the changes), and clients at once.
    let changes = env_number("MESHGATE_CHAOS_CHANGES").unwrap_or(6) as usize;
    let per_round = (env_number("MESHGATE_CHAOS_DELIVERIES").unwrap_or(200) as usize).max(2 * changes);
    let senders = env_number("MESHGATE_CHAOS_CLIENTS").unwrap_or(64) as usize;
    let seed = env_number("MESHGATE_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!(
        "chaos: {rounds} rounds of {per_round} deliveries ({changes} changes) from {senders} clients, seed {seed}"
    );
    let mut dice = Dice(seed);

    let synapse = start_synapse_limited(100.0, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    // One port for every restart: the workers keep their gateway URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    config.server.listen = ([127, 0, 0, 1], port).into();
    config.chat = vec![synapse.sink(dir.path())];
    config.outbound.retry_base_ms = 50;
    config.nodes.lease_seconds = 3;
    let config_file = dir.path().join("meshgate.toml");
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    let args = ["--config", config_file.to_str().unwrap()];
    let webhook = token(dir.path(), "webhook.token");
    let admin = token(dir.path(), "admin.token");
    let building = fixture("mob-issueUpdated-state-building.json");
    let noise: Vec<String> = NOISE.iter().map(|name| fixture(name)).collect();
    let scripts = scripts_file(dir.path(), &[("ios-build", "ok.sh")]);
    let (tx, _lines) = std::sync::mpsc::channel();
    let url = format!("http://127.0.0.1:{port}");
    let _workers = [
        agent(dir.path(), &url, "mac-1", "", 2, &scripts, &tx),
        agent(dir.path(), &url, "mac-2", "", 2, &scripts, &tx),
    ];

    let client = reqwest::Client::new();
    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let started = Instant::now();
    // Where the last round's wait ended: each round reads the tail from there.
    let mut position = 0;
    for round in 0..rounds {
        let gateway = start(dir.path(), &args, &[]);
        let issues: Vec<String> = (0..changes).map(|i| format!("MOB-{}", round * changes + i)).collect();
        let mut bodies = Vec::new();
        for issue in &issues {
            for copy in 0..2 {
                let stamp = format!("2026-08-24T10:00:00.{copy:03}Z");
                bodies.push((issue.clone(), with(&building, &json!({"id": issue, "timestamp": stamp}))));
            }
        }
        // The bulk: three in four events no trigger watches, one in four a further copy of a change
        // (another URL, a proxy's retry), in an order the seed shuffles.
        for n in bodies.len()..per_round {
            if n % 4 == 3 {
                let issue = &issues[dice.next(changes as u64) as usize];
                let stamp = format!("2026-08-24T10:00:01.{:03}Z", n % 1000);
                bodies.push((issue.clone(), with(&building, &json!({"id": issue, "timestamp": stamp}))));
            } else {
                let issue = format!("MOB-{}", 1_000_000 + round * per_round + n);
                let body = &noise[dice.next(noise.len() as u64) as usize];
                bodies.push((issue.clone(), with(body, &json!({"id": issue}))));
            }
        }
        for i in (1..bodies.len()).rev() {
            bodies.swap(i, dice.next(i as u64 + 1) as usize);
        }
        // The clients post the round's deliveries at once; the gateway is killed after a random
        // number of them were answered 200 (0: before the first).
        let kill_after = dice.next(bodies.len() as u64 + 1) as usize;
        let answered = Arc::new(AtomicUsize::new(0));
        let moment = Arc::new(Notify::new());
        let unanswered: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let mut clients = Vec::new();
        for part in bodies.chunks(bodies.len().div_ceil(senders)) {
            let (part, client, accepted, answered, moment, unanswered) =
                (part.to_vec(), client.clone(), accepted.clone(), answered.clone(), moment.clone(), unanswered.clone());
            let (target, webhook) = (gateway.url("/youtrack/webhook"), webhook.clone());
            clients.push(tokio::spawn(async move {
                for (issue, body) in part {
                    let sent = client
                        .post(&target)
                        .header("X-YouTrack-Token", &webhook)
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let answer = match sent {
                        Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                        _ => None,
                    };
                    match answer {
                        Some(answer) => {
                            accepted
                                .lock()
                                .unwrap()
                                .push((answer["correlation_id"].as_str().unwrap().to_owned(), issue));
                            if answered.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                                moment.notify_one();
                            }
                        }
                        None => unanswered.lock().unwrap().push((issue, body)),
                    }
                }
            }));
        }
        let mut gateway = gateway;
        if kill_after > 0 {
            moment.notified().await;
        }
        gateway.child.kill().unwrap(); // SIGKILL
        gateway.child.wait().unwrap();
        for c in clients {
            let _ = c.await;
        }

        // Restarted: what was not answered is sent again (a sweep would find it); copies fold.
        let gateway = start(dir.path(), &args, &[]);
        let resend: Vec<(String, String)> = unanswered.lock().unwrap().drain(..).collect();
        for (issue, body) in resend {
            let answer = client
                .post(gateway.url("/youtrack/webhook"))
                .header("X-YouTrack-Token", &webhook)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200, "after the restart");
            let answer: Value = answer.json().await.unwrap();
            accepted.lock().unwrap().push((answer["correlation_id"].as_str().unwrap().to_owned(), issue));
        }
        let round_issues: HashSet<String> = issues.iter().cloned().collect();
        let start = position;
        let a = wait_for_events(&gateway, &admin, start, &round_issues, &["BuildSucceeded"], changes).await;
        let b = wait_for_events(&gateway, &admin, start, &round_issues, &["NotificationDelivered"], 3 * changes).await;
        position = a.max(b);
        gateway.stop();
        verify(&config_file);
        eprintln!("chaos: round {} killed after {kill_after} answers; clean", round + 1);
    }
    eprintln!("chaos: {rounds} rounds in {:?}", started.elapsed());

    // Every delivery that got a 200 is in the log; one build per change, every one finished.
    let log = meshgate::store::sqlite::open_read_only(&dir.path().join("data/events.sqlite")).unwrap();
    let of_type = |t: &str| {
        query(&log, &EventFilter { event_type: Some(t.into()), ..Default::default() }, 0, usize::MAX).unwrap()
    };
    let received: HashSet<String> = of_type("WebhookReceived").iter().map(|e| e.correlation_id.to_string()).collect();
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    for (correlation_id, issue) in accepted.iter() {
        assert!(received.contains(correlation_id), "accepted delivery {correlation_id} for {issue} is not in the log");
    }
    assert!(accepted.len() >= rounds * per_round, "every delivery was answered 200, at last");
    eprintln!("chaos: {} deliveries acknowledged, every one in the log", accepted.len());
    let mut builds = HashMap::<String, usize>::new();
    for e in of_type("BuildRequested") {
        let data: Value = serde_json::from_str(&e.data).unwrap();
        *builds.entry(data["issue_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let issues = rounds * changes;
    assert_eq!(builds.len(), issues);
    assert!(builds.values().all(|n| *n == 1), "a change got two builds: {builds:?}");
    assert_eq!(of_type("BuildSucceeded").len(), issues, "every build finished once");

    // Every chat line reached the room exactly once.
    let notices: Vec<String> = synapse.notices().await.iter().map(|l| unnamed(l)).collect();
    for n in 0..issues {
        for line in [format!("⏳ MOB-{n} queued"), format!("🔨 MOB-{n} running"), format!("✅ MOB-{n} succeeded")] {
            let times = notices.iter().filter(|l| l.starts_with(&format!("{line} ")) || **l == line).count();
            assert_eq!(times, 1, "`{line}` reached the room {times} times (seed {seed})");
        }
    }
    // A build whose node's lease ran out while the gateway was down is requeued (and says so once).
    let requeued: HashSet<String> = of_type("BuildRequeued").iter().map(|e| e.stream.clone()).collect();
    let requeue_lines = notices.iter().filter(|l| l.starts_with("🔁 ")).count();
    assert_eq!(requeue_lines, requeued.len(), "one requeue line per requeued build (seed {seed})");
    assert_eq!(notices.len(), 3 * issues + requeue_lines, "{notices:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_build_round_after_round_is_replaced_and_its_late_result_refused_every_time() {
    use crate::workers::{deliver, events, gateway, wait_for};
    let rounds = env_number("MESHGATE_WORKER_CHAOS_ROUNDS").unwrap_or(2) as usize;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path()); // lease 2 s
    let scripts = scripts_file(dir.path(), &[("ios-build", "slow-first-attempt.sh"), ("ios-sign", "ok.sh")]);
    let (tx, lines) = std::sync::mpsc::channel();
    let mut waits = Vec::new();
    for round in 0..rounds {
        let mut doomed = agent(dir.path(), &gw.url(""), &format!("doomed-{round}"), "", 1, &scripts, &tx);
        deliver(&gw, dir.path(), &format!("MOB-{round}")).await;
        let started = wait_for(&lines, "started", 1);
        let build_id = started[0].1.split_whitespace().nth(1).unwrap().to_owned();
        doomed.child.kill().unwrap(); // SIGKILL mid-build
        doomed.child.wait().unwrap();
        let killed = Instant::now();

        // Another node takes the build once its lease has run out, and finishes attempt 2.
        let rescuer = agent(dir.path(), &gw.url(""), &format!("rescuer-{round}"), "", 1, &scripts, &tx);
        wait_for(&lines, &format!("started {build_id} attempt 2"), 1);
        waits.push(killed.elapsed());
        let reported = wait_for(&lines, &format!("reported {build_id} attempt 2"), 1);
        assert!(reported[0].1.ends_with("accepted"));
        drop(rescuer);

        // The killed node's attempt reports late: refused.
        let late = reqwest::Client::new()
            .post(gw.url(&format!("/api/v1/builds/{build_id}/result")))
            .bearer_auth(token(dir.path(), "nodes.token"))
            .json(
                &json!({"node_id": format!("doomed-{round}"), "attempt": 1, "outcome": "succeeded", "duration_ms": 1}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(late.status(), 409, "round {round}");
    }
    gw.stop();
    let longest = waits.iter().max().unwrap();
    eprintln!("worker chaos: {rounds} rounds, kill to attempt 2 started: longest {longest:?} (lease 2 s)");
    // How long after a lease ran out its build may wait to be requeued: the reaper looks every
    // 250 ms; the rest is room for a loaded machine (a reaper that stopped would never requeue).
    let bound = chrono::Duration::seconds(5);
    assert_eq!(events(dir.path(), "BuildSucceeded").len(), rounds, "one accepted result per build");
    assert_eq!(events(dir.path(), "BuildRequeued").len(), rounds);
    assert!(events(dir.path(), "BuildResultRejected").len() >= rounds);
    // The bound that matters, from the log: no build was requeued before the lease its killed
    // node last held had run out (the reaper's own clock, recorded with each event).
    let conn = meshgate::store::sqlite::open_read_only(&dir.path().join("data/events.sqlite")).unwrap();
    let log = query(&conn, &EventFilter::default(), 0, usize::MAX).unwrap();
    let mut lease: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut requeues = 0;
    let mut latest = chrono::Duration::zero();
    for event in &log {
        let data: Value = serde_json::from_str(&event.data).unwrap();
        match event.event_type.as_str() {
            "BuildClaimed" | "BuildLeaseRenewed" => {
                let until = serde_json::from_value(data["lease_expires_at"].clone()).unwrap();
                lease.insert(event.stream.clone(), until);
            }
            "BuildRequeued" => {
                requeues += 1;
                let held = lease[&event.stream];
                assert!(
                    event.recorded_at >= held,
                    "{} requeued at {} before its lease ended at {held}",
                    event.stream,
                    event.recorded_at
                );
                let late = event.recorded_at - held;
                assert!(late <= bound, "{} requeued {late} after its lease ended (bound {bound})", event.stream);
                latest = latest.max(late);
            }
            _ => {}
        }
    }
    assert_eq!(requeues, rounds);
    eprintln!("worker chaos: requeued at most {} ms after the lease ended", latest.num_milliseconds());
}

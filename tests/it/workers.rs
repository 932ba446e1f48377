//! Real processes: a gateway and `meshgate worker` agents running the shell scripts in
//! `fixtures/scripts/`. Waits are on the agents' output lines, read through a channel.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use meshgate::store::sqlite::query;
use meshgate::store::EventFilter;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::process::{start, token, Gateway, BIN};

fn gateway_toml() -> String {
    std::fs::read_to_string(fixtures().join("config/two-lanes.toml")).unwrap()
}

pub fn scripts_file(dir: &Path, scripts: &[(&str, &str)]) -> String {
    scripts_file_with_timeouts(dir, &scripts.iter().map(|(n, s)| (*n, *s, 60)).collect::<Vec<_>>())
}

fn scripts_file_with_timeouts(dir: &Path, scripts: &[(&str, &str, u64)]) -> String {
    let fixtures = fixtures().join("scripts");
    let mut toml = String::new();
    for (name, script, timeout) in scripts {
        toml.push_str(&format!(
            "[scripts.{name}]\ncommand = [\"bash\", \"{}\"]\ntimeout_seconds = {timeout}\n\n",
            fixtures.join(script).display()
        ));
    }
    let path = dir.join("scripts.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_string_lossy().into_owned()
}

/// A gateway in `dir` with the two-lane config above.
pub fn gateway(dir: &Path) -> Gateway {
    test_config(dir, vec![]); // writes the token files
    std::fs::write(dir.join("meshgate.toml"), gateway_toml()).unwrap();
    start(dir, &["--config", dir.join("meshgate.toml").to_str().unwrap()], &[])
}

pub struct Agent {
    pub child: Child,
}

impl Agent {
    /// An agent started by the caller, stopped with the test.
    pub fn from_child(child: Child) -> Agent {
        Agent { child }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meshgate worker`; its stdout lines arrive on `lines` as (node, line).
pub fn agent(
    dir: &Path,
    gateway: &str,
    node: &str,
    labels: &str,
    slots: usize,
    scripts: &str,
    lines: &mpsc::Sender<(String, String)>,
) -> Agent {
    let work = dir.join(format!("work-{node}"));
    let mut child = Command::new(BIN)
        .args(["worker", "--gateway", gateway, "--node-id", node, "--labels", labels])
        // As a node of a gateway with a private CA is set up (harmless over plain HTTP).
        .args(["--ca-file", crate::pki::pki().ca_file.to_str().unwrap()])
        .args(["--slots", &slots.to_string(), "--token-file", dir.join("nodes.token").to_str().unwrap()])
        .args(["--scripts", scripts, "--work-dir", work.to_str().unwrap(), "--claim-wait", "5", "--drain-seconds", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (node, lines) = (node.to_owned(), lines.clone());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines.send((node.clone(), line)).is_err() {
                return;
            }
        }
    });
    Agent { child }
}

/// Waits for `n` lines starting with `prefix` (a bounded wait on the channel, no polling).
pub fn wait_for(lines: &mpsc::Receiver<(String, String)>, prefix: &str, n: usize) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok((node, line)) if line.starts_with(prefix) => seen.push((node, line)),
            Ok(_) => {}
            Err(e) => panic!("waiting for {n} `{prefix}` lines, saw {}: {e}", seen.len()),
        }
    }
    seen
}

pub async fn deliver(gw: &Gateway, dir: &Path, issue: &str) {
    let body = with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": issue}));
    let response = crate::pki::https_client()
        .post(gw.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", token(dir, "webhook.token"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

pub fn events(dir: &Path, event_type: &str) -> Vec<(u64, Value)> {
    let conn = meshgate::store::sqlite::open_read_only(&dir.join("data/events.sqlite")).unwrap();
    query(&conn, &EventFilter { event_type: Some(event_type.into()), ..Default::default() }, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.position, serde_json::from_str(&e.data).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_spread_over_real_workers_within_lanes_caps_and_slots() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let scripts = scripts_file(dir.path(), &[("ios-build", "ok.sh"), ("ios-sign", "ok.sh")]);
    let (tx, lines) = mpsc::channel();
    let slots: HashMap<&str, usize> = [("mac-1", 2), ("mac-2", 2), ("mac-3", 1)].into();
    let _agents = [
        agent(dir.path(), &gw.url(""), "mac-1", "signing", 2, &scripts, &tx),
        agent(dir.path(), &gw.url(""), "mac-2", "", 2, &scripts, &tx),
        agent(dir.path(), &gw.url(""), "mac-3", "signing", 1, &scripts, &tx),
    ];
    for n in 1..=5 {
        deliver(&gw, dir.path(), &format!("MOB-{n}")).await;
    }
    let reported = wait_for(&lines, "reported", 10);
    assert!(reported.iter().all(|(_, l)| l.ends_with("accepted")), "{reported:?}");

    // The uploaded log carries the facts the script was given.
    let build = events(dir.path(), "BuildRequested").into_iter().find(|(_, d)| d["lane"] == "default").unwrap().1;
    let log = reqwest::Client::new()
        .get(gw.url(&format!("/api/v1/builds/{}/log", build["build_id"].as_str().unwrap())))
        .bearer_auth(token(dir.path(), "admin.token"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let issue = build["issue_id"].as_str().unwrap();
    assert!(log.contains(&format!("building {issue} at feature/{issue} attempt 1")), "{log}");
    gw.stop();

    // From the log: every build succeeded once, signing builds ran only on labelled nodes and
    // never two at a time, and no node ran more builds than its slots.
    assert_eq!(events(dir.path(), "BuildSucceeded").len(), 10);
    let lanes: HashMap<String, String> = events(dir.path(), "BuildRequested")
        .into_iter()
        .map(|(_, d)| (d["build_id"].as_str().unwrap().to_owned(), d["lane"].as_str().unwrap().to_owned()))
        .collect();
    let mut timeline: Vec<(u64, String, Option<String>)> = events(dir.path(), "BuildClaimed")
        .into_iter()
        .map(|(p, d)| (p, d["build_id"].as_str().unwrap().to_owned(), Some(d["node_id"].as_str().unwrap().to_owned())))
        .collect();
    timeline.extend(
        events(dir.path(), "BuildSucceeded")
            .into_iter()
            .map(|(p, d)| (p, d["build_id"].as_str().unwrap().to_owned(), None)),
    );
    timeline.sort();
    let (mut running, mut signing, mut on_node) = (HashMap::new(), 0, HashMap::<String, usize>::new());
    let mut nodes_used = std::collections::HashSet::new();
    for (_, build, node) in timeline {
        let lane = &lanes[&build];
        match node {
            Some(node) => {
                assert!(lane != "signing" || node != "mac-2", "a signing build ran on a node without the label");
                nodes_used.insert(node.clone());
                *on_node.entry(node.clone()).or_default() += 1;
                assert!(on_node[&node] <= slots[node.as_str()], "{node} exceeded its slots");
                if lane == "signing" {
                    signing += 1;
                    assert!(signing <= 1, "the signing lane exceeded max_running = 1");
                }
                running.insert(build, node);
            }
            None => {
                let node = running.remove(&build).unwrap();
                *on_node.get_mut(&node).unwrap() -= 1;
                if lane == "signing" {
                    signing -= 1;
                }
            }
        }
    }
    assert!(nodes_used.len() >= 2, "builds were not spread over nodes: {nodes_used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_reports_its_exit_code_failing_test_and_log_tail_and_an_unknown_script_fails() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let scripts = scripts_file(dir.path(), &[("ios-build", "fail.sh")]); // no ios-sign here
    let (tx, lines) = mpsc::channel();
    let _agent = agent(dir.path(), &gw.url(""), "mac-1", "signing", 2, &scripts, &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    wait_for(&lines, "reported", 2);
    gw.stop();
    let failed = events(dir.path(), "BuildFailed");
    assert_eq!(failed.len(), 2);
    let by_reason: HashMap<String, Value> =
        failed.into_iter().map(|(_, d)| (d["reason"].as_str().unwrap().to_owned(), d)).collect();
    let tests = &by_reason["script_failed"]["report"];
    assert_eq!(tests["exit_code"], 65);
    assert_eq!(tests["failing_test"], "AppTests.testOffline");
    assert!(tests["log_tail"].as_str().unwrap().contains("** TEST FAILED **"));
    assert_eq!(tests["node_id"], "mac-1");
    let unknown = &by_reason["unknown_script"]["report"];
    assert!(unknown["log_tail"].as_str().unwrap().contains("script `ios-sign` is not configured on node mac-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_build_is_replaced_and_its_late_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let scripts = scripts_file(dir.path(), &[("ios-build", "slow-first-attempt.sh"), ("ios-sign", "ok.sh")]);
    let (tx, lines) = mpsc::channel();
    let mut doomed = agent(dir.path(), &gw.url(""), "mac-1", "", 1, &scripts, &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let started = wait_for(&lines, "started", 1);
    let build_id = started[0].1.split_whitespace().nth(1).unwrap().to_owned();
    doomed.child.kill().unwrap(); // SIGKILL mid-build
    doomed.child.wait().unwrap();

    // Another node picks the build up once the lease has expired, and finishes attempt 2.
    let _rescuer = agent(dir.path(), &gw.url(""), "mac-2", "", 1, &scripts, &tx);
    let reported = wait_for(&lines, &format!("reported {build_id} attempt 2"), 1);
    assert!(reported[0].1.ends_with("accepted"));

    // The killed node's attempt reports late: refused.
    let late = reqwest::Client::new()
        .post(gw.url(&format!("/api/v1/builds/{build_id}/result")))
        .bearer_auth(token(dir.path(), "nodes.token"))
        .json(&json!({"node_id": "mac-1", "attempt": 1, "outcome": "succeeded", "duration_ms": 20000}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 409);
    gw.stop();

    let accepted: Vec<_> =
        events(dir.path(), "BuildSucceeded").into_iter().filter(|(_, d)| d["build_id"] == build_id.as_str()).collect();
    assert_eq!(accepted.len(), 1, "exactly one accepted result");
    assert_eq!(accepted[0].1["attempt"], 2);
    assert_eq!(events(dir.path(), "BuildRequeued").len(), 1);
    assert!(!events(dir.path(), "BuildResultRejected").is_empty());
}

/// A gateway like `gateway()`, with its own lease and a fixed port (to come back on after a stop).
fn gateway_with(dir: &Path, lease_seconds: u64, port: u16) -> Gateway {
    test_config(dir, vec![]);
    let toml = gateway_toml()
        .replace("lease_seconds = 2", &format!("lease_seconds = {lease_seconds}"))
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(dir.join("meshgate.toml"), toml).unwrap();
    start(dir, &["--config", dir.join("meshgate.toml").to_str().unwrap()], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_made_while_the_gateway_is_down_is_spooled_and_delivered_after_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with(dir.path(), 120, 0);
    let port = gw.addr.port();
    let scripts = scripts_file(dir.path(), &[("ios-build", "wait-for-release.sh")]);
    let (tx, lines) = mpsc::channel();
    let _agent = agent(dir.path(), &gw.url(""), "mac-1", "", 1, &scripts, &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    wait_for(&lines, "started", 1);
    gw.stop();
    // The build finishes while the gateway is away: its result goes to the spool.
    std::fs::write(dir.path().join("work-mac-1/release"), "").unwrap();
    let spooled = wait_for(&lines, "reported", 1);
    assert!(spooled[0].1.ends_with("spooled"), "{spooled:?}");
    // The gateway comes back on the same address; the spooled result is delivered (earlier
    // retries of the spool may still say `spooled` before that).
    let gw = gateway_with(dir.path(), 120, port);
    let build_id = spooled[0].1.split_whitespace().nth(1).unwrap();
    wait_for(&lines, &format!("reported {build_id} attempt 1 accepted"), 1);
    gw.stop();
    let succeeded = events(dir.path(), "BuildSucceeded");
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0].1["report"]["commit_sha"], "0123456789abcdef0123456789abcdef01234567");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_past_its_timeout_is_killed_and_the_build_fails_with_reason_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with(dir.path(), 30, 0);
    let scripts = scripts_file_with_timeouts(dir.path(), &[("ios-build", "wait-for-release.sh", 1)]);
    let (tx, lines) = mpsc::channel();
    let _agent = agent(dir.path(), &gw.url(""), "mac-1", "", 1, &scripts, &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let finished = wait_for(&lines, "finished", 1);
    assert!(finished[0].1.ends_with("failed"), "{finished:?}");
    wait_for(&lines, "reported", 1);
    gw.stop();
    let failed = events(dir.path(), "BuildFailed");
    assert_eq!(failed[0].1["reason"], "timeout");
    assert!(failed[0].1["report"]["log_tail"].as_str().unwrap().contains("waiting for release"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_and_reports_a_build_still_running_after_the_grace_period_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let scripts = scripts_file(dir.path(), &[("ios-build", "wait-for-release.sh")]);
    let (tx, lines) = mpsc::channel();
    let worker = agent(dir.path(), &gw.url(""), "mac-1", "", 2, &scripts, &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    wait_for(&lines, "started", 1);
    let status = Command::new("kill").args(["-TERM", &worker.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(&lines, "draining", 1);
    // Never released: stopped after the grace period (5 s here) and reported cancelled.
    let reported = wait_for(&lines, "reported", 1);
    assert!(reported[0].1.ends_with("accepted"));
    wait_for(&lines, "worker mac-1 stopped", 1);
    gw.stop();
    let cancelled = events(dir.path(), "BuildCancelled");
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].1["reason"], "stopped_on_node");
    assert!(events(dir.path(), "BuildClaimed").len() == 1, "a draining worker claims nothing new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_can_take_its_settings_from_the_worker_section_of_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let scripts = scripts_file(dir.path(), &[("ios-build", "ok.sh"), ("ios-sign", "ok.sh")]);
    let toml = format!(
        "[worker]\ngateway = \"http://{}\"\nnode_id = \"mac-from-file\"\nlabels = [\"signing\"]\nslots = 2\n\
         token_file = \"nodes.token\"\nscripts = \"{scripts}\"\nwork_dir = \"work-file\"\nclaim_wait_seconds = 5\n",
        gw.addr
    );
    std::fs::write(dir.path().join("node.toml"), toml).unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", dir.path().join("node.toml").to_str().unwrap(), "worker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(("mac-from-file".to_owned(), line));
        }
    });
    let _agent = Agent { child };
    deliver(&gw, dir.path(), "MOB-1").await;
    let reported = wait_for(&lines, "reported", 2);
    assert!(reported.iter().all(|(_, l)| l.ends_with("accepted")));
    gw.stop();
    let claims = events(dir.path(), "BuildClaimed");
    assert!(claims.iter().all(|(_, d)| d["node_id"] == "mac-from-file"));
}

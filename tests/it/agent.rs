//! The build agent as a deployment runs it: a gateway over HTTPS whose configuration lives in a
//! folder other than its working directory, a generic chat stand-in over HTTPS, and agents
//! (`meshgate worker`, the agent crate behind the gateway's binary) running the scripts of
//! `fixtures/scripts/agent/`. Waits are on the agents' output lines and the stand-in's requests,
//! read through channels; none polls. One test builds `meshgate-worker` alone and runs it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::process::{start, token, with_tls, Gateway, BIN};
use crate::stand_in::{stand_in, StandIn};
use crate::workers::{deliver, events, wait_for, Agent};

fn script(name: &str) -> String {
    format!("[\"bash\", \"{}\"]", fixtures().join("scripts/agent").join(name).display())
}

/// A gateway over HTTPS with the `ios-build` trigger, a generic chat sink on `chat`, and
/// `nodes` / `extra` settings; its configuration is in `dir`, its working directory elsewhere.
fn gateway(dir: &Path, chat: &StandIn, nodes: &str, extra: &str) -> Gateway {
    test_config(dir, vec![]); // the token files
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n\
         [webhook]\ntoken_files = [\"webhook.token\"]\n\n[admin]\ntoken_file = \"admin.token\"\n\n\
         [nodes]\ntoken_file = \"nodes.token\"\nlease_seconds = 6\nmax_attempts = 2\nclaim_wait_seconds = 5\n{nodes}\n\n\
         [outbound]\nca_file = \"{ca}\"\nretry_base_ms = 50\n\n\
         [[chat]]\nname = \"team\"\nkind = \"generic\"\nurl = \"{url}\"\n\n\
         [[triggers]]\nname = \"ios-build\"\nprojects = [\"MOB\"]\nfield = \"State\"\nto = [\"Building\"]\n\
         script = \"ios-build\"\ngit_ref = \"feature/{{issue}}\"\n\n{extra}",
        ca = crate::pki::pki().ca_file.display(),
        url = chat.url("/hook"),
    );
    let config = dir.join("meshgate.toml");
    std::fs::write(&config, with_tls(dir, &toml)).unwrap();
    let gateway = start(dir, &["--config", config.to_str().unwrap()], &[]);
    assert_eq!(gateway.scheme, "https");
    gateway
}

/// Writes a scripts file named `name` in `dir`.
fn scripts(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `meshgate worker` for node `node` with the scripts file `scripts` and `extra` flags, in
/// a working directory of its own; its lines arrive on `lines`.
fn agent(
    dir: &Path,
    gw: &Gateway,
    node: &str,
    scripts: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    lines: &mpsc::Sender<(String, String)>,
) -> Agent {
    agent_at(dir, &gw.url(""), node, scripts, extra, env, lines)
}

/// [`agent`] for the node API at `base`.
fn agent_at(
    dir: &Path,
    base: &str,
    node: &str,
    scripts: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    lines: &mpsc::Sender<(String, String)>,
) -> Agent {
    let cwd = dir.join(format!("cwd-{node}"));
    std::fs::create_dir_all(&cwd).unwrap();
    let stderr = std::fs::File::create(dir.join(format!("agent-{node}.log"))).unwrap();
    let mut command = Command::new(BIN);
    command
        .current_dir(&cwd)
        .args(["worker", "--gateway", base, "--node-id", node])
        .args(["--ca-file", crate::pki::pki().ca_file.to_str().unwrap()])
        .args(["--token-file", dir.join("nodes.token").to_str().unwrap()])
        .args(["--scripts", scripts.to_str().unwrap()])
        .args(["--work-dir", dir.join(format!("work-{node}")).to_str().unwrap()])
        .args(["--claim-wait", "2", "--drain-seconds", "5"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    forward(node, child.stdout.take().unwrap(), lines);
    Agent::from_child(child)
}

fn forward(node: &str, stdout: impl Read + Send + 'static, lines: &mpsc::Sender<(String, String)>) {
    let (node, lines) = (node.to_owned(), lines.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send((node.clone(), line)).is_err() {
                return;
            }
        }
    });
}

/// The build id in an agent's `started`, `finished` or `reported` line.
fn build_of(line: &(String, String)) -> String {
    line.1.split_whitespace().nth(1).unwrap().to_owned()
}

/// The data of the one event of `event_type` about `build`.
fn event_of(dir: &Path, event_type: &str, build: &str) -> Value {
    let found: Vec<Value> =
        events(dir, event_type).into_iter().map(|(_, d)| d).filter(|d| d["build_id"] == build).collect();
    assert_eq!(found.len(), 1, "{event_type} of {build}: {found:?}");
    found.into_iter().next().unwrap()
}

/// The chat stand-in's next line about `milestone`, skipping the others.
async fn chat_line(chat: &mut StandIn, milestone: &str) -> Value {
    loop {
        let received = chat.next().await;
        if received.body["state"] == milestone {
            return received.body;
        }
    }
}

/// The node's own copy of an attempt's log.
fn node_log(dir: &Path, node: &str, build: &str, attempt: u32) -> String {
    std::fs::read_to_string(dir.join(format!("work-{node}/logs/{build}-{attempt}.log"))).unwrap()
}

/// Follows a log link until `needle` has arrived: the answer, still open, and what it said.
async fn follow_until(link: &str, needle: &str) -> (reqwest::Response, String) {
    let mut followed = crate::pki::https_client().get(format!("{link}&follow=true")).send().await.unwrap();
    assert_eq!(followed.status(), 200);
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = followed.chunk().await.unwrap().expect("more of the log before the build ends");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    (followed, text)
}

async fn admin_get(gw: &Gateway, dir: &Path, path: &str) -> reqwest::Response {
    crate::pki::https_client().get(gw.url(path)).bearer_auth(token(dir, "admin.token")).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_stopped_by_its_timeout_gets_sigterm_first_and_sigkill_only_if_it_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    let gw = gateway(dir.path(), &chat, "", "");
    let (tx, lines) = mpsc::channel();
    // A script that shuts down on SIGTERM, then one that ignores it.
    for (n, name, signal) in [(1, "trap-term.sh", "terminated"), (2, "ignore-term.sh", "killed")] {
        let file = scripts(
            dir.path(),
            &format!("scripts-{n}.toml"),
            &format!("[scripts.ios-build]\ncommand = {}\ntimeout_seconds = 2\nstop_grace_seconds = 1\n", script(name)),
        );
        let node = format!("mac-{n}");
        let _agent = agent(dir.path(), &gw, &node, &file, &[], &[], &tx);
        deliver(&gw, dir.path(), &format!("MOB-{n}")).await;
        let reported = wait_for(&lines, "reported", 1);
        assert!(reported[0].1.ends_with("accepted"), "{reported:?}");
        let build = build_of(&reported[0]);
        let failed = event_of(dir.path(), "BuildFailed", &build);
        assert_eq!(failed["reason"], "timeout", "{failed}");
        assert_eq!(failed["report"]["stop"], json!({"cause": "timeout", "signal": signal}), "{name}");
        let log = node_log(dir.path(), &node, &build, 1);
        if signal == "terminated" {
            assert!(log.contains("got SIGTERM, shutting the simulator down"), "{log}");
            assert!(log.contains("meshgate: script ended after SIGTERM"), "{log}");
        } else {
            assert!(log.contains("meshgate: script killed with SIGKILL"), "{log}");
        }
        // The stored log is the node's.
        let stored = admin_get(&gw, dir.path(), &format!("/api/v1/builds/{build}/log")).await.text().await.unwrap();
        assert_eq!(stored, log);
    }
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_build_stops_its_script_with_sigterm_and_draining_reports_how_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    let gw = gateway(dir.path(), &chat, "", "");
    let file =
        scripts(dir.path(), "scripts.toml", &format!("[scripts.ios-build]\ncommand = {}\n", script("trap-term.sh")));
    let (tx, lines) = mpsc::channel();
    let worker = agent(dir.path(), &gw, "mac-1", &file, &[], &[], &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let build = build_of(&wait_for(&lines, "started", 1)[0]);
    let cancel = crate::pki::https_client()
        .post(gw.url(&format!("/api/v1/builds/{build}/cancel")))
        .bearer_auth(token(dir.path(), "admin.token"))
        .json(&json!({"reason": "superseded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    // The next heartbeat says so; the script is told to stop and does.
    wait_for(&lines, &format!("finished {build} attempt 1 cancelled"), 1);
    let log = node_log(dir.path(), "mac-1", &build, 1);
    assert!(log.contains("meshgate: stopping script: the build was cancelled; SIGTERM"), "{log}");
    assert!(log.contains("got SIGTERM") && log.contains("meshgate: script ended after SIGTERM"), "{log}");

    // Draining: the agent is told to stop; its running build gets the drain time, then SIGTERM,
    // and the result says so.
    deliver(&gw, dir.path(), "MOB-2").await;
    let build = build_of(&wait_for(&lines, "started", 1)[0]);
    let status = Command::new("kill").args(["-TERM", &worker.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(&lines, &format!("reported {build} attempt 1 accepted"), 1);
    let cancelled = event_of(dir.path(), "BuildCancelled", &build);
    assert_eq!(cancelled["reason"], "stopped_on_node");
    assert_eq!(cancelled["report"]["stop"], json!({"cause": "drained", "signal": "terminated"}));
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_goes_silent_is_stopped_as_hung_and_chat_says_how_long_it_was_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let mut chat = stand_in(vec![]).await;
    let gw = gateway(dir.path(), &chat, "", "");
    let file = scripts(
        dir.path(),
        "scripts.toml",
        &format!("[scripts.ios-build]\ncommand = {}\nno_output_timeout_seconds = 2\n", script("quiet.sh")),
    );
    let (tx, lines) = mpsc::channel();
    let _agent = agent(dir.path(), &gw, "mac-1", &file, &[], &[], &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let reported = wait_for(&lines, "reported", 1);
    let build = build_of(&reported[0]);
    let failed = event_of(dir.path(), "BuildFailed", &build);
    assert_eq!(failed["reason"], "hung");
    assert_eq!(failed["report"]["no_output_seconds"], 2);
    assert_eq!(failed["report"]["stop"]["cause"], "hung");
    let line = chat_line(&mut chat, "failed").await;
    assert!(line["text"].as_str().unwrap().contains("no output for 2 s"), "{line}");
    assert!(node_log(dir.path(), "mac-1", &build, 1).contains("booting the simulator"));
    gw.stop();
}

/// A folder of applications with Xcodes of these versions (`Xcode-<v>.app`, the last one
/// `Xcode.app`), as `/Applications` holds them.
fn applications(dir: &Path, versions: &[&str]) -> PathBuf {
    let apps = dir.join("Applications");
    for (i, version) in versions.iter().enumerate() {
        let name = if i + 1 == versions.len() { "Xcode.app".to_owned() } else { format!("Xcode-{version}.app") };
        let contents = apps.join(name).join("Contents");
        std::fs::create_dir_all(contents.join("Developer")).unwrap();
        let plist = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">\n<dict>\n\
             \t<key>CFBundleShortVersionString</key>\n\t<string>{version}</string>\n</dict>\n</plist>\n"
        );
        std::fs::write(contents.join("version.plist"), plist).unwrap();
    }
    apps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_that_require_an_xcode_go_only_to_nodes_that_have_one_and_run_with_its_developer_dir() {
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    // The trigger requires any Xcode 16 (the first key continues its table); a second trigger's
    // lane requires 17.
    let next = "xcode = \"16\"\n\n[[lanes]]\nname = \"default\"\n\n[[lanes]]\nname = \"next\"\nxcode = \"17\"\n\n\
                [[triggers]]\nname = \"ios-next\"\nprojects = [\"MOB\"]\nfield = \"State\"\nto = [\"Building\"]\n\
                script = \"ios-build\"\nlane = \"next\"\ngit_ref = \"main\"\n";
    let gw = gateway(dir.path(), &chat, "", next);

    let file = scripts(dir.path(), "scripts.toml", &format!("[scripts.ios-build]\ncommand = {}\n", script("xcode.sh")));
    let apps = applications(dir.path(), &["15.4", "16.1", "16.2"]);
    let (tx, lines) = mpsc::channel();
    let search = ["--xcode-search-dir", apps.to_str().unwrap()];
    let _sixteen = agent(dir.path(), &gw, "mac-16", &file, &search, &[], &tx);
    let _plain = agent(dir.path(), &gw, "mac-plain", &file, &[], &[], &tx);
    wait_for(&lines, "worker mac-plain ready", 1);
    deliver(&gw, dir.path(), "MOB-1").await;
    let reported = wait_for(&lines, "reported", 1);
    assert_eq!(reported[0].0, "mac-16");
    let build = build_of(&reported[0]);
    let log = node_log(dir.path(), "mac-16", &build, 1);
    let developer = apps.join("Xcode.app/Contents/Developer");
    assert!(log.contains(&format!("DEVELOPER_DIR={}\n", developer.display())), "{log}");
    assert!(log.contains("MESHGATE_XCODE_VERSION=16.2\n"), "{log}");

    // Only a node with an Xcode 17 runs the other build; until one comes, it waits.
    let _seventeen = agent(dir.path(), &gw, "mac-17", &file, &["--xcode", "17.0=/Applications/Xcode-17.app"], &[], &tx);
    let reported = wait_for(&lines, "reported", 1);
    assert_eq!(reported[0].0, "mac-17");
    let next_build = build_of(&reported[0]);
    assert!(node_log(dir.path(), "mac-17", &next_build, 1).contains("MESHGATE_XCODE_VERSION=17.0"));
    let claims: Vec<(String, String)> = events(dir.path(), "BuildClaimed")
        .into_iter()
        .map(|(_, d)| (d["build_id"].as_str().unwrap().to_owned(), d["node_id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(claims, [(build.clone(), "mac-16".to_owned()), (next_build, "mac-17".to_owned())]);

    let nodes: Value = admin_get(&gw, dir.path(), "/api/v1/nodes").await.json().await.unwrap();
    let of = |id: &str| nodes["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == id).unwrap().clone();
    let sixteen = of("mac-16");
    let versions: Vec<&str> =
        sixteen["xcodes"].as_array().unwrap().iter().map(|x| x["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["15.4", "16.1", "16.2"]);
    assert_eq!(of("mac-17")["xcodes"][0]["path"], "/Applications/Xcode-17.app");
    assert_eq!(of("mac-plain")["xcodes"], json!([]));
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_prepare_every_build_clean_up_after_every_end_and_a_failing_setup_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    let gw = gateway(dir.path(), &chat, "", "");
    let (tx, lines) = mpsc::channel();
    let hooks = |before: &str| {
        format!(
            "[hooks]\nbefore_build = {before}\nafter_build = {}\n\n[scripts.ios-build]\ncommand = {}\n",
            script("hook-after.sh"),
            script("prepared.sh")
        )
    };
    // The setup works; the clean-up fails, which is reported but fails nothing.
    let file = scripts(dir.path(), "scripts-1.toml", &hooks(&script("hook-before.sh")));
    let agent_1 = agent(dir.path(), &gw, "mac-1", &file, &[], &[("AFTER_EXIT", "4")], &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let build = build_of(&wait_for(&lines, "reported", 1)[0]);
    let succeeded = event_of(dir.path(), "BuildSucceeded", &build);
    assert_eq!(succeeded["report"]["after_build"], "after_build failed (exit 4)");
    let log = node_log(dir.path(), "mac-1", &build, 1);
    let order = ["before_build", "built with the prepared folder", "after_build"];
    let at: Vec<usize> = order.iter().map(|s| log.find(s).unwrap_or_else(|| panic!("{s} missing: {log}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{log}");
    assert!(log.contains(&format!(
        "keychain {}",
        dir.path().join(format!("work-mac-1/results/{build}-1/build.keychain-db")).display()
    )));
    drop(agent_1);

    // The setup fails: the script never runs, the build fails with `setup_failed`, the clean-up
    // still runs.
    let file = scripts(
        dir.path(),
        "scripts-2.toml",
        &hooks("[\"bash\", \"-c\", \"echo the keychain is locked >&2; exit 3\"]"),
    );
    let _agent_2 = agent(dir.path(), &gw, "mac-2", &file, &[], &[], &tx);
    deliver(&gw, dir.path(), "MOB-2").await;
    let build = build_of(&wait_for(&lines, "reported", 1)[0]);
    let failed = event_of(dir.path(), "BuildFailed", &build);
    assert_eq!(failed["reason"], "setup_failed");
    assert!(!dir.path().join("work-mac-2/script-ran").exists(), "the script ran after a failed setup");
    let after = std::fs::read_to_string(dir.path().join("work-mac-2/after-build.log")).unwrap();
    assert_eq!(after, format!("after_build {build} failed\n"));
    let log = node_log(dir.path(), "mac-2", &build, 1);
    assert!(log.contains("the keychain is locked") && log.contains("before_build failed (exit 3)"), "{log}");
    drop(_agent_2);

    // A setup that hangs is stopped by the script's timeout.
    let hanging = hooks("[\"bash\", \"-c\", \"echo waiting for the keychain; sleep 600\"]")
        .replace("[scripts.ios-build]\n", "[scripts.ios-build]\ntimeout_seconds = 2\nstop_grace_seconds = 1\n");
    let file = scripts(dir.path(), "scripts-3.toml", &hanging);
    let _agent_3 = agent(dir.path(), &gw, "mac-3", &file, &[], &[], &tx);
    deliver(&gw, dir.path(), "MOB-3").await;
    let build = build_of(&wait_for(&lines, "reported", 1)[0]);
    let failed = event_of(dir.path(), "BuildFailed", &build);
    assert_eq!(failed["reason"], "setup_failed");
    assert_eq!(failed["report"]["stop"]["cause"], "timeout");
    assert!(!dir.path().join("work-mac-3/script-ran").exists());
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_matching_a_retry_rule_runs_again_and_chat_says_retrying_until_the_attempts_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut chat = stand_in(vec![]).await;
    let volume = "[[triggers]]\nname = \"ios-volume\"\nprojects = [\"MOB\"]\nfield = \"State\"\nto = [\"Building\"]\n\
                  script = \"ios-volume\"\ngit_ref = \"main\"\n";
    let gw = gateway(dir.path(), &chat, "", volume);
    let file = scripts(
        dir.path(),
        "scripts.toml",
        &format!(
            "[scripts.ios-build]\ncommand = {}\nretry_on = [\"Failed to boot simulator\"]\n\n\
             [scripts.ios-volume]\ncommand = {}\nretry_on = [\"exit:75\"]\n",
            script("flaky-simulator.sh"),
            script("lost-volume.sh")
        ),
    );
    let (tx, lines) = mpsc::channel();
    let _agent = agent(dir.path(), &gw, "mac-1", &file, &["--slots", "2"], &[], &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    // Two builds, two attempts each (max_attempts = 2).
    wait_for(&lines, "reported", 4);
    let requested = events(dir.path(), "BuildRequested");
    let of = |trigger: &str| {
        requested
            .iter()
            .find(|(_, d)| d["trigger"] == trigger)
            .map(|(_, d)| d["build_id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (flaky, volume) = (of("ios-build"), of("ios-volume"));
    let retry = event_of(dir.path(), "BuildRetryScheduled", &flaky);
    assert_eq!((retry["attempt"].as_u64(), retry["next_attempt"].as_u64()), (Some(1), Some(2)));
    assert_eq!(retry["rule"], "Failed to boot simulator");
    assert_eq!(event_of(dir.path(), "BuildSucceeded", &flaky)["attempt"], 2);
    assert_eq!(event_of(dir.path(), "BuildRetryScheduled", &volume)["rule"], "exit:75");
    let failed = event_of(dir.path(), "BuildFailed", &volume);
    assert_eq!((failed["attempt"].as_u64(), failed["report"]["retry_rule"].as_str()), (Some(2), Some("exit:75")));

    // Chat: one `retrying` line per retry, naming the rule; no `failed` line for the flaky build.
    let mut said: Vec<(String, String)> = Vec::new();
    while said.iter().filter(|(_, s)| s == "succeeded" || s == "failed").count() < 2 {
        let request = chat.next().await;
        let body = request.body;
        said.push((body["build_id"].as_str().unwrap().to_owned(), body["state"].as_str().unwrap().to_owned()));
        if body["state"] == "retrying" {
            let text = body["text"].as_str().unwrap();
            let rule = if body["build_id"] == flaky.as_str() { "Failed to boot simulator" } else { "exit:75" };
            assert!(unnamed(text).starts_with(&format!("🔁 MOB-1 retrying ({rule})")), "{text}");
        }
        if body["state"] == "failed" {
            assert!(body["text"].as_str().unwrap().contains("retries used up: exit:75"), "{body}");
        }
    }
    let states = |build: &str| said.iter().filter(|(b, _)| b == build).map(|(_, s)| s.as_str()).collect::<Vec<_>>();
    assert!(states(&flaky).contains(&"retrying") && states(&flaky).contains(&"succeeded"), "{said:?}");
    assert!(!states(&flaky).contains(&"failed"), "{said:?}");
    assert_eq!(states(&volume).iter().filter(|s| **s == "retrying").count(), 1, "{said:?}");
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_build_s_log_is_followed_while_it_runs_and_the_stored_log_is_its_whole_output() {
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    let gw = gateway(dir.path(), &chat, "", "");
    let file = scripts(dir.path(), "scripts.toml", &format!("[scripts.ios-build]\ncommand = {}\n", script("live.sh")));
    let (tx, lines) = mpsc::channel();
    let _agent = agent(dir.path(), &gw, "mac-1", &file, &[], &[], &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let build = build_of(&wait_for(&lines, "started", 1)[0]);
    let detail: Value = admin_get(&gw, dir.path(), &format!("/api/v1/builds/{build}")).await.json().await.unwrap();
    let link = detail["log_url"].as_str().unwrap().to_owned();

    // The signed link, followed, without a token: the first part arrives while the script waits.
    let (mut followed, mut text) = follow_until(&link, "first part done\n").await;
    // `meshgate logs --follow` on the gateway's machine shows the same, growing.
    let cli_config = dir.path().join("cli.toml");
    let toml = std::fs::read_to_string(dir.path().join("meshgate.toml")).unwrap();
    std::fs::write(&cli_config, toml.replace("127.0.0.1:0", &gw.addr.to_string())).unwrap();
    let mut cli = Command::new(BIN)
        .args(["--config", cli_config.to_str().unwrap(), "logs", &build, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (cli_tx, cli_lines) = mpsc::channel();
    forward("cli", cli.stdout.take().unwrap(), &cli_tx);
    wait_for(&cli_lines, "first part done", 1);
    // Still running: the plain read holds the first part, not the second.
    let now = admin_get(&gw, dir.path(), &format!("/api/v1/builds/{build}/log")).await.text().await.unwrap();
    assert!(now.contains("first part done") && !now.contains("second part"), "{now}");

    std::fs::write(dir.path().join("work-mac-1/release"), "").unwrap();
    while let Some(chunk) = followed.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    wait_for(&lines, "reported", 1);
    let stored = admin_get(&gw, dir.path(), &format!("/api/v1/builds/{build}/log")).await.text().await.unwrap();
    let whole = node_log(dir.path(), "mac-1", &build, 1);
    assert!(whole.contains("second part done"), "{whole}");
    assert_eq!(stored, whole, "the stored log is the script's whole output");
    assert_eq!(text, whole, "the followed log ends whole");
    assert!(cli.wait().unwrap().success());
    let mut printed = String::new();
    while let Ok((_, line)) = cli_lines.recv_timeout(Duration::from_secs(10)) {
        printed.push_str(&line);
        printed.push('\n');
    }
    assert!(whole.ends_with(&printed), "the CLI printed the rest:\n{printed}");
    gw.stop();
}

fn sha256_of(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_uploaded_checked_listed_linked_in_chat_and_skipped_past_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut chat = stand_in(vec![]).await;
    let gw = gateway(dir.path(), &chat, "max_artifact_bytes = 250000", "");
    let file = scripts(
        dir.path(),
        "scripts.toml",
        &format!("[scripts.ios-build]\ncommand = {}\nartifacts = [\"build/*.zip\"]\n", script("artifacts.sh")),
    );
    let (tx, lines) = mpsc::channel();
    // The dSYM (200,000 bytes) fits beside the small files; the second zip (300,000) would not.
    let _agent = agent(dir.path(), &gw, "mac-1", &file, &[], &[], &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let build = build_of(&wait_for(&lines, "reported", 1)[0]);
    let folder = dir.path().join(format!("work-mac-1/{build}-1"));
    let results = dir.path().join(format!("work-mac-1/results/{build}-1"));
    let succeeded = event_of(dir.path(), "BuildSucceeded", &build);
    assert_eq!(succeeded["report"]["artifacts_skipped"], 1);
    let list: Value =
        admin_get(&gw, dir.path(), &format!("/api/v1/builds/{build}/artifacts")).await.json().await.unwrap();
    let artifacts = list["artifacts"].as_array().unwrap();
    let names: Vec<&str> = artifacts.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["App.ipa", "reports/junit.xml", "App.dSYM.zip"]);
    let local = [
        results.join("artifacts/App.ipa"),
        results.join("artifacts/reports/junit.xml"),
        folder.join("build/App.dSYM.zip"),
    ];
    for (artifact, path) in artifacts.iter().zip(&local) {
        assert_eq!(artifact["sha256"].as_str().unwrap(), sha256_of(path), "{artifact}");
        // The link downloads it without a token.
        let url = artifact["url"].as_str().unwrap();
        let bytes = crate::pki::https_client().get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.to_vec(), std::fs::read(path).unwrap(), "{url}");
    }
    let log = node_log(dir.path(), "mac-1", &build, 1);
    assert!(log.contains("artifact `Big.zip` skipped: 300000 bytes would pass max_artifact_bytes (250000)"), "{log}");
    assert_eq!(events(dir.path(), "ArtifactStored").len(), 3);
    // The final chat line links them.
    let line = chat_line(&mut chat, "succeeded").await;
    let text = line["text"].as_str().unwrap();
    assert!(text.contains(&format!("artifacts: App.ipa: {}", artifacts[0]["url"].as_str().unwrap())), "{text}");
    assert_eq!(line["artifacts"].as_array().unwrap().len(), 3);
    gw.stop();
}

/// A gateway on a fixed port, to come back on after a stop.
fn gateway_on(dir: &Path, chat: &StandIn, port: u16) -> Gateway {
    let config = dir.join("meshgate.toml");
    if port == 0 {
        return gateway(dir, chat, "", "");
    }
    let toml = std::fs::read_to_string(&config).unwrap().replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&config, toml).unwrap();
    start(dir, &["--config", config.to_str().unwrap()], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_during_a_live_log_and_the_uploads_leaves_the_log_and_artifacts_whole_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    let gw = gateway_on(dir.path(), &chat, 0);
    let port = gw.addr.port();
    let file = scripts(
        dir.path(),
        "scripts.toml",
        &format!("[scripts.ios-build]\ncommand = {}\nartifacts = [\"build/*.zip\"]\n", script("restart.sh")),
    );
    let (tx, lines) = mpsc::channel();
    let _agent = agent(dir.path(), &gw, "mac-1", &file, &[], &[("PARTS", "300")], &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let build = build_of(&wait_for(&lines, "started", 1)[0]);
    let detail: Value = admin_get(&gw, dir.path(), &format!("/api/v1/builds/{build}")).await.json().await.unwrap();
    let link = detail["log_url"].as_str().unwrap().to_owned();
    follow_until(&link, "first part done\n").await;
    // The gateway goes away while the build goes on printing, then comes back on its address.
    gw.stop();
    std::fs::write(dir.path().join("work-mac-1/release"), "").unwrap();
    let gw = gateway_on(dir.path(), &chat, port);
    let reported = wait_for(&lines, &format!("reported {build}"), 1);
    assert!(reported[0].1.ends_with("accepted"), "{reported:?}");
    let stored = admin_get(&gw, dir.path(), &format!("/api/v1/builds/{build}/log")).await.text().await.unwrap();
    let whole = node_log(dir.path(), "mac-1", &build, 1);
    assert!(whole.contains("second part done"));
    assert_eq!(stored, whole, "the stored log is whole, each line once");
    let stored_artifacts: Vec<Value> = events(dir.path(), "ArtifactStored").into_iter().map(|(_, d)| d).collect();
    assert_eq!(stored_artifacts.len(), 1, "{stored_artifacts:?}");
    let local = dir.path().join(format!("work-mac-1/{build}-1/build/App.dSYM.zip"));
    assert_eq!(stored_artifacts[0]["sha256"].as_str().unwrap(), sha256_of(&local));
    let on_gateway = dir.path().join(format!("data/artifacts/{build}/1/App.dSYM.zip"));
    assert_eq!(sha256_of(&on_gateway), sha256_of(&local));
    assert_eq!(events(dir.path(), "BuildSucceeded").len(), 1);
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_work_dir_hands_scripts_absolute_paths_and_the_commit_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    let gw = gateway(dir.path(), &chat, "", "");
    let file = scripts(
        dir.path(),
        "scripts.toml",
        &format!("[scripts.ios-build]\ncommand = [\"bash\", \"{}\"]\n", fixtures().join("scripts/ok.sh").display()),
    );
    let cwd = dir.path().join("node-home");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(&cwd)
        .args(["worker", "--gateway", &gw.url(""), "--node-id", "mac-1", "--work-dir", "work"])
        .args(["--ca-file", crate::pki::pki().ca_file.to_str().unwrap()])
        .args(["--token-file", dir.path().join("nodes.token").to_str().unwrap()])
        .args(["--scripts", file.to_str().unwrap(), "--claim-wait", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    forward("mac-1", child.stdout.take().unwrap(), &tx);
    let _agent = Agent::from_child(child);
    deliver(&gw, dir.path(), "MOB-1").await;
    let build = build_of(&wait_for(&lines, "reported", 1)[0]);
    let succeeded = event_of(dir.path(), "BuildSucceeded", &build);
    assert_eq!(succeeded["report"]["commit_sha"], "0123456789abcdef0123456789abcdef01234567");
    assert!(cwd.join(format!("work/results/{build}-1/commit-sha")).exists());
    gw.stop();
}

/// The agent's crate built on its own, as a Mac builds it: into a target folder of its own, with
/// none of the gateway's features unified into its dependencies.
fn build_agent_alone() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/agent-alone");
    let built = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--locked", "--offline", "-p", "meshgate-worker", "--bin", "meshgate-worker"])
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(built.status.success(), "the agent does not build alone: {}", String::from_utf8_lossy(&built.stderr));
    target.join("debug/meshgate-worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_crate_builds_alone_without_the_gateways_crates_and_its_binary_checks_and_runs_a_node() {
    // Its dependency tree holds none of the gateway's store, server or gRPC crates.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = Command::new(&cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--locked", "--offline", "-p", "meshgate-worker", "-e", "normal,build", "--prefix", "none"])
        .output()
        .unwrap();
    assert!(tree.status.success(), "{}", String::from_utf8_lossy(&tree.stderr));
    let tree = String::from_utf8(tree.stdout).unwrap();
    let crates: std::collections::BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(
        crates.contains("meshgate-worker") && crates.contains("rustix") && crates.contains("reqwest"),
        "{crates:?}"
    );
    for banned in [
        "rusqlite",
        "libsqlite3-sys",
        "fjall",
        "tokio-postgres",
        "eventstore",
        "tonic",
        "axum",
        "utoipa",
        "metrics-exporter-prometheus",
        "aws-lc-sys",
        "aws-lc-rs",
        "meshgate",
        "meshgate-projections",
    ] {
        assert!(!crates.contains(banned), "the agent depends on {banned}");
    }
    let bin = build_agent_alone();
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("meshgate-worker {}", env!("CARGO_PKG_VERSION"))
    );

    // `doctor` on a node set up as the docs say, against a real gateway over HTTPS.
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    let gw = gateway(dir.path(), &chat, "", "");
    let apps = applications(dir.path(), &["16.2"]);
    let not_executable = dir.path().join("build.sh");
    std::fs::write(&not_executable, "#!/bin/sh\necho built\n").unwrap();
    let node_toml = format!(
        "[worker]\ngateway = \"{}\"\nnode_id = \"mac-alone\"\ntoken_file = \"nodes.token\"\nscripts = \"scripts.toml\"\n\
         work_dir = \"work-alone\"\nca_file = \"{}\"\nxcode_search_dir = \"Applications\"\nclaim_wait_seconds = 2\n",
        gw.url(""),
        crate::pki::pki().ca_file.display()
    );
    std::fs::write(dir.path().join("node.toml"), node_toml).unwrap();
    let doctor = |scripts_text: String| {
        std::fs::write(dir.path().join("scripts.toml"), scripts_text).unwrap();
        Command::new(&bin)
            .current_dir(apps.parent().unwrap().join("cwd"))
            .args(["doctor", "--config", dir.path().join("node.toml").to_str().unwrap()])
            .output()
            .unwrap()
    };
    std::fs::create_dir_all(dir.path().join("cwd")).unwrap();
    let broken = doctor(format!("[scripts.ios-build]\ncommand = [\"{}\"]\n", not_executable.display()));
    let said = String::from_utf8_lossy(&broken.stdout).into_owned();
    assert!(!broken.status.success(), "{said}");
    assert!(
        said.contains(&format!("FAIL  script `ios-build`: {} is not executable (chmod +x", not_executable.display())),
        "{said}"
    );
    let fine = doctor(format!("[scripts.ios-build]\ncommand = {}\n", script("xcode.sh")));
    let said = String::from_utf8_lossy(&fine.stdout).into_owned();
    assert!(fine.status.success(), "{said}{}", String::from_utf8_lossy(&fine.stderr));
    for expected in [
        "ok    token file",
        &format!("ok    gateway {} reachable trusting", gw.url("")),
        "ok    the gateway accepts the pool token",
        "ok    script `ios-build` runs",
        &format!("ok    Xcodes: 16.2 at {}", apps.join("Xcode.app").display()),
        "is writable",
        "GiB free in",
    ] {
        assert!(said.contains(expected), "{expected} missing:\n{said}");
    }
    // A wrong token is named.
    let wrong = dir.path().join("wrong.token");
    crate::pki::write_private(&wrong, &"f".repeat(64));
    let refused = Command::new(&bin)
        .args(["doctor", "--config", dir.path().join("node.toml").to_str().unwrap()])
        .args(["--token-file", wrong.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(!refused.status.success() && said.contains("FAIL  the gateway refuses the pool token"), "{said}");

    // And it runs a build, on its own.
    let mut child = Command::new(&bin)
        .current_dir(dir.path().join("cwd"))
        .args(["--config", dir.path().join("node.toml").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    forward("mac-alone", child.stdout.take().unwrap(), &tx);
    let _agent = Agent::from_child(child);
    let ready = wait_for(&lines, "worker mac-alone ready", 1);
    assert!(ready[0].1.ends_with("xcodes [16.2]"), "{ready:?}");
    deliver(&gw, dir.path(), "MOB-1").await;
    let reported = wait_for(&lines, "reported", 1);
    assert!(reported[0].1.ends_with("accepted"));
    let build = build_of(&reported[0]);
    let log = std::fs::read_to_string(dir.path().join(format!("work-alone/logs/{build}-1.log"))).unwrap();
    assert!(log.contains("MESHGATE_XCODE_VERSION=none"), "{log}");
    gw.stop();
}

/// The node API's address the gateway printed (`meshgate node API listening on …`) before it
/// said it listens.
fn node_api(dir: &Path) -> String {
    let printed = std::fs::read_to_string(dir.join("stdout.log")).unwrap();
    let line = printed.lines().find_map(|l| l.strip_prefix("meshgate node API listening on "));
    line.unwrap_or_else(|| panic!("no node API line in:\n{printed}")).to_owned()
}

/// A client that trusts the tests' CA, presenting `identity` (chain and key files) if given.
fn node_client(identity: Option<&meshgate::tls::TlsFiles>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(files) = identity {
        let pem = [std::fs::read(&files.cert_file).unwrap(), std::fs::read(&files.key_file).unwrap()].concat();
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    meshgate::tls::client(builder, Some(&crate::pki::pki().ca_file)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_nodes_ca_the_node_api_refuses_a_node_without_its_certificate_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let chat = stand_in(vec![]).await;
    // The nodes' certificates come from a CA of their own, not the one the gateway's is from.
    let nodes_ca = crate::pki::Pki::new("meshgate test nodes CA");
    let settings = format!("listen = \"127.0.0.1:0\"\nclient_ca_file = \"{}\"", nodes_ca.ca_file.display());
    let gw = gateway(dir.path(), &chat, &settings, "");
    let base = node_api(dir.path());
    let pool = token(dir.path(), "nodes.token");
    let mac = nodes_ca.write_leaf(dir.path(), "mac-1", 1);
    let check = |client: reqwest::Client, token: String| {
        let url = format!("{base}/api/v1/nodes/check");
        async move { client.get(url).bearer_auth(token).send().await }
    };

    // A certificate of the nodes' CA and the pool token: in.
    let answer = check(node_client(Some(&mac)), pool.clone()).await.unwrap();
    assert_eq!(answer.status(), 200);
    // The certificate without the token: refused by the API.
    let answer = check(node_client(Some(&mac)), "not-the-pool-token".into()).await.unwrap();
    assert_eq!(answer.status(), 401);
    // No certificate, or one of another CA (the gateway's own): refused at the handshake, with
    // the token, before any request is read.
    let stranger = crate::pki::pki().write_leaf(dir.path(), "stranger", 2);
    for (client, who) in [(node_client(None), "no certificate"), (node_client(Some(&stranger)), "another CA")] {
        let refused = check(client, pool.clone()).await;
        let error = refused.expect_err(who);
        assert!(error.is_connect() || error.is_request(), "{who}: {error:?}");
        assert!(error.status().is_none(), "{who}: no HTTP answer");
    }
    // The main listener no longer serves the node API, token or not.
    let main = crate::pki::https_client().get(gw.url("/api/v1/nodes/check")).bearer_auth(&pool).send().await.unwrap();
    assert_eq!(main.status(), 401);
    let main = crate::pki::https_client().post(gw.url("/api/v1/nodes/claim")).bearer_auth(&pool).send().await.unwrap();
    assert_eq!(main.status(), 401);

    // The agent with its certificate runs a build end to end; without it, it never gets one.
    let ok = format!("[\"bash\", \"{}\"]", fixtures().join("scripts/ok.sh").display());
    let file = scripts(dir.path(), "scripts.toml", &format!("[scripts.ios-build]\ncommand = {ok}\n"));
    let (tx, lines) = mpsc::channel();
    let (cert, key) = (mac.cert_file.to_str().unwrap(), mac.key_file.to_str().unwrap());
    let without = agent_at(dir.path(), &base, "mac-2", &file, &[], &[], &tx);
    deliver(&gw, dir.path(), "MOB-1").await;
    let _with = agent_at(dir.path(), &base, "mac-1", &file, &["--client-cert", cert, "--client-key", key], &[], &tx);
    let reported = wait_for(&lines, "reported", 1);
    assert_eq!(reported[0].0, "mac-1", "{reported:?}");
    let built = events(dir.path(), "BuildSucceeded");
    assert_eq!(built.len(), 1);
    // Its log went up through the node API's listener and is read through the main one.
    let build = build_of(&reported[0]);
    let log = admin_get(&gw, dir.path(), &format!("/api/v1/builds/{build}/log")).await;
    assert_eq!(log.status(), 200);
    assert!(log.text().await.unwrap().contains("building MOB-1"), "the log the node wrote");
    drop(without);
    let refused = std::fs::read_to_string(dir.path().join("agent-mac-2.log")).unwrap();
    assert!(refused.to_lowercase().contains("certificate"), "the node without a certificate says why:\n{refused}");
    gw.stop();
}

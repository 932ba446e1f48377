//! docs/quickstart.md, run as written. Every block its source marks (`<!-- quickstart: … -->`) is
//! run or written in order, in a sandbox: `/etc/meshgate`, `/var/lib/meshgate` and `/Users/builder`
//! are folders of a temp dir, YouTrack and Slack are HTTPS stand-ins, and the steps the page leaves
//! to the reader's hands (editing `[server]` and `[youtrack]`, copying the pool token, writing the
//! build script) are done here, as the page says.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use serde_json::json;

use crate::helpers::*;
use crate::pki::{pki, write_private};
use crate::process::{launch_command, token, Gateway, BIN};
use crate::stand_in::*;
use crate::workers::{wait_for, Agent};

/// A marked block of the page: what to do, and its text.
struct Step {
    action: String,
    text: String,
}

fn steps() -> Vec<Step> {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/quickstart.md")).unwrap();
    let mut steps = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let Some(action) = line.strip_prefix("<!-- quickstart: ").and_then(|a| a.strip_suffix(" -->")) else {
            continue;
        };
        assert!(lines.next().is_some_and(|fence| fence.starts_with("```")), "a block follows `{line}`");
        let text: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        steps.push(Step { action: action.to_owned(), text: text.join("\n") + "\n" });
    }
    steps
}

struct Sandbox {
    root: PathBuf,
    replacements: Vec<(String, String)>,
}

impl Sandbox {
    /// `meshgate-worker` as the Mac has it: here the same agent behind `meshgate worker`, trusting
    /// the tests' CA (the page's gateway has a certificate from a public one).
    fn agent_bin(&self) -> PathBuf {
        let bin = self.root.join("agent-bin");
        let agent = bin.join("meshgate-worker");
        if !agent.exists() {
            std::fs::create_dir_all(&bin).unwrap();
            let ca = pki().ca_file.display().to_string();
            let script = format!(
                "#!/bin/sh\nif [ \"${{1:-}}\" = doctor ]; then shift; exec {BIN} worker doctor \"$@\" --ca-file {ca}; fi\n\
                 exec {BIN} worker \"$@\" --ca-file {ca}\n"
            );
            std::fs::write(&agent, script).unwrap();
            std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        agent
    }

    fn path(&self, page_path: &str) -> PathBuf {
        PathBuf::from(self.text(page_path))
    }

    /// The page's text with its hosts and folders replaced by the sandbox's.
    fn text(&self, text: &str) -> String {
        self.replacements.iter().fold(text.to_owned(), |text, (from, to)| text.replace(from, to))
    }

    fn sh(&self, script: &str) -> String {
        let bin = Path::new(BIN).parent().unwrap();
        let path = format!(
            "{}:{}:{}",
            self.agent_bin().parent().unwrap().display(),
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &self.text(script)])
            .current_dir(&self.root)
            .env("PATH", path)
            .output()
            .unwrap();
        let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        assert!(output.status.success(), "{script}: {}{}", said(&output.stdout), said(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }
}

/// What the page leaves to the reader's hands before the check: `[server]` (the sample's TLS lines
/// uncommented, with a certificate from the tests' CA, and a free loopback port) and `[youtrack]`;
/// the stand-ins' CA trusted.
fn edit_by_hand(sandbox: &Sandbox, youtrack: &str) {
    let etc = sandbox.path("/etc/meshgate");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    pki().write_leaf(&etc.join("tls"), "gateway", 60);
    let file = etc.join("meshgate.toml");
    let toml = std::fs::read_to_string(&file).unwrap();
    // A port of its own, as a deployment has (the commands on the page find the gateway there).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let edited = toml
        .replacen("listen = \"127.0.0.1:8080\"", &format!("listen = \"127.0.0.1:{port}\""), 1)
        .replacen("# tls_cert_file = \"tls/gateway.crt\"", "tls_cert_file = \"tls/gateway.crt\"", 1)
        .replacen("# tls_key_file = \"tls/gateway.key\"", "tls_key_file = \"tls/gateway.key\"", 1)
        .replacen("# base_url = \"https://youtrack.example.com\"", &format!("base_url = {youtrack:?}"), 1)
        .replacen("# token_file = \"secrets/youtrack.token\"", "token_file = \"secrets/youtrack.token\"", 1)
        .replacen("[outbound]\n", &format!("[outbound]\nca_file = {:?}\n", pki().ca_file), 1);
    assert!(
        edited.contains("\ntls_cert_file = \"tls/gateway.crt\"\ntls_key_file"),
        "the sample's lines to uncomment: {edited}"
    );
    assert!(edited.contains("base_url = \"https://127.0.0.1:") && edited.contains("ca_file"), "{edited}");
    std::fs::write(&file, edited).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_as_written() {
    let mut slack = stand_in(vec![]).await;
    // A YouTrack that knows the bot token the page writes (and sweeps its activity stream at start).
    let youtrack =
        crate::youtrack::YouTrack::start_with_token("perm:Ym90.NjEtMTI=.dGhpcyBpcyBub3QgYSByZWFsIHRva2Vu").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    // The service's user of the page is `nobody` here (when the test runs as root, as CI does; run
    // as anyone else, the commands run as that user and the ownership steps are skipped).
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let as_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&root).unwrap()) == 0;
    let users: [(&str, &str); 4] = if as_root {
        [
            ("runuser -u meshgate -- ", "runuser -u nobody -- "),
            ("useradd --system --no-create-home --shell /usr/sbin/nologin meshgate", ": nobody is the user"),
            ("install -d -o meshgate -g meshgate ", "install -d -o nobody -g nogroup "),
            ("chown -R meshgate: ", "chown -R nobody: "),
        ]
    } else {
        [
            ("runuser -u meshgate -- ", ""),
            ("useradd --system --no-create-home --shell /usr/sbin/nologin meshgate", ": the user runs it"),
            ("install -d -o meshgate -g meshgate ", "install -d "),
            ("chown -R meshgate: ", ": "),
        ]
    };
    let mut replacements: Vec<(String, String)> = users.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    replacements.extend([
        ("/etc/meshgate".into(), root.join("etc/meshgate").display().to_string()),
        ("/var/lib/meshgate".into(), root.join("var/lib/meshgate").display().to_string()),
        ("/Users/builder".into(), root.join("Users/builder").display().to_string()),
        ("https://hooks.slack.com".into(), slack.url("")),
    ]);
    let mut sandbox = Sandbox { replacements, root };
    let steps = steps();
    let actions: Vec<&str> = steps.iter().map(|s| s.action.as_str()).collect();
    assert!(actions.iter().any(|a| a.starts_with("start service ")) && actions.contains(&"start node"), "{actions:?}");

    let mut gateway: Option<Gateway> = None;
    let mut gateway_log: Option<mpsc::Receiver<String>> = None;
    let mut _node: Option<Agent> = None;
    let (node_tx, node_lines) = mpsc::channel();
    let mut printed = Vec::new();
    for step in &steps {
        match step.action.as_str() {
            "run node" => {
                // By hand first: the pool token copied over, and the build script (it fails a
                // test), executable.
                let nodes_token = token(&sandbox.path("/etc/meshgate/secrets"), "nodes.token");
                write_private(&sandbox.path("/Users/builder/.meshgate/nodes.token"), &nodes_token);
                let script = sandbox.path("/Users/builder/ci/app-build.sh");
                std::fs::create_dir_all(script.parent().unwrap()).unwrap();
                std::fs::copy(fixtures().join("scripts/fail.sh"), &script).unwrap();
                std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
                let said = sandbox.sh(&step.text);
                for check in ["the gateway accepts the pool token", "script `app-build` runs", "is writable"] {
                    assert!(said.contains(check), "doctor: {check} missing from\n{said}");
                }
            }
            "run" => {
                if step.text.contains("chown -R meshgate: ") {
                    // The hand edits come before the files are given to the service's user.
                    edit_by_hand(&sandbox, &youtrack.url());
                }
                if step.text.contains("--type NotificationDelivered") {
                    // The failed build's lines and comment are out before the page looks for them.
                    for milestone in ["queued", "running", "failed"] {
                        let line = slack.next().await.body["text"].as_str().unwrap().to_owned();
                        assert!(line.contains(&format!("APP-12 app-build #1 {milestone}")), "{line}");
                    }
                    let comment = youtrack.next_comment().await;
                    assert_eq!(comment["issue"], "APP-12");
                    let shown = displayed(comment["text"].as_str().unwrap());
                    assert!(shown.starts_with("❌ Build app-build #1 failed on mac-mini-01"), "{shown}");
                    assert!(shown.contains("Failing test: AppTests.testOffline"), "{shown}");
                    // ... and recorded: the gateway says so for each (read from its log, no polling).
                    let log = gateway_log.as_ref().unwrap();
                    for _ in 0..4 {
                        let line = log.recv_timeout(std::time::Duration::from_secs(60)).expect("a delivery logged");
                        assert!(line.contains("notification delivered"), "{line}");
                    }
                }
                printed.push(sandbox.sh(&step.text));
            }
            action if action.starts_with("append ") => {
                let file = sandbox.path(&action["append ".len()..]);
                let mut text = std::fs::read_to_string(&file).unwrap();
                text.push('\n');
                text.push_str(&step.text);
                std::fs::write(&file, text).unwrap();
            }
            action if action.starts_with("write ") => {
                let file = sandbox.path(&action["write ".len()..]);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, sandbox.text(&step.text)).unwrap();
            }
            action if action.starts_with("start service ") => {
                // What systemd does with the unit the page installs: its `ExecStart` as its
                // `User` and `Group`, in its `WorkingDirectory`.
                let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join(&action["start service ".len()..]);
                assert!(step.text.contains("systemctl enable --now meshgate"), "{}", step.text);
                let unit = std::fs::read_to_string(unit).unwrap();
                let setting = |key: &str| {
                    let line = unit.lines().find_map(|l| l.strip_prefix(&format!("{key}=")));
                    line.unwrap_or_else(|| panic!("no {key}= in the unit")).to_owned()
                };
                let exec = sandbox.text(&setting("ExecStart"));
                let args: Vec<&str> =
                    exec.strip_prefix("/usr/local/bin/meshgate ").expect("the unit runs meshgate").split(' ').collect();
                assert_eq!((setting("User"), setting("Group")), ("meshgate".into(), "meshgate".into()));
                let mut command = if as_root {
                    let mut command = Command::new("setpriv");
                    command.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--", BIN]);
                    command
                } else {
                    Command::new(BIN)
                };
                command.args(&args).current_dir(sandbox.path(&setting("WorkingDirectory"))).env("RUST_LOG", "info");
                let mut started = launch_command(&sandbox.root, command, Stdio::piped());
                let stderr = BufReader::new(started.child.stderr.take().unwrap());
                let (tx, log) = mpsc::channel();
                // Every line read until the process ends; only deliveries are passed on.
                std::thread::spawn(move || {
                    for line in stderr.lines().map_while(Result::ok) {
                        if line.contains("notification delivered") {
                            let _ = tx.send(line);
                        }
                    }
                });
                gateway_log = Some(log);
                assert_eq!(started.scheme, "https");
                sandbox.replacements.push(("https://ci.example.com".into(), started.url("")));
                // YouTrack: an issue of APP moves from In Progress to Ready for build.
                let body = with(
                    &fixture("mob-issueUpdated-state-building.json"),
                    &json!({"id": "APP-12", "summary": "Checkout crashes", "project": {"key": "APP", "name": "App", "shortName": "APP"},
                        "changedFields": [{"name": "State", "oldValue": {"name": "In Progress"}, "value": {"name": "Ready for build"}}]}),
                );
                let secrets = sandbox.path("/etc/meshgate/secrets");
                let delivered = crate::pki::https_client()
                    .post(started.url("/youtrack/webhook"))
                    .header("X-YouTrack-Token", token(&secrets, "webhook.token"))
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(delivered.status(), 200);
                gateway = Some(started);
            }
            "start node" => {
                let command = sandbox.text(step.text.trim());
                let args: Vec<&str> =
                    command.strip_prefix("meshgate-worker ").expect("meshgate-worker").split(' ').collect();
                let mut child = Command::new(sandbox.agent_bin())
                    .args(&args)
                    .current_dir(&sandbox.root)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let stdout = BufReader::new(child.stdout.take().unwrap());
                let tx = node_tx.clone();
                std::thread::spawn(move || {
                    stdout.lines().map_while(Result::ok).for_each(|l| drop(tx.send(("mac-mini-01".to_owned(), l))))
                });
                _node = Some(Agent::from_child(child));
                let reported = wait_for(&node_lines, "reported", 1);
                assert!(reported[0].1.ends_with("accepted"), "{reported:?}");
            }
            other => panic!("unknown quickstart step `{other}`"),
        }
    }
    // What the page says the two `events` commands show, and the rebuild.
    let arrived = printed.iter().find(|p| p.contains("WebhookRouted")).expect("the first `events`");
    for event in ["WebhookReceived", "WebhookRouted", "IntentActivated", "BuildRequested"] {
        assert!(arrived.contains(event), "{event} missing from {arrived}");
    }
    let delivered = printed.iter().rev().find(|p| p.contains("NotificationDelivered")).expect("the second `events`");
    assert_eq!(delivered.lines().filter(|l| l.contains("NotificationDelivered")).count(), 4);
    let rebuilt = printed.last().unwrap();
    assert!(rebuilt.starts_with("started app-build #2 (") && rebuilt.contains("a rebuild of app-build#1"), "{rebuilt}");
    assert!(printed.iter().any(|p| p.contains("# configuration OK")), "config check ran");
    if as_root {
        // The gateway and the commands run as the service's user: the log is its, not root's.
        let log = std::fs::metadata(sandbox.path("/var/lib/meshgate/events.sqlite")).unwrap();
        assert_ne!(std::os::unix::fs::MetadataExt::uid(&log), 0, "the log belongs to the service's user");
    }
    gateway.unwrap().stop();
}

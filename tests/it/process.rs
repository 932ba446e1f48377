//! Real `meshgate` processes: a SIGKILL during a load of deliveries, the embedded defaults, and
//! what the logs never contain.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use meshgate::store::sqlite::query;
use meshgate::store::EventFilter;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::helpers::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_meshgate");

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// `http` or `https`, as the gateway announced itself.
    pub scheme: &'static str,
}

/// Starts `meshgate serve` and waits for the line announcing its address (no polling). Its
/// standard error goes to `stderr.log` in `dir`. It runs in a working directory of its own
/// (`dir/cwd`), as under a service manager: whatever its configuration names must resolve
/// against the configuration's folder.
pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stderr.log")).unwrap();
    launch(dir, args, env, stderr.into())
}

/// [`start`] with standard error sent to `stderr`.
pub fn launch(dir: &Path, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Gateway {
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut command = Command::new(BIN);
    command.current_dir(&cwd).args(args).arg("serve");
    for (k, v) in env {
        command.env(k, v);
    }
    launch_command(dir, command, stderr)
}

/// Starts `command` (a `meshgate serve`, however it is run) and waits for the line announcing its
/// address; the lines before it go to `stdout.log` in `dir`.
pub fn launch_command(dir: &Path, mut command: Command, stderr: Stdio) -> Gateway {
    let mut child = command.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        // `[log] format = "json"`: the same announcement as an object.
        let said: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let url = said.as_ref().filter(|s| s["message"] == "meshgate listening").and_then(|s| s["url"].as_str());
        let line = url.map_or(line.clone(), |url| format!("meshgate listening on {url}"));
        let announced = match line.strip_prefix("meshgate listening on ") {
            Some(rest) if rest.starts_with("https://") => Some(("https", &rest[8..])),
            Some(rest) if rest.starts_with("http://") => Some(("http", &rest[7..])),
            _ => None,
        };
        if let Some((scheme, rest)) = announced {
            let addr = rest.split('/').next().unwrap().parse().unwrap();
            std::fs::write(dir.join("stdout.log"), printed.join("\n")).unwrap();
            return Gateway { child, addr, scheme };
        }
        printed.push(line);
    }
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    panic!("meshgate exited ({status}) before listening: {said}");
}

/// A gateway left running by a failed test is killed with it.
impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// A URL on this gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// SIGTERM, then wait: the gateway drains and saves its projections.
    pub fn stop(mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        assert!(self.child.wait().unwrap().success(), "gateway did not stop cleanly");
    }
}

pub fn write_config(dir: &Path) -> PathBuf {
    let config = test_config(dir, vec![ios_trigger()]);
    let toml = std::fs::read_to_string(fixtures().join("config/one-trigger.toml")).unwrap();
    assert!(config.webhook.token_files[0].exists());
    let path = dir.join("meshgate.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// `toml` (a config written by [`write_config`]) serving HTTPS with a certificate of the tests' CA
/// written into `dir`.
pub fn with_tls(dir: &Path, toml: &str) -> String {
    let files = crate::pki::pki().write_leaf(dir, "gateway", 7);
    let tls = format!(
        "data_dir = \"data\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        files.cert_file.display(),
        files.key_file.display()
    );
    toml.replacen("data_dir = \"data\"\n", &tls, 1)
}

pub fn token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap().trim().to_owned()
}

async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("http://{addr}/youtrack/webhook"))
        .header("X-YouTrack-Token", token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_during_a_load_loses_no_accepted_delivery_and_makes_no_second_build() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config_arg = config.to_str().unwrap();
    let gateway = start(dir.path(), &["--config", config_arg], &[]);
    let webhook_token = token(dir.path(), "webhook.token");
    let building = fixture("mob-issueUpdated-state-building.json");

    // 16 clients; each issue is delivered twice (the second copy only differs in timestamp).
    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let ok = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let mut clients = Vec::new();
    for c in 0..16 {
        let (accepted, ok, enough, stop, client) =
            (accepted.clone(), ok.clone(), enough.clone(), stop.clone(), client.clone());
        let (addr, token, building) = (gateway.addr, webhook_token.clone(), building.clone());
        clients.push(tokio::spawn(async move {
            for n in 0..10_000 {
                let issue = format!("MOB-{}", c * 10_000 + n / 2);
                let body =
                    with(&building, &json!({"id": issue, "timestamp": format!("2026-08-24T10:00:00.{:03}Z", n % 2)}));
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match post(&client, addr, &token, body).await {
                    Ok(r) if r.status() == 200 => {
                        let answer: Value = match r.json().await {
                            Ok(answer) => answer,
                            Err(_) => return,
                        };
                        accepted.lock().unwrap().push((answer["correlation_id"].as_str().unwrap().to_owned(), issue));
                        if ok.fetch_add(1, Ordering::Relaxed) + 1 == 600 {
                            enough.notify_one();
                        }
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return, // the gateway is gone
                }
            }
        }));
    }
    enough.notified().await;
    let mut gateway = gateway;
    gateway.child.kill().unwrap(); // SIGKILL, mid-load
    gateway.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 600);

    // Restart on the same data: it serves again, and an old copy still folds.
    let gateway = start(dir.path(), &["--config", config_arg], &[]);
    let (_, first_issue) = &accepted[0];
    let copy = with(&building, &json!({"id": first_issue, "timestamp": "2026-08-24T23:59:59.999Z"}));
    let answer: Value = post(&client, gateway.addr, &webhook_token, copy).await.unwrap().json().await.unwrap();
    assert_eq!(answer["outcome"], "folded");
    gateway.stop();

    // Every delivery that got a 200 is in the log; no issue got two builds.
    let conn = meshgate::store::sqlite::open_read_only(&dir.path().join("data/events.sqlite")).unwrap();
    let received =
        query(&conn, &EventFilter { event_type: Some("WebhookReceived".into()), ..Default::default() }, 0, usize::MAX)
            .unwrap();
    let logged: std::collections::HashSet<String> = received.iter().map(|e| e.correlation_id.to_string()).collect();
    for (correlation_id, issue) in &accepted {
        assert!(logged.contains(correlation_id), "accepted delivery {correlation_id} for {issue} is not in the log");
    }
    let requested =
        query(&conn, &EventFilter { event_type: Some("BuildRequested".into()), ..Default::default() }, 0, usize::MAX)
            .unwrap();
    let mut per_issue = std::collections::HashMap::<String, usize>::new();
    for e in &requested {
        let data: Value = serde_json::from_str(&e.data).unwrap();
        *per_issue.entry(data["issue_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert!(per_issue.values().all(|n| *n == 1), "an issue got two builds");
    for (_, issue) in &accepted {
        assert_eq!(per_issue.get(issue), Some(&1), "{issue} was accepted but has no build");
    }

    // The projections saved at shutdown equal a rebuild from position 0.
    let verify =
        Command::new(BIN).args(["--config", config_arg, "projections", "rebuild", "--verify"]).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    // Compared up to the log's last event: what the gateway saved, not an empty model.
    let head = query(&conn, &EventFilter::default(), 0, usize::MAX).unwrap().last().map(|e| e.position).unwrap();
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(said.contains(&format!("the read model matches the log up to position {head} ")), "{said}");
}

#[tokio::test]
async fn with_no_config_the_gateway_generates_its_tokens_and_prints_only_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(dir.path(), &[], &[("MESHGATE_SERVER__LISTEN", "127.0.0.1:0")]);
    assert_ne!(gateway.addr.port(), 8080, "the environment overrides the default listen address");
    let stdout = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    // Without a configuration file, the data goes under the working directory.
    let cwd = dir.path().join("cwd");
    let webhook_token = token(&cwd, "meshgate-data/secrets/webhook.token");
    let admin_token = token(&cwd, "meshgate-data/secrets/admin.token");
    assert_eq!(webhook_token.len(), 64);
    assert!(stdout.contains("meshgate-data/secrets/webhook.token"));
    assert!(!stdout.contains(&webhook_token) && !stdout.contains(&admin_token));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cwd.join("meshgate-data/secrets/webhook.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o400);

    let client = reqwest::Client::new();
    let response =
        post(&client, gateway.addr, &webhook_token, fixture("issueUpdated-state-building.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    gateway.stop();
}

#[tokio::test]
async fn token_values_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[("RUST_LOG", "trace")]);
    let webhook_token = token(dir.path(), "webhook.token");
    let admin_token = token(dir.path(), "admin.token");
    let client = reqwest::Client::new();
    let body = fixture("mob-issueUpdated-state-building.json");
    // A near miss, the admin token in the webhook header, and the right token.
    let near_miss = format!("{}0", &webhook_token[..63]);
    for t in [near_miss.as_str(), admin_token.as_str(), webhook_token.as_str()] {
        post(&client, gateway.addr, t, body.clone()).await.unwrap();
    }
    let api = client.get(format!("http://{}/api/v1/builds", gateway.addr)).bearer_auth(&admin_token);
    assert_eq!(api.send().await.unwrap().status(), 200);
    gateway.stop();

    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(logs.contains("webhook token mismatch"), "the mismatch is logged");
    assert!(logs.contains("received_token_length=64"));
    for secret in [&webhook_token, &admin_token, &near_miss] {
        assert!(!logs.contains(secret.as_str()), "a token value reached the logs");
    }
}

#[tokio::test]
async fn init_writes_a_sample_config_that_loads_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("gw");
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let first = run(&["init", target.to_str().unwrap()]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let config = meshgate::config::Config::load(Some(&target.join("meshgate.toml"))).unwrap();
    assert_eq!(config.triggers[0].name, "ios-build");
    assert!(meshgate::secrets::Token::read(&target.join("secrets/webhook.token")).is_ok());
    assert!(!run(&["init", target.to_str().unwrap()]).status.success());

    let file = dir.path().join("rotated.token");
    assert!(run(&["token", "generate", file.to_str().unwrap()]).status.success());
    assert!(!run(&["token", "generate", file.to_str().unwrap()]).status.success());
    assert!(meshgate::secrets::Token::read(&file).is_ok());
}

#[tokio::test]
async fn a_loose_token_file_stops_the_gateway_at_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("webhook.token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(BIN).args(["--config", config.to_str().unwrap(), "serve"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("webhook.token") && stderr.contains("world-readable"), "{stderr}");
}

#[tokio::test]
async fn the_events_command_answers_audit_questions_from_the_log() {
    let app = spawn_app().await;
    let first = app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    let copy =
        with(&fixture("mob-issueUpdated-state-building.json"), &json!({"timestamp": "2026-08-24T10:00:09.000Z"}));
    let second = app.deliver(&copy).await;
    app.deliver(&fixture("issueUpdated-state-building.json")).await;
    let (dir, _) = app.shutdown().await;
    let config = dir.path().join("audit.toml");
    std::fs::write(&config, "[server]\ndata_dir = \"data\"\n").unwrap();
    let events = |args: &[&str]| -> Vec<Value> {
        let output = Command::new(BIN)
            .args(["--config", config.to_str().unwrap(), "events", "--json"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let types = |events: &[Value]| events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect::<Vec<_>>();

    // Everything about MOB-7, including the fold, which does not name the issue itself.
    let issue = events(&["--issue", "MOB-7"]);
    assert_eq!(
        types(&issue),
        [
            "WebhookReceived",
            "WebhookRouted",
            "IntentActivated",
            "BuildRequested",
            "WebhookReceived",
            "BuildRequestFolded"
        ]
    );
    // Everything the second delivery caused.
    let caused = events(&["--correlation", second["correlation_id"].as_str().unwrap()]);
    assert_eq!(types(&caused), ["WebhookReceived", "BuildRequestFolded"]);
    assert_eq!(caused[0]["data"]["body"].as_str(), Some(copy.as_str()), "the body as it was received");
    let build = events(&["--stream", &meshgate_domain::stream::build_stream(build_id(&first))]);
    assert_eq!(types(&build), ["BuildRequested", "BuildRequestFolded"]);
    assert_eq!(events(&["--type", "WebhookReceived"]).len(), 3);
}

#[test]
fn a_gateway_stopped_as_soon_as_it_says_it_listens_exits_cleanly_every_time() {
    // SIGTERM is caught before the listening line: a service manager's stop right after a start
    // gets the drain, never the default exit by signal.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    for _ in 0..5 {
        start(dir.path(), &["--config", config.to_str().unwrap()], &[]).stop();
    }
}

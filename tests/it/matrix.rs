//! A real Matrix homeserver (Synapse, from the venv `scripts/test.sh` provisions), rate limited so
//! the gateway meets real 429s; the room is read back to count what arrived.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshgate::config::{ChatConfig, ChatKind};
use serde_json::{json, Value};

use crate::helpers::*;

const PASSWORD: &str = "meshgate-test-password-0123456789";

pub struct Synapse {
    child: Child,
    base: String,
    token: String,
    room_id: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MESHGATE_SYNAPSE_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/synapse-venv/bin/python");
    assert!(
        venv.exists(),
        "Synapse is not provisioned: run ./scripts/test.sh, which installs it into target/synapse-venv"
    );
    venv
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_synapse() -> Synapse {
    start_synapse_limited(0.5, 3).await
}

/// A homeserver that lets through `per_second` messages (after a burst of `burst`).
pub async fn start_synapse_limited(per_second: f64, burst: u32) -> Synapse {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homeserver.yaml");
    let generated = Command::new(&python)
        .current_dir(dir.path())
        .args(["-m", "synapse.app.homeserver", "--server-name", "localhost", "--config-path"])
        .arg(&config)
        .args(["--generate-config", "--report-stats=no"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let port = free_port();
    let overrides = format!(
        "
listeners:
  - port: {port}
    tls: false
    type: http
    x_forwarded: false
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [client]
        compress: false
trusted_key_servers: []
suppress_key_server_warning: true
url_preview_enabled: false
rc_message:
  per_second: {per_second}
  burst_count: {burst}
rc_login:
  address: {{per_second: 100, burst_count: 100}}
  account: {{per_second: 100, burst_count: 100}}
  failed_attempts: {{per_second: 100, burst_count: 100}}
rc_registration:
  per_second: 100
  burst_count: 100
"
    );
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(&overrides);
    std::fs::write(&config, yaml).unwrap();
    let child = Command::new(&python)
        .current_dir(dir.path())
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    // Synapse gives no readiness signal to a parent: ask until it answers (bounded).
    let mut ready = false;
    for _ in 0..300 {
        if client.get(format!("{base}/_matrix/client/versions")).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut synapse = Synapse {
        child,
        base: base.clone(),
        token: String::new(),
        room_id: String::new(),
        config: config.clone(),
        _dir: dir,
    };
    assert!(ready, "synapse did not start");
    let login = synapse.register("meshgate", Some("MESHGATE")).await;
    synapse.token = login["access_token"].as_str().expect("an access token").to_owned();
    let room: Value = client
        .post(format!("{base}/_matrix/client/v3/createRoom"))
        .bearer_auth(&synapse.token)
        .json(&json!({"name": "builds"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    synapse.room_id = room["room_id"].as_str().expect("a room").to_owned();
    synapse
}

impl Synapse {
    /// Registers `name` and logs in (as `device`, if given): the login's answer.
    async fn register(&self, name: &str, device: Option<&str>) -> Value {
        let register = python().with_file_name("register_new_matrix_user");
        let registered = Command::new(register)
            .args(["-c", self.config.to_str().unwrap(), "-u", name, "-p", PASSWORD, "--no-admin", &self.base])
            .output()
            .unwrap();
        assert!(registered.status.success(), "{}", String::from_utf8_lossy(&registered.stderr));
        let mut login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
                               "password": PASSWORD});
        if let Some(device) = device {
            login["device_id"] = json!(device);
        }
        let answer = reqwest::Client::new().post(format!("{}/_matrix/client/v3/login", self.base)).json(&login).send();
        answer.await.unwrap().json().await.unwrap()
    }

    /// A member of the room (registered, invited by the bot, joined): its user id and token.
    pub async fn member(&self, name: &str) -> (String, String) {
        let client = reqwest::Client::new();
        let login = self.register(name, None).await;
        let (user, token) =
            (login["user_id"].as_str().unwrap().to_owned(), login["access_token"].as_str().unwrap().to_owned());
        let room = self.room();
        let invited = client
            .post(format!("{}/_matrix/client/v3/rooms/{room}/invite", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"user_id": user}))
            .send()
            .await
            .unwrap();
        assert_eq!(invited.status(), 200);
        let joined = client
            .post(format!("{}/_matrix/client/v3/join/{room}", self.base))
            .bearer_auth(&token)
            .json(&json!({}))
            .send();
        assert_eq!(joined.await.unwrap().status(), 200);
        (user, token)
    }

    /// The room's id as a path segment.
    fn room(&self) -> String {
        self.room_id.replace('!', "%21").replace(':', "%3A")
    }

    /// GETs `path` of the client API (`/_matrix/client/…`) with the bot's token.
    async fn read(&self, path: &str) -> Value {
        let answer = reqwest::Client::new().get(format!("{}{path}", self.base)).bearer_auth(&self.token).send();
        answer.await.unwrap().json().await.unwrap()
    }

    /// `token`'s user reacts to `event_id` with `key`; the reaction's event id.
    pub async fn react(&self, token: &str, event_id: &str, key: &str) -> String {
        let room = self.room();
        let txn = uuid::Uuid::now_v7().simple();
        let body = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}});
        let sent: Value = reqwest::Client::new()
            .put(format!("{}/_matrix/client/v3/rooms/{room}/send/m.reaction/{txn}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sent["event_id"].as_str().expect("a reaction").to_owned()
    }

    /// The reactions to `event_id`: (sender, key), oldest first.
    pub async fn reactions_on(&self, event_id: &str) -> Vec<(String, String)> {
        let (room, event) = (self.room(), event_id.replace('$', "%24"));
        let page = self.read(&format!("/_matrix/client/v1/rooms/{room}/relations/{event}/m.annotation?dir=f")).await;
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let key = e["content"]["m.relates_to"]["key"].as_str().unwrap().to_owned();
                (e["sender"].as_str().unwrap().to_owned(), key)
            })
            .collect()
    }

    /// A `[[chat]]` sink posting to this homeserver's room, its token written into `dir`.
    pub fn sink(&self, dir: &Path) -> ChatConfig {
        use std::os::unix::fs::PermissionsExt;
        let token_file = dir.join("matrix.token");
        std::fs::write(&token_file, &self.token).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o400)).unwrap();
        ChatConfig {
            url: Some(self.base.clone()),
            room_id: Some(self.room_id.clone()),
            token_file: Some(token_file),
            max_attempts: 20,
            ..ChatConfig::new("room", ChatKind::Matrix)
        }
    }

    /// Every `m.room.message` event in the room, oldest first (read back a page at a time).
    async fn messages(&self) -> Vec<Value> {
        let room = self.room();
        let mut events = Vec::new();
        let mut from = String::new();
        loop {
            let page = self.read(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=500{from}")).await;
            let chunk = page["chunk"].as_array().unwrap();
            events.extend(chunk.iter().filter(|e| e["type"] == "m.room.message").cloned());
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = format!("&from={end}"),
                _ => break,
            }
        }
        events.reverse();
        events
    }

    /// The body of every `m.notice` in the room, oldest first.
    pub async fn notices(&self) -> Vec<String> {
        self.messages()
            .await
            .iter()
            .filter(|e| e["content"]["msgtype"] == "m.notice")
            .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_reaches_a_rate_limited_matrix_room_exactly_once() {
    let synapse = start_synapse().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.chat = vec![synapse.sink(dir.path())];
    config.outbound.retry_base_ms = 50;
    config.outbound.retry_cap_seconds = 2;
    let app = spawn_with(dir, config).await;
    for n in 1..=6 {
        let body = with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": format!("MOB-{n}")}));
        app.deliver(&body).await;
    }
    app.wait_for_count("NotificationDelivered", 6).await;

    let notices = synapse.notices().await;
    assert_eq!(notices.len(), 6, "{notices:#?}");
    for n in 1..=6 {
        let prefix = format!("⏳ MOB-{n} ios-build #{n} queued");
        assert_eq!(notices.iter().filter(|l| l.starts_with(&prefix)).count(), 1, "{prefix}: {notices:#?}");
    }
    // The homeserver's rate limit was met, and retried through.
    let events = app.all_events().await;
    assert!(
        events.iter().any(|e| e.event_type == "NotificationAttempted" && e.data.contains("\"status\":429")),
        "no 429 was met"
    );
}

/// The whole path: a webhook, a real worker process running a failing script, one Matrix line per
/// state, and a short comment at the YouTrack stand-in with the commit, node, failing test and log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_on_a_real_worker_reaches_matrix_and_youtrack() {
    use crate::workers::{agent, scripts_file, wait_for};
    use axum::routing::post;

    let synapse = start_synapse().await;
    // A YouTrack stand-in that takes comments and hands them to the test.
    let (comments_tx, mut comments) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let youtrack = axum::Router::new().route(
        "/api/issues/{id}/comments",
        post(move |axum::Json(body): axum::Json<Value>| {
            let tx = comments_tx.clone();
            async move {
                let _ = tx.send(body);
                axum::Json(json!({"id": "4-1288", "$type": "IssueComment"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let youtrack_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, youtrack).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    use std::os::unix::fs::PermissionsExt;
    let secret = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        path
    };
    config.chat = vec![synapse.sink(dir.path())];
    config.youtrack.base_url = Some(format!("http://{youtrack_addr}"));
    config.youtrack.token_file = Some(secret("youtrack.token", &format!("perm:{}", "t".repeat(40))));
    config.outbound.retry_base_ms = 50;
    let app = spawn_with(dir, config).await;

    let scripts = scripts_file(app.dir.path(), &[("ios-build", "fail.sh")]);
    let (tx, lines) = std::sync::mpsc::channel();
    let _worker = agent(app.dir.path(), &app.url(""), "mac-7", "", 1, &scripts, &tx);
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    wait_for(&lines, "reported", 1);

    let comment = tokio::time::timeout(Duration::from_secs(30), comments.recv()).await.unwrap().unwrap();
    let text = comment["text"].as_str().unwrap();
    assert!(text.lines().count() <= 5, "{text}");
    let shown = displayed(text);
    for part in ["failed on mac-7", "Failing test: AppTests.testOffline", "/log?key="] {
        assert!(shown.contains(part), "{part} missing from {shown}");
    }

    app.wait_for_count("NotificationDelivered", 4).await;
    let notices = synapse.notices().await;
    assert_eq!(notices.len(), 3, "{notices:#?}");
    assert!(notices[0].starts_with("⏳ MOB-7 ios-build #1 queued"));
    assert!(notices[1].starts_with("🔨 MOB-7 ios-build #1 running") && notices[1].contains("on mac-7"));
    assert!(notices[2].starts_with("❌ MOB-7 ios-build #1 failed") && notices[2].contains("log: http://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_edit_in_place_a_build_keeps_one_message_that_later_states_replace() {
    let synapse = start_synapse().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    let mut sink = synapse.sink(dir.path());
    sink.edit_in_place = true;
    config.chat = vec![sink];
    config.outbound.retry_base_ms = 50;
    let app = spawn_with(dir, config).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    app.wait_for_count("NotificationDelivered", 1).await;
    let token = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
    let post = |path: String, body: Value| app.client.post(app.url(&path)).bearer_auth(&token).json(&body).send();
    post("/api/v1/nodes/claim".into(), json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5})).await.unwrap();
    app.wait_for_count("NotificationDelivered", 2).await;
    let result = json!({"node_id": "mac-1", "attempt": 1, "outcome": "succeeded", "duration_ms": 1000});
    post(format!("/api/v1/builds/{build}/result"), result).await.unwrap();
    app.wait_for_count("NotificationDelivered", 3).await;

    let events = synapse.messages().await;
    assert_eq!(events.len(), 3, "{events:#?}");
    let original = events[0]["event_id"].as_str().unwrap();
    assert!(events[0]["content"]["body"].as_str().unwrap().starts_with("⏳ MOB-7 ios-build #1 queued"));
    for (edit, prefix) in events[1..].iter().zip(["🔨 MOB-7 ios-build #1 running", "✅ MOB-7 ios-build #1 succeeded"])
    {
        assert_eq!(edit["content"]["m.relates_to"]["rel_type"], "m.replace");
        assert_eq!(edit["content"]["m.relates_to"]["event_id"], original);
        assert!(edit["content"]["m.new_content"]["body"].as_str().unwrap().starts_with(prefix), "{edit:#?}");
    }
}

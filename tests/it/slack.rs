//! Rebuild and cancel from Slack: a stand-in of Slack's Web API (TLS) that checks the buttons'
//! blocks as Slack would, and posts clicks to the gateway's interactivity URL signed with the
//! app's signing secret, as Slack does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::Json;
use meshgate::config::{ChatConfig, ChatKind};
use meshgate::tls::TlsListener;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::helpers::*;
use crate::pki::pki;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const CHANNEL: &str = "C0BUILDS";
const ALICE: &str = "U0ALICE";
const BOB: &str = "U0BOB";

/// A request Slack's Web API got.
#[derive(Debug)]
struct Call {
    method: String,
    body: Value,
}

/// Slack's Web API, as far as the gateway uses it: `chat.postMessage` (a new `ts` each),
/// `chat.update`, `chat.postEphemeral`; blocks that are not what Slack takes are refused as Slack
/// refuses them (`ok: false`, `invalid_blocks`).
struct Slack {
    addr: std::net::SocketAddr,
    calls: mpsc::UnboundedReceiver<Call>,
    held: VecDeque<Call>,
}

fn blocks_are_valid(body: &Value) -> bool {
    let Some(blocks) = body.get("blocks") else { return true };
    let section = &blocks[0];
    let buttons = blocks[1]["elements"].as_array();
    section["type"] == "section"
        && section["text"]["type"] == "mrkdwn"
        && section["text"]["text"] == body["text"]
        && blocks[1]["type"] == "actions"
        && buttons.is_some_and(|b| {
            b.len() == 1
                && b[0]["type"] == "button"
                && b[0]["text"]["type"] == "plain_text"
                && matches!(b[0]["action_id"].as_str(), Some("rebuild" | "cancel"))
                && b[0]["value"].as_str().is_some_and(|v| Uuid::parse_str(v).is_ok())
        })
}

async fn slack() -> Slack {
    let (tx, calls) = mpsc::unbounded_channel();
    let posted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    async fn answer(
        State((tx, posted)): State<(mpsc::UnboundedSender<Call>, Arc<std::sync::atomic::AtomicU64>)>,
        request: Request,
    ) -> Json<Value> {
        let method = request.uri().path().trim_start_matches("/api/").to_owned();
        let bytes = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let answer = if !blocks_are_valid(&body) {
            json!({"ok": false, "error": "invalid_blocks"})
        } else {
            match method.as_str() {
                "chat.postMessage" => {
                    let n = posted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    json!({"ok": true, "channel": body["channel"], "ts": format!("1700000000.{n:06}")})
                }
                "chat.update" => json!({"ok": true, "channel": body["channel"], "ts": body["ts"]}),
                "chat.postEphemeral" => json!({"ok": true, "message_ts": "1700000099.000001"}),
                _ => json!({"ok": false, "error": "unknown_method"}),
            }
        };
        let _ = tx.send(Call { method, body });
        Json(answer)
    }
    let router = axum::Router::new().fallback(answer).with_state((tx, posted));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = TlsListener::new(listener, pki().server(1)).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Slack { addr, calls, held: VecDeque::new() }
}

impl Slack {
    /// The next call of `method`, the others kept for later.
    async fn next(&mut self, method: &str) -> Value {
        if let Some(at) = self.held.iter().position(|c| c.method == method) {
            return self.held.remove(at).unwrap().body;
        }
        loop {
            let call = tokio::time::timeout(Duration::from_secs(30), self.calls.recv()).await.expect("a call").unwrap();
            if call.method == method {
                return call.body;
            }
            self.held.push_back(call);
        }
    }
}

/// A click as Slack posts it: form-encoded `payload`, signed at `at` (seconds) with `secret`.
fn click(
    app: &TestApp,
    secret: &str,
    at: i64,
    payload: &Value,
    retry: Option<u32>,
) -> impl std::future::Future<Output = reqwest::Response> {
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    post_signed(app, secret, at, body, retry)
}

fn post_signed(
    app: &TestApp,
    secret: &str,
    at: i64,
    body: String,
    retry: Option<u32>,
) -> impl std::future::Future<Output = reqwest::Response> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("v0:{at}:{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut request = app
        .client
        .post(app.url("/chat/slack/actions"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Slack-Request-Timestamp", at.to_string())
        .header("X-Slack-Signature", format!("v0={hex}"));
    if let Some(n) = retry {
        request = request.header("X-Slack-Retry-Num", n.to_string()).header("X-Slack-Retry-Reason", "http_timeout");
    }
    let request = request.body(body);
    async move { request.send().await.unwrap() }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What Slack sends for a click on a build message's button.
fn payload(user: &str, action: &str, build: &str, message_ts: &str, action_ts: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP",
        "team": {"id": "T0TEAM", "domain": "example"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": CHANNEL, "is_ephemeral": false},
        "channel": {"id": CHANNEL, "name": "builds"},
        "message": {"type": "message", "ts": message_ts, "text": "…"},
        "response_url": "https://hooks.slack.com/actions/T0TEAM/1/x",
        "trigger_id": "1.2.3",
        "actions": [{
            "action_id": action, "block_id": "meshgate", "value": build, "type": "button",
            "text": {"type": "plain_text", "text": action}, "action_ts": action_ts,
        }],
    })
}

fn button(message: &Value) -> (String, String) {
    let button = &message["blocks"][1]["elements"][0];
    (button["action_id"].as_str().unwrap().to_owned(), button["value"].as_str().unwrap().to_owned())
}

async fn gateway(slack: &Slack, allowed: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    let write = |name: &str, value: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        path
    };
    config.chat = vec![ChatConfig {
        url: Some(format!("https://{}/api", slack.addr)),
        channel: Some(CHANNEL.into()),
        token_file: Some(write("slack.token", &format!("xoxb-{}", "t".repeat(40)))),
        signing_secret_file: Some(write("slack.signing-secret", SECRET)),
        allowed_users: allowed.iter().map(|u| u.to_string()).collect(),
        ..ChatConfig::new("team", ChatKind::SlackApi)
    }];
    config.outbound.retry_base_ms = 10;
    spawn_with(dir, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_is_cancelled_and_rebuilt_from_its_slack_message_by_allowed_users_only() {
    let mut slack = slack().await;
    let app = gateway(&slack, &[ALICE]).await;
    let first = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    let queued = slack.next("chat.postMessage").await;
    assert_eq!(button(&queued), ("cancel".into(), first.to_string()), "a queued build offers Cancel");
    assert!(queued["text"].as_str().unwrap().starts_with("⏳ MOB-7 ios-build #1 queued"));
    let ts = "1700000000.000001";
    app.wait_for_count("NotificationDelivered", 1).await;

    // Alice cancels it; Slack sends the click again (a retry of the same action): one action.
    let cancel = payload(ALICE, "cancel", &first.to_string(), ts, "1700000100.000001");
    assert_eq!(click(&app, SECRET, now(), &cancel, None).await.status(), 200);
    assert_eq!(click(&app, SECRET, now(), &cancel, Some(1)).await.status(), 200);
    let cancelled = slack.next("chat.update").await;
    assert_eq!(cancelled["ts"], ts, "the build's message is updated in place");
    let text = cancelled["text"].as_str().unwrap();
    assert!(text.starts_with("⛔ MOB-7 ios-build #1 cancelled") && text.contains("by U0ALICE (slack)"), "{text}");
    assert_eq!(button(&cancelled), ("rebuild".into(), first.to_string()), "a finished build offers Rebuild");
    assert_eq!((app.count("BuildActionRequested").await, app.count("BuildCancelled").await), (1, 1));

    // Bob may not: told so privately, recorded as refused, nothing started.
    let bob = payload(BOB, "rebuild", &first.to_string(), ts, "1700000200.000001");
    assert_eq!(click(&app, SECRET, now(), &bob, None).await.status(), 200);
    let whisper = slack.next("chat.postEphemeral").await;
    assert_eq!((whisper["user"].as_str(), whisper["channel"].as_str()), (Some(BOB), Some(CHANNEL)));
    assert!(whisper["text"].as_str().unwrap().contains("not allowed"), "{whisper}");
    assert_eq!(app.count("BuildRequested").await, 1);

    // Alice rebuilds it: a new build, its own message with Cancel; the old one says so.
    let rebuild = payload(ALICE, "rebuild", &first.to_string(), ts, "1700000300.000001");
    assert_eq!(click(&app, SECRET, now(), &rebuild, None).await.status(), 200);
    let second = slack.next("chat.postMessage").await;
    let (action, second_id) = button(&second);
    assert_eq!(action, "cancel");
    let text = second["text"].as_str().unwrap();
    assert!(text.starts_with("⏳ MOB-7 ios-build #2 queued") && text.contains("rebuild of ios-build #1"), "{text}");
    let noted = slack.next("chat.update").await;
    assert_eq!(noted["ts"], ts);
    let text = noted["text"].as_str().unwrap();
    assert!(text.contains("rebuilt as ios-build #2 by U0ALICE (slack)") && text.contains("was cancelled"), "{text}");

    // A double click on Rebuild: the rebuild is queued, so nothing new; Alice is told which.
    let again = payload(ALICE, "rebuild", &first.to_string(), ts, "1700000300.000002");
    assert_eq!(click(&app, SECRET, now(), &again, None).await.status(), 200);
    let whisper = slack.next("chat.postEphemeral").await;
    assert!(whisper["text"].as_str().unwrap().contains("ios-build #2 is already queued"), "{whisper}");
    assert_eq!(app.count("BuildRequested").await, 2);

    // The audit holds each action with what became of it.
    let audit =
        answer_of(app.client.get(app.url("/api/v1/events?type=BuildActionRequested")).bearer_auth(&app.admin_token))
            .await;
    let outcomes: Vec<(&str, &str, &str)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let d = &e["data"];
            (d["user"].as_str().unwrap(), d["action"].as_str().unwrap(), d["outcome"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (ALICE, "cancel", "cancelled"),
            (BOB, "rebuild", "not_allowed"),
            (ALICE, "rebuild", "rebuilt"),
            (ALICE, "rebuild", "already_queued")
        ]
    );
    let rebuilt =
        answer_of(app.client.get(app.url(&format!("/api/v1/builds/{second_id}"))).bearer_auth(&app.admin_token)).await;
    assert_eq!(
        (rebuilt["build"]["rebuild_of"].as_str(), rebuilt["build"]["requested_by"].as_str()),
        (Some(first.to_string().as_str()), Some(ALICE))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_stale_oversized_or_wrong_clicks_are_refused_and_record_nothing() {
    let slack = slack().await;
    let app = gateway(&slack, &[ALICE]).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    app.wait_for_count("NotificationDelivered", 1).await;
    let before = app.all_events().await.len();
    let cancel = |build: &str, channel: &str| {
        let mut p = payload(ALICE, "cancel", build, "1700000000.000001", "1700000100.000001");
        p["channel"]["id"] = json!(channel);
        p
    };
    let good = cancel(&build.to_string(), CHANNEL);
    let status = |r: reqwest::Response| r.status().as_u16();

    assert_eq!(status(click(&app, "not-the-secret", now(), &good, None).await), 401, "another secret");
    assert_eq!(status(click(&app, SECRET, now() - 301, &good, None).await), 401, "signed 5 minutes ago and more");
    assert_eq!(status(click(&app, SECRET, now() + 301, &good, None).await), 401, "from the future");
    let unsigned = app.client.post(app.url("/chat/slack/actions")).body("payload=%7B%7D").send().await.unwrap();
    assert_eq!(status(unsigned), 401, "no signature");
    let huge = format!("payload={}", "x".repeat(64 * 1024));
    assert_eq!(status(post_signed(&app, SECRET, now(), huge, None).await), 413, "over 64 KiB");
    assert_eq!(status(post_signed(&app, SECRET, now(), "payload=%7Bnot%20json".into(), None).await), 400, "not JSON");
    assert_eq!(status(post_signed(&app, SECRET, now(), "text=hello".into(), None).await), 400, "no payload");
    let mut shortcut = good.clone();
    shortcut["type"] = json!("shortcut");
    assert_eq!(status(click(&app, SECRET, now(), &shortcut, None).await), 400, "not a button");
    let mut unknown_action = good.clone();
    unknown_action["actions"][0]["action_id"] = json!("deploy");
    assert_eq!(status(click(&app, SECRET, now(), &unknown_action, None).await), 400, "no such action");
    assert_eq!(status(click(&app, SECRET, now(), &cancel(&Uuid::now_v7().to_string(), CHANNEL), None).await), 404);
    assert_eq!(status(click(&app, SECRET, now(), &cancel(&build.to_string(), "C0OTHER"), None).await), 403);
    let mut other_message = good.clone();
    other_message["container"]["message_ts"] = json!("1600000000.000001");
    assert_eq!(status(click(&app, SECRET, now(), &other_message, None).await), 403, "not the build's message");

    assert_eq!(app.all_events().await.len(), before, "a refused click records nothing");
    // The signed, fresh click still works afterwards.
    assert_eq!(status(click(&app, SECRET, now(), &good, None).await), 200);
    app.wait_for_count("BuildCancelled", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allowed_users_there_are_no_buttons() {
    let mut slack = slack().await;
    let app = gateway(&slack, &[]).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    let posted = slack.next("chat.postMessage").await;
    assert!(posted.get("blocks").is_none(), "{posted}");
    // And no sink takes clicks: a signed one is refused.
    let click = click(&app, SECRET, now(), &payload(ALICE, "cancel", &Uuid::nil().to_string(), "1.1", "2.2"), None);
    assert_eq!(click.await.status(), 401);
}

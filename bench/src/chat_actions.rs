//! How fast Slack is answered: signed button clicks (`POST /chat/slack/actions`) on a gateway in
//! this process whose `slack_api` sink posts to a Slack stub of its own, `concurrency` at a time;
//! each answer comes once the click's decision is in the log. Then every click again, as Slack
//! sends one it thinks was lost (`X-Slack-Retry-Num`): answered from the log, nothing more done.
//! Slack gives up after 3 s.

use std::time::{Duration, Instant};

use anyhow::Context;
use axum::routing::post;
use futures_util::stream::{self, StreamExt};
use meshgate::config::{ChatConfig, ChatKind};
use serde_json::{json, Value};

use crate::dispatch::{percentile, post_delivery};
use crate::server::BenchServer;

#[derive(Debug, clap::Args)]
pub struct ChatActionsArgs {
    /// Builds, each cancelled by one click.
    #[arg(long, default_value_t = 400)]
    clicks: u64,
    /// Clicks in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const CHANNEL: &str = "C0BENCH";
const USER: &str = "U0BENCH";

/// The message `ts` the stub gives issue `MOB-n`'s first message.
fn ts_of(n: u64) -> String {
    format!("1700000000.{n:06}")
}

/// Slack's Web API as far as the sink uses it, answering at once; a message's `ts` is its issue's
/// number, so a click can name it.
async fn slack_stub() -> anyhow::Result<String> {
    async fn answer(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
        let text = body["text"].as_str().unwrap_or_default();
        let n = text.split("MOB-").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok());
        let ts = body["ts"].as_str().map(str::to_owned).unwrap_or_else(|| ts_of(n.unwrap_or(0)));
        axum::Json(json!({"ok": true, "channel": CHANNEL, "ts": ts}))
    }
    let router = axum::Router::new().route("/api/{method}", post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}/api"))
}

fn click(build: &str, n: u64) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": USER},
        "channel": {"id": CHANNEL},
        "container": {"type": "message", "message_ts": ts_of(n), "channel_id": CHANNEL},
        "actions": [{"action_id": "cancel", "block_id": "meshgate", "value": build, "type": "button",
                     "action_ts": format!("1700000100.{n:06}")}],
    });
    format!("payload={}", meshgate::outbound::exchange::percent_encode(&payload.to_string()))
}

/// Sends every click, `concurrency` at a time: how long each took to be answered.
async fn send_all(
    client: &reqwest::Client,
    url: &str,
    clicks: &[String],
    concurrency: usize,
    retry: bool,
) -> anyhow::Result<Vec<Duration>> {
    let timed = stream::iter(clicks.iter().cloned())
        .map(|body| {
            let client = client.clone();
            let url = url.to_owned();
            async move {
                let at = chrono::Utc::now().timestamp().to_string();
                let mut request = client
                    .post(url)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .header("X-Slack-Request-Timestamp", &at)
                    .header("X-Slack-Signature", meshgate::http::slack::signature(SECRET, &at, body.as_bytes()));
                if retry {
                    request = request.header("X-Slack-Retry-Num", "1");
                }
                let started = Instant::now();
                let answered = request.body(body).send().await?;
                anyhow::ensure!(answered.status() == 200, "a click was answered {}", answered.status());
                Ok::<_, anyhow::Error>(started.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let mut took = timed.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    took.sort();
    Ok(took)
}

pub async fn run(args: ChatActionsArgs) -> anyhow::Result<()> {
    let api = slack_stub().await?;
    let server = BenchServer::start_with(|config| {
        let write = |name: &str, value: &str| {
            let path = config.server.data_dir.with_file_name(name);
            let _ = meshgate::secrets::write_token_file(&path, value, 0o400);
            path
        };
        config.chat = vec![ChatConfig {
            url: Some(api.clone()),
            channel: Some(CHANNEL.into()),
            token_file: Some(write("slack.token", "xoxb-bench-token-0123456789abcdefghij")),
            signing_secret_file: Some(write("slack.signing-secret", SECRET)),
            allowed_users: vec![USER.into()],
            ..ChatConfig::new("team", ChatKind::SlackApi)
        }];
    })
    .await?;
    let base = format!("http://{}", server.addr);
    let client = meshgate::tls::client(reqwest::Client::builder().pool_max_idle_per_host(args.concurrency), None)?;
    let mut clicks = Vec::new();
    for n in 1..=args.clicks {
        let answer: Value = post_delivery(&client, &base, &server.webhook_token, n).await?.json().await?;
        let build = answer["build_id"].as_str().context("a build")?.to_owned();
        clicks.push(click(&build, n));
    }
    let url = format!("{base}/chat/slack/actions");
    let first = send_all(&client, &url, &clicks, args.concurrency, false).await?;
    let again = send_all(&client, &url, &clicks, args.concurrency, true).await?;
    // Every click did what it asked: each build cancelled once.
    let admin = std::fs::read_to_string(server.dir.join("admin.token"))?;
    let cancelled: Value = client
        .get(format!("{base}/api/v1/builds?state=cancelled&limit=1000"))
        .bearer_auth(admin.trim())
        .send()
        .await?
        .json()
        .await?;
    let cancelled = cancelled["builds"].as_array().map_or(0, Vec::len) as u64;
    anyhow::ensure!(cancelled == args.clicks, "{cancelled} builds cancelled by {} clicks", args.clicks);
    let max = |d: &[Duration]| d.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!("slack actions: {} clicks, {} at a time, each cancelling a queued build", args.clicks, args.concurrency);
    for (what, took) in [("first click", &first), ("sent again", &again)] {
        println!(
            "{what}: answered in p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (Slack waits 3000 ms)",
            percentile(took, 0.5),
            percentile(took, 0.99),
            max(took)
        );
    }
    server.stop().await
}

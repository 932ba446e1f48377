//! `meshgate selftest` and `POST /api/v1/selftest`: what a rotation can break, checked without
//! starting a build. The secret files (readable, tight permissions, the certificate pair); a
//! synthetic delivery posted to the gateway's own webhook with the webhook token (recorded as a
//! self-test, never routed); YouTrack's token (`/api/users/me` is `bot_login`); and every sink's
//! endpoint, with a visible test line on sinks configured `selftest = true`.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::config::Config;
use crate::secrets::Token;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub check: String,
    pub result: CheckResult,
    pub detail: String,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    Ok,
    Failed,
    /// Nothing to check: what it would check is not configured.
    Skipped,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Ok => "ok",
            CheckResult::Failed => "failed",
            CheckResult::Skipped => "skipped",
        }
    }
}

impl Check {
    fn new(check: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        let result = if ok { CheckResult::Ok } else { CheckResult::Failed };
        Check { check: check.into(), result, detail: detail.into() }
    }

    fn skipped(check: &str, detail: &str) -> Check {
        Check { check: check.into(), result: CheckResult::Skipped, detail: detail.into() }
    }
}

/// Runs every check of `config`.
pub async fn run(config: &Config) -> Vec<Check> {
    let problems = config.problems();
    let mut checks = vec![Check::new(
        "secret files",
        problems.is_empty(),
        if problems.is_empty() { "readable, permissions tight".to_owned() } else { problems.join("; ") },
    )];
    let http = match client(config) {
        Ok(http) => http,
        Err(e) => {
            checks.push(Check::new("https client", false, crate::report::chain(e.as_ref())));
            return checks;
        }
    };
    checks.push(webhook(config, &http).await);
    let token = youtrack(config, &http).await;
    // The comments' sink is the token's: it fails with it.
    let token_check =
        (token.result == CheckResult::Failed).then(|| format!("the youtrack token check failed: {}", token.detail));
    checks.push(token);
    match crate::outbound::sinks(config) {
        Ok(sinks) => {
            let text = format!("meshgate self-test: this sink works ({})", Utc::now().format("%Y-%m-%d %H:%M:%S UTC"));
            for sink in sinks {
                let mut probe = sink.probe(&http).await;
                if let (crate::outbound::Target::YouTrack(_), Some(failed)) = (&*sink.target(), &token_check) {
                    probe = crate::outbound::probe::Probe { ok: false, detail: failed.clone() };
                }
                checks.push(Check::new(format!("sink {}", sink.name), probe.ok, probe.detail));
                let visible = config.chat.iter().any(|c| c.name == sink.name && c.selftest);
                if visible && probe.ok {
                    if let Some(line) = sink.test_line(&http, &text).await {
                        checks.push(Check::new(format!("sink {} test line", sink.name), line.ok, line.detail));
                    }
                }
            }
        }
        Err(e) => checks.push(Check::new("sinks", false, crate::report::chain(&e))),
    }
    checks
}

/// Trusts what the gateway's clients trust, and the CA a worker is given for the gateway.
fn client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(config.outbound.timeout_seconds));
    if let Some(ca) = &config.worker.ca_file {
        for certificate in crate::tls::ca_bundle(ca)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(crate::tls::client(builder, config.outbound.ca_file.as_deref())?)
}

/// A synthetic delivery to the gateway's own public webhook URL, with the first webhook token.
async fn webhook(config: &Config, http: &reqwest::Client) -> Check {
    let url = format!("{}{}", config.public_url(), config.webhook.path);
    let name = format!("webhook {url}");
    let token = match config.webhook_token_files().first().map(|f| Token::read(f)) {
        Some(Ok(token)) => token,
        Some(Err(e)) => return Check::new(name, false, crate::report::chain(&e)),
        None => return Check::new(name, false, "no webhook token file"),
    };
    let body = json!({
        "event": meshgate_domain::ingest::SELF_TEST_EVENT,
        "timestamp": Utc::now(),
        "id": "SELFTEST-1",
        "summary": "meshgate self-test",
        "project": {"key": "SELFTEST", "name": "meshgate self-test", "shortName": "SELFTEST"},
        "selfTestId": Uuid::now_v7(),
    });
    let sent = http
        .post(&url)
        .header(config.webhook.header.as_str(), token.expose())
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Check::new(name, false, crate::report::http_error(e)),
    };
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    match (status.as_u16(), answer["reason"].as_str()) {
        (200, Some("self_test")) => Check::new(
            name,
            true,
            format!("recorded as a self-test, correlation {}", answer["correlation_id"].as_str().unwrap_or("?")),
        ),
        (401, _) => Check::new(name, false, "401: the gateway does not accept this webhook token"),
        (code, _) => Check::new(name, false, format!("answered {code}: {answer}")),
    }
}

/// YouTrack's token belongs to `bot_login`.
async fn youtrack(config: &Config, http: &reqwest::Client) -> Check {
    let (Some(base_url), Some(token_file)) = (&config.youtrack.base_url, &config.youtrack.token_file) else {
        return Check::skipped("youtrack token", "no [youtrack] base_url and token_file");
    };
    let token = match Token::read(token_file) {
        Ok(token) => secrecy::SecretString::from(token.expose().to_owned()),
        Err(e) => return Check::new("youtrack token", false, crate::report::chain(&e)),
    };
    let youtrack = crate::youtrack::YouTrack::new(http.clone(), base_url, token);
    match (youtrack.me().await, &config.youtrack.bot_login) {
        (Ok(login), Some(bot)) if login.eq_ignore_ascii_case(bot) => {
            Check::new("youtrack token", true, format!("belongs to {login}"))
        }
        (Ok(login), Some(bot)) => Check::new(
            "youtrack token",
            false,
            format!("belongs to {login}, not bot_login {bot}: its comments would start builds"),
        ),
        (Ok(login), None) => Check::new("youtrack token", false, format!("belongs to {login}; set bot_login to it")),
        (Err(e), _) => Check::new("youtrack token", false, crate::report::chain(&e)),
    }
}

/// The report as a table.
pub fn table(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.chars().count()).max().unwrap_or(5).max(5);
    let mut text = format!("{:<width$}  {:<7}  detail\n", "check", "result");
    for c in checks {
        text.push_str(&format!("{:<width$}  {:<7}  {}\n", c.check, c.result.as_str(), c.detail));
    }
    text
}

pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.result != CheckResult::Failed)
}

//! Commands that act on the log while a gateway runs ask the gateway (it holds the log): an admin
//! API call to where it listens, with the admin token of the configuration.

use anyhow::Context;
use serde_json::Value;

use crate::config::Config;
use crate::secrets::Token;

/// Where the running gateway answers: its public URL with TLS, else its listen address.
fn gateway_url(config: &Config) -> String {
    if config.tls_files().is_some() {
        return config.public_url();
    }
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// GETs the running gateway's `path` (with the admin token), for an answer read as it arrives;
/// none when no gateway answers there.
pub async fn get(config: &Config, path: &str) -> anyhow::Result<Option<reqwest::Response>> {
    let http = crate::tls::client(reqwest::Client::builder(), config.outbound.ca_file.as_deref())?;
    let token = Token::read(&config.admin_token_file())?;
    let url = format!("{}{path}", gateway_url(config));
    match http.get(&url).bearer_auth(token.expose()).send().await {
        Ok(response) => Ok(Some(response)),
        Err(e) if e.is_connect() => Ok(None),
        Err(e) => Err(anyhow::anyhow!(crate::report::http_error(e))).context(format!("cannot ask {url}")),
    }
}

/// POSTs `body` to the running gateway's `path`; none when no gateway answers there.
pub async fn ask(config: &Config, path: &str, body: &Value) -> anyhow::Result<Option<Value>> {
    let http = crate::tls::client(reqwest::Client::builder(), config.outbound.ca_file.as_deref())?;
    let token = Token::read(&config.admin_token_file())?;
    let url = format!("{}{path}", gateway_url(config));
    let sent = http
        .post(&url)
        .bearer_auth(token.expose())
        .json(body)
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) if e.is_connect() => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!(crate::report::http_error(e))).context(format!("cannot ask {url}")),
    };
    let status = response.status();
    let answer: Value = response.json().await.with_context(|| format!("{url} answered {status} without json"))?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {}", answer["message"].as_str().unwrap_or_default());
    }
    Ok(Some(answer))
}

//! Commands that act on the log while a gateway runs ask the gateway (it holds the log): an admin
//! API call to where it listens, with the admin token of the configuration.

use anyhow::Context;
use serde_json::Value;

use crate::config::Config;
use crate::secrets::Token;

/// Where the running gateway answers, and a client that reaches it there: with TLS, its public
/// URL (the name its certificate is for) resolved to where it listens on this machine; else its
/// listen address.
fn gateway(config: &Config) -> anyhow::Result<(String, reqwest::Client)> {
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut builder = reqwest::Client::builder();
    let url = if config.tls_files().is_some() {
        let public = config.public_url();
        if let Some(host) = reqwest::Url::parse(&public).ok().and_then(|u| u.host_str().map(str::to_owned)) {
            builder = builder.resolve(&host, addr);
        }
        public
    } else {
        format!("http://{addr}")
    };
    Ok((url, crate::tls::client(builder, config.outbound.ca_file.as_deref())?))
}

/// GETs the running gateway's `path` (with the admin token), for an answer read as it arrives;
/// none when no gateway answers there.
pub async fn get(config: &Config, path: &str) -> anyhow::Result<Option<reqwest::Response>> {
    let (base, http) = gateway(config)?;
    let token = Token::read(&config.admin_token_file())?;
    let url = format!("{base}{path}");
    match http.get(&url).bearer_auth(token.expose()).send().await {
        Ok(response) => Ok(Some(response)),
        Err(e) if e.is_connect() => Ok(None),
        Err(e) => Err(anyhow::anyhow!(crate::report::http_error(e))).context(format!("cannot ask {url}")),
    }
}

/// POSTs `body` to the running gateway's `path`; none when no gateway answers there.
pub async fn ask(config: &Config, path: &str, body: &Value) -> anyhow::Result<Option<Value>> {
    let (base, http) = gateway(config)?;
    let token = Token::read(&config.admin_token_file())?;
    let url = format!("{base}{path}");
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

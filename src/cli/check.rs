//! `meshgate config check`: validates a configuration without starting anything, reads every file
//! it names the way the gateway would (token, key and URL files with their permission checks, the
//! certificate pair, CA bundles, the worker's scripts), and prints the effective configuration with
//! secrets shown as file paths only.

use std::path::Path;

use crate::config::{ChatKind, Config};

/// Checks the configuration `file` (or the defaults and environment); every problem is printed,
/// naming its key and file. Fails if there is any.
pub fn run(file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    let problems = config.problems();
    let name = file.map_or_else(|| "the defaults".to_owned(), |f| f.display().to_string());
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        anyhow::bail!("{} problem(s) in {name}", problems.len());
    }
    for warning in warnings(&config) {
        eprintln!("warning: {warning}");
    }
    println!("# configuration OK: {name}");
    println!("# effective configuration (defaults, file, MESHGATE_ variables); secrets as file paths only");
    print!("{}", toml::to_string_pretty(&redacted(&config))?);
    Ok(())
}

fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for chat in &config.chat {
        let webhook = matches!(
            chat.kind,
            ChatKind::SlackWebhook | ChatKind::TeamsWorkflow | ChatKind::Discord | ChatKind::Generic
        );
        if webhook && chat.url.is_some() {
            warnings.push(format!(
                "chat sink `{}`: its webhook URL is written in the configuration; it is a secret, keep it in a url_file",
                chat.name
            ));
        }
    }
    // A build node's file (a `[worker]` with its gateway) needs no triggers.
    if config.triggers.is_empty() && config.worker.gateway.is_none() {
        warnings.push("no [[triggers]]: every delivery will be recorded and ignored".into());
    }
    if config.artifacts.keep_days.is_some() {
        warnings.push(
            "[artifacts] keep_days is replaced by [retention] artifacts_days; it is still honoured (and wins) until \
             you move it"
                .into(),
        );
    }
    if let Some(largest) = config.largest_recordable_body() {
        warnings.push(config.too_large_bodies(largest));
    }
    warnings
}

/// The configuration as printed: inline URLs (a webhook URL is a secret) keep their scheme and
/// host only.
fn redacted(config: &Config) -> Config {
    let mut config = config.clone();
    for chat in &mut config.chat {
        if let Some(url) = &chat.url {
            chat.url = Some(redact_url(url));
        }
    }
    config
}

fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}/… (not shown)")
        }
        None => "(not shown)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_urls_keep_only_their_scheme_and_host() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/… (not shown)"
        );
        assert_eq!(redact_url("https://user:pw@example.com?x=1"), "https://example.com/… (not shown)");
        assert_eq!(redact_url("nonsense"), "(not shown)");
    }
}

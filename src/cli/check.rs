//! `meshgate config check`: validates a configuration without starting anything, reads every file
//! it names the way the gateway would (token, key and URL files with their permission checks, the
//! certificate pair, CA bundles, the worker's scripts), and prints the effective configuration with
//! secrets shown as file paths only.

use std::path::{Path, PathBuf};

use crate::config::{ChatKind, Config};
use crate::secrets::Token;

/// Checks the configuration `file` (or the defaults and environment); every problem is printed,
/// naming its key and file. Fails if there is any.
pub fn run(file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    let problems = problems(&config);
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

/// Every file the configuration names that the gateway (or the worker) would refuse.
pub fn problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let mut secret = |key: String, path: &Path, generated: bool| {
        if generated && !path.exists() {
            return; // written on first start
        }
        if let Err(e) = Token::read(path) {
            problems.push(format!("{key}: {}", crate::report::chain(&e)));
        }
    };
    if config.webhook.token_files.is_empty() {
        secret("webhook.token_files".into(), &config.webhook_token_files()[0], true);
    }
    for (i, path) in config.webhook.token_files.iter().enumerate() {
        secret(format!("webhook.token_files[{i}]"), path, false);
    }
    secret("admin.token_file".into(), &config.admin_token_file(), config.admin.token_file.is_none());
    secret("nodes.token_file".into(), &config.nodes_token_file(), config.nodes.token_file.is_none());
    let optional: [(&str, &Option<PathBuf>); 6] = [
        ("admin.previous_token_file", &config.admin.previous_token_file),
        ("nodes.previous_token_file", &config.nodes.previous_token_file),
        ("youtrack.token_file", &config.youtrack.token_file),
        ("youtrack.previous_token_file", &config.youtrack.previous_token_file),
        ("pager.routing_key_file", &config.pager.routing_key_file),
        ("worker.token_file", &config.worker.token_file),
    ];
    for (key, path) in optional {
        if let Some(path) = path {
            secret(key.into(), path, false);
        }
    }
    for (i, chat) in config.chat.iter().enumerate() {
        for (key, path) in [("url_file", &chat.url_file), ("token_file", &chat.token_file)] {
            if let Some(path) = path {
                secret(format!("chat[{i}].{key} (`{}`)", chat.name), path, false);
            }
        }
    }
    if let Some(files) = config.tls_files() {
        if let Err(e) = crate::tls::server_config(&files) {
            problems.push(format!("server.tls_cert_file / server.tls_key_file: {}", crate::report::chain(&e)));
        }
    }
    for (key, path) in [("outbound.ca_file", &config.outbound.ca_file), ("worker.ca_file", &config.worker.ca_file)] {
        if let Some(path) = path {
            if let Err(e) = crate::tls::ca_bundle(path) {
                problems.push(format!("{key}: {}", crate::report::chain(&e)));
            }
        }
    }
    if let Some(path) = &config.worker.scripts {
        if let Err(e) = meshgate_worker::scripts::Scripts::load(path) {
            problems.push(format!("worker.scripts: {}", crate::report::chain(&e)));
        }
    }
    problems
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
    if config.triggers.is_empty() {
        warnings.push("no [[triggers]]: every delivery will be recorded and ignored".into());
    }
    if let Some(largest) = config.largest_recordable_body() {
        warnings.push(too_large_bodies(config, largest));
    }
    warnings
}

/// Bodies an EventStoreDB log cannot take, in words.
pub(crate) fn too_large_bodies(config: &Config, largest: usize) -> String {
    format!(
        "webhook.max_body_bytes ({}) is above what one append to the log may hold (store.max_append_bytes {}): \
         deliveries larger than about {largest} bytes will be refused with 413; raise the server's MaxAppendSize \
         and store.max_append_bytes, or lower webhook.max_body_bytes",
        config.webhook.max_body_bytes, config.store.max_append_bytes
    )
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

//! Reloading the tokens the gateway receives without a restart, for rotations: `SIGHUP` or
//! `POST /api/v1/tokens/reload` (admin token).
//!
//! The sender never retries, so a restart during a rotation (two of them: one to accept both
//! tokens, one to drop the old) loses whatever it posts meanwhile. A reload reads the
//! configuration again and swaps in the tokens of `webhook.token_files`, of the admin API
//! (`admin.token_file`, `admin.previous_token_file`) and of the build pool (`nodes.token_file`,
//! `nodes.previous_token_file`), and, when the gateway serves HTTPS, its certificate and key
//! (`server.tls_cert_file`, `server.tls_key_file`), so a renewal needs no restart either. It also
//! reads again every secret the gateway sends with ([`OutboundSecrets`]): the chat sinks' tokens
//! and secret URLs, Slack's signing secrets, the Matrix rooms' tokens, the pager's routing key and
//! the YouTrack token (with its `previous_token_file`) of comments, commands and reconciliation.
//! Every other setting keeps its value until the next restart (a sink added or removed takes one).
//! If the configuration, a token file, a secret or the certificate pair is refused, nothing
//! changes: connections keep getting the certificate in force, sinks keep their secrets.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::access::Operator;
use super::ApiError;
use crate::config::{Config, ConfigError};
use crate::http::slack::{SlackActions, SlackSink};
use crate::outbound::{Sink, SinkError};
use crate::reactions::Follower;
use crate::reconcile::Reconciler;
use crate::secrets::{SecretError, Token, TokenSet};
use crate::tls::{ServerTls, TlsError, TlsFiles};

/// What a reload reads again and replaces: the token sets the webhook, the admin API and the node
/// API check (shared with them), and the certificate served.
pub struct Reloadable {
    /// The configuration file the gateway started with (none: the defaults and environment).
    pub config_file: Option<PathBuf>,
    pub webhook: Arc<TokenSet>,
    pub admin: Arc<TokenSet>,
    pub nodes: Arc<TokenSet>,
    /// The certificate HTTPS is served with (none: plain HTTP).
    pub tls: Option<Arc<ServerTls>>,
    /// The node API's own listener's (`[nodes] listen`): the same certificate, and the CA of the
    /// nodes' client certificates read again with it.
    pub node_tls: Option<Arc<ServerTls>>,
    /// What holds the secrets the gateway sends with.
    pub outbound: OutboundSecrets,
}

/// Everything that holds a secret the gateway sends with, shared with what sends: each outbound
/// sink, Slack's buttons, the Matrix rooms followed and the reconciler's YouTrack client.
pub struct OutboundSecrets {
    pub sinks: Vec<Arc<Sink>>,
    pub slack: Arc<SlackActions>,
    pub followers: Vec<Arc<Follower>>,
    pub reconciler: Option<Arc<Reconciler>>,
}

/// The secrets read again, not yet in force.
struct Prepared {
    sinks: Vec<Sink>,
    slack: Vec<SlackSink>,
    followers: Vec<Option<String>>,
    youtrack: Option<secrecy::SecretString>,
}

impl OutboundSecrets {
    /// Reads every outbound secret `config` names; nothing is in force yet.
    fn prepare(&self, config: &Config) -> Result<Prepared, ReloadError> {
        let sinks = crate::outbound::sinks(config)?;
        let slack = SlackSink::configured(config)?;
        let mut followers = Vec::new();
        for follower in &self.followers {
            let file = config.chat.iter().find(|c| c.name == follower.sink).and_then(|c| c.token_file.as_ref());
            followers.push(file.map(|f| Token::read(f).map(|t| t.expose().to_owned())).transpose()?);
        }
        let youtrack = match (&self.reconciler, &config.youtrack.token_file) {
            (Some(_), Some(file)) => Some(secrecy::SecretString::from(Token::read(file)?.expose().to_owned())),
            _ => None,
        };
        Ok(Prepared { sinks, slack, followers, youtrack })
    }

    /// Puts what [`OutboundSecrets::prepare`] read in force; the names of the sinks replaced.
    fn apply(&self, prepared: Prepared) -> Vec<String> {
        let Prepared { sinks, slack, followers, youtrack } = prepared;
        let mut replaced = Vec::new();
        for fresh in sinks {
            match self.sinks.iter().find(|s| s.name == fresh.name) {
                Some(sink) => {
                    replaced.push(fresh.name.clone());
                    sink.replace(fresh);
                }
                None => {
                    tracing::warn!(sink = %fresh.name, "a sink added to the configuration starts at the next restart")
                }
            }
        }
        for gone in self.sinks.iter().filter(|s| !replaced.contains(&s.name)) {
            tracing::warn!(sink = %gone.name, "a sink no longer configured keeps sending until the next restart");
        }
        self.slack.replace(slack);
        for (follower, token) in self.followers.iter().zip(followers) {
            if let Some(token) = token {
                *follower.token.write().unwrap_or_else(|p| p.into_inner()) = token;
            }
        }
        if let (Some(reconciler), Some(token)) = (&self.reconciler, youtrack) {
            reconciler.youtrack().replace_token(token);
        }
        replaced
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Token(#[from] SecretError),
    #[error("cannot reload the certificate")]
    Tls(#[from] TlsError),
    #[error("cannot reload the outbound secrets")]
    Sinks(#[from] SinkError),
}

/// The files in force after a reload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    #[schema(value_type = Vec<String>)]
    pub webhook: Vec<PathBuf>,
    #[schema(value_type = Vec<String>)]
    pub admin: Vec<PathBuf>,
    #[schema(value_type = Vec<String>)]
    pub nodes: Vec<PathBuf>,
    /// The certificate and key served (none: plain HTTP).
    pub tls: Option<TlsFiles>,
    /// The outbound sinks whose secrets were read again.
    pub sinks: Vec<String>,
}

/// Reads the configuration, the token files and the certificate pair again and puts them in force
/// together, or changes nothing.
pub fn reload_tokens(app: &Reloadable) -> Result<Reloaded, ReloadError> {
    let reloaded = Config::load(app.config_file.as_deref()).map_err(ReloadError::from).and_then(|config| {
        let tls = match (&app.tls, config.tls_files()) {
            (Some(serving), Some(files)) => Some(serving.prepare(&files)?),
            (Some(serving), None) => {
                tracing::warn!("the configuration no longer names a certificate; HTTPS stays on until a restart");
                Some(serving.prepare(&serving.files())?)
            }
            (None, Some(_)) => {
                tracing::warn!("the configuration names a certificate; serving HTTPS takes a restart");
                None
            }
            (None, None) => None,
        };
        let files = Reloaded {
            webhook: config.webhook_token_files(),
            admin: config.admin_token_files(),
            nodes: config.nodes_token_files(),
            tls: tls.as_ref().map(|(files, _)| files.clone()),
            sinks: Vec::new(),
        };
        let node_tls = match (&app.node_tls, &tls) {
            (Some(nodes), Some((files, _))) => Some(nodes.prepare(files)?),
            _ => None,
        };
        let tokens = (Token::read_all(&files.webhook)?, Token::read_all(&files.admin)?, Token::read_all(&files.nodes)?);
        let outbound = app.outbound.prepare(&config)?;
        Ok((files, tokens, (tls, node_tls), outbound))
    });
    match reloaded {
        Ok((mut files, (webhook, admin, nodes), (tls, node_tls), outbound)) => {
            files.sinks = app.outbound.apply(outbound);
            app.webhook.replace(&webhook);
            app.admin.replace(&admin);
            app.nodes.replace(&nodes);
            if let (Some(serving), Some(prepared)) = (&app.tls, tls) {
                serving.replace(prepared);
            }
            if let (Some(serving), Some(prepared)) = (&app.node_tls, node_tls) {
                serving.replace(prepared);
            }
            let shown =
                |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            let tls = files.tls.as_ref().map(|t| t.cert_file.display().to_string()).unwrap_or_default();
            tracing::info!(
                webhook = %shown(&files.webhook),
                admin = %shown(&files.admin),
                nodes = %shown(&files.nodes),
                tls = %tls,
                sinks = %files.sinks.join(", "),
                "tokens reloaded"
            );
            Ok(files)
        }
        Err(e) => {
            tracing::warn!(error = %crate::report::chain(&e), "reload refused; the tokens and certificate in force are unchanged");
            Err(e)
        }
    }
}

/// `POST /api/v1/tokens/reload`: the configuration, token files and certificate read again and put
/// in force together, or nothing changed.
#[utoipa::path(post, path = "/api/v1/tokens/reload", tag = "operations", security(("admin" = [])),
    responses(
        (status = 200, description = "The files in force now", body = Reloaded),
        (status = 401, description = "Missing or invalid admin token", body = super::openapi::ErrorBody),
        (status = 422, description = "Refused; the tokens in force are unchanged", body = super::openapi::ErrorBody),
        (status = 503, description = "The reload could not run", body = super::openapi::ErrorBody),
    ))]
pub async fn reload(_: Operator, State(app): State<Arc<Reloadable>>) -> Result<Json<Reloaded>, ApiError> {
    let reloading = Arc::clone(&app);
    let reloaded =
        tokio::task::spawn_blocking(move || reload_tokens(&reloading)).await.map_err(|e| ApiError::unavailable(&e))?;
    reloaded
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reload_refused", crate::report::chain(&e)))
}

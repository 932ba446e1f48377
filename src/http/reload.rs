//! Reloading the tokens the gateway receives without a restart, for rotations: `SIGHUP` or
//! `POST /api/v1/tokens/reload` (admin token).
//!
//! The sender never retries, so a restart during a rotation (two of them: one to accept both
//! tokens, one to drop the old) loses whatever it posts meanwhile. A reload reads the
//! configuration again and swaps in the tokens of `webhook.token_files`, of the admin API
//! (`admin.token_file`, `admin.previous_token_file`) and of the build pool (`nodes.token_file`,
//! `nodes.previous_token_file`), and, when the gateway serves HTTPS, its certificate and key
//! (`server.tls_cert_file`, `server.tls_key_file`), so a renewal needs no restart either. Every
//! other setting keeps its value until the next restart. If the configuration, a token file or the
//! certificate pair is refused, nothing changes: connections keep getting the certificate in force.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::access::Operator;
use super::ApiError;
use crate::config::{Config, ConfigError};
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
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Token(#[from] SecretError),
    #[error("cannot reload the certificate")]
    Tls(#[from] TlsError),
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
}

/// Reads the configuration, the token files and the certificate pair again and puts them in force
/// together, or changes nothing.
pub fn reload_tokens(app: &Reloadable) -> Result<Reloaded, ReloadError> {
    let reloaded = Config::load(app.config_file.as_deref()).map_err(ReloadError::from).and_then(|config| {
        let tls = match (&app.tls, config.tls_files()) {
            (Some(_), Some(files)) => Some(ServerTls::prepare(&files)?),
            (Some(serving), None) => {
                tracing::warn!("the configuration no longer names a certificate; HTTPS stays on until a restart");
                Some(ServerTls::prepare(&serving.files())?)
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
        };
        let tokens = (Token::read_all(&files.webhook)?, Token::read_all(&files.admin)?, Token::read_all(&files.nodes)?);
        Ok((files, tokens, tls))
    });
    match reloaded {
        Ok((files, (webhook, admin, nodes), tls)) => {
            app.webhook.replace(&webhook);
            app.admin.replace(&admin);
            app.nodes.replace(&nodes);
            if let (Some(serving), Some(prepared)) = (&app.tls, tls) {
                serving.replace(prepared);
            }
            tracing::info!(webhook = ?files.webhook, admin = ?files.admin, nodes = ?files.nodes, tls = ?files.tls, "tokens reloaded");
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

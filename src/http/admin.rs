//! Reloading the tokens the gateway receives without a restart, for rotations: `SIGHUP` or
//! `POST /api/v1/tokens/reload` (admin token).
//!
//! The sender never retries, so a restart during a rotation (two of them: one to accept both
//! tokens, one to drop the old) loses whatever it posts meanwhile. A reload reads the
//! configuration again and swaps in the tokens of `webhook.token_files`, of the admin API
//! (`admin.token_file`, `admin.previous_token_file`) and of the build pool (`nodes.token_file`,
//! `nodes.previous_token_file`); every other setting keeps its value until the next restart. If
//! the configuration or any token file is refused, no token changes.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;

use super::api::authorize;
use super::{ApiError, AppState};
use crate::config::{Config, ConfigError};
use crate::secrets::{SecretError, Token};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Token(#[from] SecretError),
}

/// The token files in force after a reload.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub webhook: Vec<PathBuf>,
    pub admin: Vec<PathBuf>,
    pub nodes: Vec<PathBuf>,
}

/// Reads the configuration and the token files again and makes those tokens the live ones.
pub fn reload_tokens(app: &AppState) -> Result<Reloaded, ReloadError> {
    let reloaded = Config::load(app.config_file.as_deref()).map_err(ReloadError::from).and_then(|config| {
        let files = Reloaded {
            webhook: config.webhook_token_files(),
            admin: config.admin_token_files(),
            nodes: config.nodes_token_files(),
        };
        let tokens = (Token::read_all(&files.webhook)?, Token::read_all(&files.admin)?, Token::read_all(&files.nodes)?);
        Ok((files, tokens))
    });
    match reloaded {
        Ok((files, (webhook, admin, nodes))) => {
            app.webhook_tokens.replace(&webhook);
            app.admin_tokens.replace(&admin);
            app.nodes_tokens.replace(&nodes);
            tracing::info!(webhook = ?files.webhook, admin = ?files.admin, nodes = ?files.nodes, "tokens reloaded");
            Ok(files)
        }
        Err(e) => {
            tracing::warn!(error = %e, "token reload refused; the tokens in force are unchanged");
            Err(e)
        }
    }
}

pub async fn reload(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Reloaded>, ApiError> {
    authorize(&app, &headers)?;
    let reloading = Arc::clone(&app);
    let reloaded =
        tokio::task::spawn_blocking(move || reload_tokens(&reloading)).await.map_err(|e| ApiError::unavailable(&e))?;
    reloaded.map(Json).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reload_refused", e.to_string()))
}

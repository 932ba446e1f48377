//! Reloading the webhook tokens without a restart, for rotations: `SIGHUP` or
//! `POST /api/v1/webhook-tokens/reload` (admin token).
//!
//! The sender never retries, so a restart during a rotation (two of them: one to accept both
//! tokens, one to drop the old) loses whatever it posts meanwhile. A reload reads the
//! configuration again and swaps in the tokens of its `webhook.token_files`; every other setting
//! keeps its value until the next restart. If the configuration or any token file is refused, the
//! tokens in force stay as they are.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

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

/// Reads the configuration and the webhook token files again and makes those tokens the live
/// ones. Returns the files now in force.
pub fn reload_webhook_tokens(app: &AppState) -> Result<Vec<PathBuf>, ReloadError> {
    let reloaded = Config::load(app.config_file.as_deref()).map_err(ReloadError::from).and_then(|config| {
        let files = config.webhook_token_files();
        let tokens = files.iter().map(|path| Token::read(path)).collect::<Result<Vec<_>, _>>()?;
        Ok((files, tokens))
    });
    match reloaded {
        Ok((files, tokens)) => {
            app.webhook_tokens.replace(&tokens);
            tracing::info!(tokens = tokens.len(), files = ?files, "webhook tokens reloaded");
            Ok(files)
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook token reload refused; the tokens in force are unchanged");
            Err(e)
        }
    }
}

pub async fn reload(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let reloading = Arc::clone(&app);
    let reloaded = tokio::task::spawn_blocking(move || reload_webhook_tokens(&reloading))
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    match reloaded {
        Ok(files) => Ok(Json(json!({"webhook_tokens": files.len(), "files": files}))),
        Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reload_refused", e.to_string())),
    }
}

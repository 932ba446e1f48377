//! YouTrack's REST API as the gateway reads it: the activity stream and an issue's current values
//! (reconciliation), and the token's own account (the self-test). Failure comments are posted by
//! the outbound `youtrack` sink. docs/youtrack-rest.md lists every request and field relied on.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use meshgate_domain::reconcile::{parse_issue, parse_page, ActivityPage, IssueNow, RestError};
use secrecy::{ExposeSecret, SecretString};

use crate::outbound::exchange::{percent_encode, retry_after};

/// The fields of an activity a sweep reads.
pub const ACTIVITY_FIELDS: &str = "activities(id,timestamp,author(login),target(idReadable,project(shortName)),field(name),added(name),removed(name)),afterCursor,hasAfter";
/// The fields of an issue a sweep reads.
pub const ISSUE_FIELDS: &str = "idReadable,summary,customFields(name,value(name))";
/// Activities per page.
pub const PAGE_SIZE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum YouTrackError {
    #[error("youtrack refused the token (401); check [youtrack] token_file")]
    Unauthorized,
    #[error("youtrack asked to slow down (429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("youtrack answered {status}: {excerpt}")]
    Status { status: u16, excerpt: String },
    #[error("youtrack could not be reached: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Shape(#[from] RestError),
}

impl YouTrackError {
    /// How long YouTrack asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            YouTrackError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// One page of the activity stream to read.
#[derive(Debug, Clone)]
pub struct ActivityQuery {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `project: MOB, APP`, or none for every project.
    pub issue_query: Option<String>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

/// A client for one YouTrack, with the bot's token.
#[derive(Clone)]
pub struct YouTrack {
    http: reqwest::Client,
    base: String,
    /// Shared by the clones, replaced when the token is reloaded.
    token: std::sync::Arc<std::sync::RwLock<SecretString>>,
}

impl YouTrack {
    pub fn new(http: reqwest::Client, base_url: &str, token: SecretString) -> Self {
        let token = std::sync::Arc::new(std::sync::RwLock::new(token));
        YouTrack { http, base: base_url.trim_end_matches('/').to_owned(), token }
    }

    /// Uses `token` from the next request on (a rotation).
    pub fn replace_token(&self, token: SecretString) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// The token in force.
    fn token(&self) -> String {
        self.token.read().unwrap_or_else(|p| p.into_inner()).expose_secret().to_owned()
    }

    /// `GET /api/activitiesPage`: custom field changes in a time window, oldest first.
    pub async fn activities_page(&self, query: &ActivityQuery) -> Result<ActivityPage, YouTrackError> {
        let mut params = vec![
            ("categories", "CustomFieldCategory".to_owned()),
            ("start", query.start.timestamp_millis().to_string()),
            ("end", query.end.timestamp_millis().to_string()),
            ("reverse", "false".to_owned()),
            ("$top", PAGE_SIZE.to_string()),
            ("fields", ACTIVITY_FIELDS.to_owned()),
        ];
        if let Some(issue_query) = &query.issue_query {
            params.push(("issueQuery", issue_query.clone()));
        }
        if let Some(cursor) = &query.cursor {
            params.push(("cursor", cursor.clone()));
        }
        Ok(parse_page(&self.get("/api/activitiesPage", &params).await?)?)
    }

    /// `GET /api/issues/{id}`: the issue's summary and custom field values now.
    pub async fn issue(&self, issue_id: &str) -> Result<IssueNow, YouTrackError> {
        let path = format!("/api/issues/{}", percent_encode(issue_id));
        Ok(parse_issue(&self.get(&path, &[("fields", ISSUE_FIELDS.to_owned())]).await?)?)
    }

    /// `GET /api/users/me`: the login the token belongs to.
    pub async fn me(&self) -> Result<String, YouTrackError> {
        let text = self.get("/api/users/me", &[("fields", "login".to_owned())]).await?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| RestError::NotJson(e.to_string()))?;
        Ok(value["login"].as_str().ok_or(RestError::Missing("login"))?.to_owned())
    }

    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<String, YouTrackError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(params)
            .bearer_auth(self.token())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| YouTrackError::Unreachable(crate::report::http_error(e)))?;
        let status = response.status().as_u16();
        let hint = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        let body = response.text().await.map_err(|e| YouTrackError::Unreachable(crate::report::http_error(e)))?;
        match status {
            200..=299 => Ok(body),
            401 => Err(YouTrackError::Unauthorized),
            429 => Err(YouTrackError::RateLimited { retry_after: hint }),
            _ => Err(YouTrackError::Status { status, excerpt: body.chars().take(200).collect() }),
        }
    }
}

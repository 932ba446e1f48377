//! The dashboard at `/ui/`: static pages embedded in the binary (no build step, no CDN) that read
//! the API with a session cookie.
//!
//! Sign-in posts the admin token once (a form body, never a URL); the answer is an HttpOnly,
//! SameSite=Strict cookie holding a session signed with a key every gateway of the team shares
//! ([`super::access`]: it lasts [`SESSION_LIFETIME`] and ends at once when the token it was opened
//! with is rotated out).
//! Reads accept the cookie; every change also needs the session's CSRF token in `X-CSRF-Token`,
//! which only a page of this origin can read (`GET /ui/session`).

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;

use super::access::{cookie, Access, COOKIE, SESSION_LIFETIME};
use super::ApiError;

const INDEX: &str = include_str!("../ui/index.html");
const LOGIN: &str = include_str!("../ui/login.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const CHARTS: &str = include_str!("../ui/charts.js");
const STYLE: &str = include_str!("../ui/style.css");

/// The dashboard's pages and sign-in, for any router state that holds the [`Access`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Access>: FromRef<S>,
{
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(sign_in))
        .route("/ui/logout", post(sign_out))
        .route("/ui/session", get(session))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/charts.js", get(|| async { asset("text/javascript; charset=utf-8", CHARTS) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

/// Headers every dashboard answer carries: nothing from elsewhere runs, nothing frames it.
fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let policy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                  form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    guarded(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn html(status: StatusCode, body: String) -> Response {
    guarded((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
}

async fn index(State(access): State<Arc<Access>>, headers: HeaderMap) -> Response {
    if access.session(&headers).is_none() {
        return guarded(Redirect::to("/ui/login").into_response());
    }
    html(StatusCode::OK, INDEX.to_owned())
}

async fn login_page() -> Response {
    html(StatusCode::OK, LOGIN.replace("{{error}}", ""))
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(
    State(access): State<Arc<Access>>,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    let token = form.map(|Form(f)| f.token).unwrap_or_default();
    let Some(token_digest) = access.admin_tokens.identify(token.trim().as_bytes()) else {
        tracing::warn!("dashboard sign-in refused: not an admin token");
        let refused = LOGIN.replace("{{error}}", "<p class=\"error\" role=\"alert\">That is not an admin token.</p>");
        return html(StatusCode::UNAUTHORIZED, refused);
    };
    let id = match access.sessions.open(token_digest, chrono::Utc::now().timestamp()) {
        Ok(id) => id,
        Err(e) => return ApiError::unavailable(&e).into_response(),
    };
    tracing::info!("dashboard session opened");
    let secure = if access.secure_cookies { "; Secure" } else { "" };
    let max_age = SESSION_LIFETIME.as_secs();
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut response = Redirect::to("/ui/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    guarded(response)
}

async fn sign_out(State(access): State<Arc<Access>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let signed = access.session(&headers).ok_or_else(ApiError::unauthorized)?;
    if !signed.allows_change(&headers) {
        return Err(ApiError::csrf());
    }
    if let Some(id) = cookie(&headers) {
        access.sessions.close(&id, chrono::Utc::now().timestamp());
    }
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(guarded(response))
}

/// The page's CSRF token, for the session the cookie names.
async fn session(State(access): State<Arc<Access>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let signed = access.session(&headers).ok_or_else(ApiError::unauthorized)?;
    Ok(guarded(Json(serde_json::json!({ "csrf": signed.csrf })).into_response()))
}

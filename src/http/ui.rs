//! The dashboard at `/ui/`: static pages embedded in the binary (no build step, no CDN) that read
//! the API with a session cookie.
//!
//! Sign-in posts the admin token once (a form body, never a URL); the answer is an HttpOnly,
//! SameSite=Strict cookie naming a session held in this gateway's memory. A session lasts
//! [`SESSION_LIFETIME`] and ends at once when the token it was opened with is rotated out. Reads
//! accept the cookie; every change also needs the session's CSRF token in `X-CSRF-Token`, which only
//! a page of this origin can read (`GET /ui/session`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::secrets::random_hex;

pub const COOKIE: &str = "meshgate_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest gives way.
const MAX_SESSIONS: usize = 1024;

const INDEX: &str = include_str!("../ui/index.html");
const LOGIN: &str = include_str!("../ui/login.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

/// The sessions signed in on this gateway, by the digest of their id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

struct Session {
    csrf: String,
    /// The admin token it was opened with.
    token: [u8; 32],
    opened: Instant,
}

/// A signed-in session, as a request presents it.
pub struct Signed {
    pub csrf: String,
}

impl Sessions {
    /// A new session for the token with digest `token`: its id (the cookie).
    fn open(&self, token: [u8; 32]) -> Result<String, getrandom::Error> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.opened.elapsed() < SESSION_LIFETIME);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open.iter().min_by_key(|(_, s)| s.opened).map(|(k, _)| *k) {
                open.remove(&oldest);
            }
        }
        open.insert(digest(&id), Session { csrf, token, opened: Instant::now() });
        Ok(id)
    }

    fn close(&self, id: &str) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest(id));
    }

    /// The session a request's cookie names, while it lasts and its token is live.
    pub fn find(&self, app: &AppState, headers: &HeaderMap) -> Option<Signed> {
        let id = cookie(headers)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(&id);
        let session = open.get(&key)?;
        if session.opened.elapsed() >= SESSION_LIFETIME || !app.admin_tokens.holds(&session.token) {
            open.remove(&key);
            return None;
        }
        Some(Signed { csrf: session.csrf.clone() })
    }
}

impl Signed {
    /// Whether a change carries this session's CSRF token.
    pub fn allows_change(&self, headers: &HeaderMap) -> bool {
        let sent = headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        bool::from(sent.ct_eq(self.csrf.as_bytes()))
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(sign_in))
        .route("/ui/logout", post(sign_out))
        .route("/ui/session", get(session))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
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

async fn index(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if app.sessions.find(&app, &headers).is_none() {
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
    State(app): State<Arc<AppState>>,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    let token = form.map(|Form(f)| f.token).unwrap_or_default();
    let Some(token_digest) = app.admin_tokens.identify(token.trim().as_bytes()) else {
        tracing::warn!("dashboard sign-in refused: not an admin token");
        let refused = LOGIN.replace("{{error}}", "<p class=\"error\" role=\"alert\">That is not an admin token.</p>");
        return html(StatusCode::UNAUTHORIZED, refused);
    };
    let id = match app.sessions.open(token_digest) {
        Ok(id) => id,
        Err(e) => return ApiError::unavailable(&e).into_response(),
    };
    tracing::info!("dashboard session opened");
    let secure = if app.tls.is_some() { "; Secure" } else { "" };
    let max_age = SESSION_LIFETIME.as_secs();
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut response = Redirect::to("/ui/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    guarded(response)
}

async fn sign_out(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let signed = app.sessions.find(&app, &headers).ok_or_else(ApiError::unauthorized)?;
    if !signed.allows_change(&headers) {
        return Err(ApiError::csrf());
    }
    if let Some(id) = cookie(&headers) {
        app.sessions.close(&id);
    }
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(guarded(response))
}

/// The page's CSRF token, for the session the cookie names.
async fn session(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let signed = app.sessions.find(&app, &headers).ok_or_else(ApiError::unauthorized)?;
    Ok(guarded(Json(serde_json::json!({ "csrf": signed.csrf })).into_response()))
}

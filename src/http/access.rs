//! Who may use the admin API and the dashboard: the admin token as a bearer, or a dashboard
//! session opened with it (for reads; a change also needs the session's CSRF token). The
//! extractors [`Reader`] and [`Operator`] check it before anything else of a request is read.
//!
//! A session is held in this gateway's memory, lasts [`SESSION_LIFETIME`] and ends at once when
//! the admin token it was opened with is rotated out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::secrets::{random_hex, TokenSet};

pub const COOKIE: &str = "meshgate_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest gives way.
const MAX_SESSIONS: usize = 1024;

/// The admin tokens in force and the dashboard sessions opened with them.
pub struct Access {
    pub admin_tokens: Arc<TokenSet>,
    pub sessions: Sessions,
    /// Cookies are marked `Secure` (the gateway serves HTTPS).
    pub secure_cookies: bool,
}

impl Access {
    pub fn new(admin_tokens: Arc<TokenSet>, secure_cookies: bool) -> Self {
        Access { admin_tokens, sessions: Sessions::default(), secure_cookies }
    }

    /// A read: the admin token, or a dashboard session.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match bearer(headers) {
            Some(token) if self.admin_tokens.verify(token.trim().as_bytes()) => Ok(()),
            None if self.session(headers).is_some() => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// A change: the admin token, or a dashboard session with its CSRF token.
    pub fn authorize_change(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match bearer(headers) {
            Some(token) if self.admin_tokens.verify(token.trim().as_bytes()) => Ok(()),
            None => match self.session(headers) {
                Some(signed) if signed.allows_change(headers) => Ok(()),
                Some(_) => Err(ApiError::csrf()),
                None => Err(ApiError::unauthorized()),
            },
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// The session a request's cookie names, while it lasts and its token is live.
    pub fn session(&self, headers: &HeaderMap) -> Option<Signed> {
        self.sessions.find(&self.admin_tokens, headers)
    }
}

/// A request the admin token (or a dashboard session) may read with.
pub type Reader = Admin<false>;

/// A request the admin token (or a dashboard session with its CSRF token) may change things with.
pub type Operator = Admin<true>;

/// An admin request, checked as a read or (`CHANGE`) as a change before anything else of it is
/// read.
pub struct Admin<const CHANGE: bool>;

impl<S: Send + Sync, const CHANGE: bool> FromRequestParts<S> for Admin<CHANGE>
where
    Arc<Access>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let access = Arc::<Access>::from_ref(state);
        let checked = if CHANGE { access.authorize_change(&parts.headers) } else { access.authorize(&parts.headers) };
        checked.map(|()| Admin)
    }
}

/// The bearer token of the one `Authorization` header (two are ambiguous: none is taken, and the
/// request is refused rather than read as a session's).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    match (all.next(), all.next()) {
        (Some(one), None) => one.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).or(Some("")),
        (Some(_), Some(_)) => Some(""),
        (None, _) => None,
    }
}

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
    pub fn open(&self, token: [u8; 32]) -> Result<String, getrandom::Error> {
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

    pub fn close(&self, id: &str) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest(id));
    }

    /// The session a request's cookie names, while it lasts and its token is one of `tokens`.
    fn find(&self, tokens: &TokenSet, headers: &HeaderMap) -> Option<Signed> {
        let id = cookie(headers)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(&id);
        let session = open.get(&key)?;
        if session.opened.elapsed() >= SESSION_LIFETIME || !tokens.holds(&session.token) {
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

/// The session id a request's cookie carries.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

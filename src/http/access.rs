//! Who may use the admin API and the dashboard: the admin token as a bearer, or a dashboard
//! session opened with it (for reads; a change also needs the session's CSRF token). The
//! extractors [`Reader`] and [`Operator`] check it before anything else of a request is read.
//!
//! A session is a signed cookie any gateway sharing the log-link key honours ([`Sessions`]); it
//! lasts [`SESSION_LIFETIME`] and ends at once when the admin token it was opened with is rotated
//! out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
/// Signed-out sessions remembered at most; the one that would end first gives way.
const MAX_SESSIONS: usize = 1024;

/// The admin tokens in force and the dashboard sessions opened with them.
pub struct Access {
    pub admin_tokens: Arc<TokenSet>,
    pub sessions: Sessions,
    /// Cookies are marked `Secure` (the gateway serves HTTPS).
    pub secure_cookies: bool,
}

impl Access {
    /// `session_key` signs the sessions (the gateways of a team share it).
    pub fn new(admin_tokens: Arc<TokenSet>, secure_cookies: bool, session_key: [u8; 32]) -> Self {
        Access { admin_tokens, sessions: Sessions::new(session_key), secure_cookies }
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

/// Dashboard sessions as signed cookies: `v1.{opened}.{token digest}.{nonce}.{mac}`, the MAC an
/// HMAC-SHA256 with a key derived from the log-link key, which every gateway of a team shares. Any
/// of them honours a session another opened, without asking it; a session ends after
/// [`SESSION_LIFETIME`] or as soon as the admin token it was opened with is no longer in force.
/// Signing out ends the browser's cookie, and this gateway refuses it from then on.
pub struct Sessions {
    key: ring::hmac::Key,
    /// Cookies signed out here, by their digest, with when they would have ended.
    ended: Mutex<HashMap<[u8; 32], i64>>,
}

/// A signed-in session, as a request presents it.
pub struct Signed {
    pub csrf: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    pub fn new(key: [u8; 32]) -> Sessions {
        Sessions { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), ended: Mutex::default() }
    }

    fn mac(&self, text: &str) -> String {
        hex(ring::hmac::sign(&self.key, text.as_bytes()).as_ref())
    }

    /// A new session for the token with digest `token`, opened at `now` (Unix seconds): the
    /// cookie's value.
    pub fn open(&self, token: [u8; 32], now: i64) -> Result<String, getrandom::Error> {
        let body = format!("v1.{now}.{}.{}", hex(&token), random_hex()?);
        let mac = self.mac(&body);
        Ok(format!("{body}.{mac}"))
    }

    /// Refuses the session `value` here from now on.
    pub fn close(&self, value: &str, now: i64) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.retain(|_, until| *until > now);
        if ended.len() >= MAX_SESSIONS {
            if let Some(first) = ended.iter().min_by_key(|(_, until)| **until).map(|(k, _)| *k) {
                ended.remove(&first);
            }
        }
        ended.insert(digest(value), now + SESSION_LIFETIME.as_secs() as i64);
    }

    /// The session `value` names at `now`, if its MAC holds, it lasts, its token is one of
    /// `tokens` and it was not signed out here.
    pub fn check(&self, tokens: &TokenSet, value: &str, now: i64) -> Option<Signed> {
        let (body, mac) = value.rsplit_once('.')?;
        if !bool::from(self.mac(body).as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(opened), Some(token), Some(_nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let opened: i64 = opened.parse().ok()?;
        let lifetime = SESSION_LIFETIME.as_secs() as i64;
        // Clocks of gateways differ a little: a session opened up to a minute ahead is taken.
        if now - opened >= lifetime || opened > now + 60 {
            return None;
        }
        let mut digest_of_token = [0u8; 32];
        if token.len() != 64 {
            return None;
        }
        for (i, byte) in digest_of_token.iter_mut().enumerate() {
            *byte = u8::from_str_radix(token.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        if !tokens.holds(&digest_of_token) {
            return None;
        }
        if self.ended.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&digest(value)) {
            return None;
        }
        Some(Signed { csrf: self.mac(&format!("csrf:{value}"))[..32].to_owned() })
    }

    fn find(&self, tokens: &TokenSet, headers: &HeaderMap) -> Option<Signed> {
        self.check(tokens, &cookie(headers)?, chrono::Utc::now().timestamp())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::{generate_token_file, Token};

    fn tokens(dir: &std::path::Path, names: &[&str]) -> (TokenSet, Vec<String>) {
        let mut read = Vec::new();
        for name in names {
            generate_token_file(&dir.join(name), 0o400).unwrap();
            read.push(Token::read(&dir.join(name)).unwrap());
        }
        let values = read.iter().map(|t| t.expose().to_owned()).collect();
        (TokenSet::new(&read), values)
    }

    #[test]
    fn a_session_holds_on_any_gateway_with_the_key_while_it_lasts_and_its_token_is_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (set, values) = tokens(dir.path(), &["a.token", "b.token"]);
        let (here, there, stranger) = (Sessions::new([7; 32]), Sessions::new([7; 32]), Sessions::new([8; 32]));
        let token = set.identify(values[0].as_bytes()).unwrap();
        let now = 1_800_000_000;
        let cookie = here.open(token, now).unwrap();
        let signed = there.check(&set, &cookie, now + 60).expect("another gateway with the key honours it");
        assert_eq!(signed.csrf, here.check(&set, &cookie, now).unwrap().csrf, "the same CSRF token everywhere");
        assert!(stranger.check(&set, &cookie, now).is_none(), "another key");
        let lifetime = SESSION_LIFETIME.as_secs() as i64;
        assert!(there.check(&set, &cookie, now + lifetime).is_none(), "ended");
        // Tampered: a later opening time, or another token's digest, under the old MAC.
        let tampered = cookie.replacen(&now.to_string(), &(now + 3600).to_string(), 1);
        assert!(there.check(&set, &tampered, now + lifetime).is_none());
        let other = hex(&set.identify(values[1].as_bytes()).unwrap());
        assert!(there.check(&set, &cookie.replacen(&hex(&token), &other, 1), now).is_none());
        assert!(there.check(&set, "v1.garbage", now).is_none() && there.check(&set, "", now).is_none());
        // The token rotated out ends it.
        let elsewhere = dir.path().join("rotated");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let (rotated, _) = tokens(&elsewhere, &["c.token"]);
        assert!(there.check(&rotated, &cookie, now).is_none());
        // Signed out here: refused here.
        here.close(&cookie, now);
        assert!(here.check(&set, &cookie, now).is_none());
    }
}

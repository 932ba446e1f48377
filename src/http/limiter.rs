//! Repeated bad tokens from one address are slowed down: past `[webhook] max_bad_tokens_per_minute`
//! failures in a minute, that address's requests without a correct token are answered 429 with
//! `Retry-After` until its minute is over. The token is always checked first, so a correct token
//! is never delayed, whatever else comes from its address (a proxy's, say). The webhook counts its
//! own; the admin and node API and the dashboard's sign-in count theirs ([`slow_bad_tokens`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Addresses followed at most; beyond, the one whose minute started first gives way.
const MAX_ADDRESSES: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(60);

pub struct BadTokens {
    per_minute: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl BadTokens {
    /// `per_minute` 0: never slowed down.
    pub fn new(per_minute: u32) -> Self {
        BadTokens { per_minute, seen: Mutex::new(HashMap::new()) }
    }

    /// Records a bad token from `from` at `now`; how long it must wait if it is over its limit.
    pub fn failed(&self, from: IpAddr, now: Instant) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains_key(&from) && seen.len() >= MAX_ADDRESSES {
            seen.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if seen.len() >= MAX_ADDRESSES {
                if let Some(oldest) = seen.iter().min_by_key(|(_, (start, _))| *start).map(|(ip, _)| *ip) {
                    seen.remove(&oldest);
                }
            }
        }
        let (start, count) = seen.entry(from).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        (*count > self.per_minute)
            .then(|| WINDOW.saturating_sub(now.duration_since(*start)).max(Duration::from_secs(1)))
    }
}

/// Middleware for the routes that take the admin or node token (or sign in with it): a refusal
/// (401) from an address over its limit becomes a 429 with `Retry-After`. A request with a correct
/// token is never refused, so never slowed down.
pub async fn slow_bad_tokens(State(bad_tokens): State<Arc<BadTokens>>, request: Request, next: Next) -> Response {
    let from = request.extensions().get::<super::client::Client>().and_then(|c| c.0);
    let response = next.run(request).await;
    if response.status() != StatusCode::UNAUTHORIZED {
        return response;
    }
    match from.and_then(|ip| bad_tokens.failed(ip, Instant::now())) {
        Some(wait) => {
            tracing::warn!(from = ?from, "too many bad tokens on the API from one address");
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_bad_tokens",
                format!("too many bad tokens from this address; try again in {} s", wait.as_secs()),
            );
            e.retry_after = Some(wait);
            e.into_response()
        }
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_slowed_down_past_its_limit_until_its_minute_ends() {
        let limiter = BadTokens::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.failed(a, t0), None);
        }
        assert_eq!(limiter.failed(a, t0 + Duration::from_secs(20)), Some(Duration::from_secs(40)));
        assert_eq!(limiter.failed(b, t0 + Duration::from_secs(20)), None, "another address is not affected");
        assert_eq!(limiter.failed(a, t0 + Duration::from_secs(60)), None, "a new minute");
        assert_eq!(BadTokens::new(0).failed(a, t0), None);
    }

    #[test]
    fn the_addresses_followed_are_bounded() {
        let limiter = BadTokens::new(1);
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(limiter.seen.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}

//! Who the client is: the peer, or, behind a proxy the configuration trusts
//! (`[server] trusted_proxies`), the address its `X-Forwarded-For` names. Worked out once per
//! request by [`client_address`] and put in the request as a [`Client`], which the webhook's
//! source allowlist (`[webhook] allowed_sources`), the bad-token limits and the logs read.
//!
//! The header is read from the right: each proxy appends the address it received from, so the
//! rightmost address that is not a trusted proxy is the first one no trusted hop can vouch for.
//! Addresses a client wrote into the header itself sit to its left and are never taken.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// The client's address, as [`client_address`] found it (none: the peer is unknown, in tests
/// that serve without a socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client(pub Option<IpAddr>);

/// The proxies trusted to name the client, and the sources the webhook takes.
#[derive(Debug, Default)]
pub struct Sources {
    pub trusted_proxies: Vec<IpNet>,
    pub allowed: Vec<IpNet>,
}

impl Sources {
    /// From the configuration's lists (validated at load: unreadable entries are left out).
    pub fn new(trusted_proxies: &[String], allowed: &[String]) -> Sources {
        let parse = |list: &[String]| list.iter().filter_map(|r| crate::config::parse_range(r)).collect();
        Sources { trusted_proxies: parse(trusted_proxies), allowed: parse(allowed) }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Who sent a request that came from `peer` with `headers`.
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusted(peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect();
        // The rightmost not trusted; if every hop is trusted, the leftmost (the first client seen).
        forwarded.iter().rev().find(|ip| !self.trusted(**ip)).or(forwarded.first()).copied().or(Some(peer))
    }

    /// Whether the webhook takes deliveries from `client` (any, when no source is configured).
    pub fn allowed(&self, client: Option<IpAddr>) -> bool {
        self.allowed.is_empty() || client.is_some_and(|ip| self.allowed.iter().any(|net| net.contains(&ip)))
    }
}

/// Middleware: puts the request's [`Client`] in its extensions.
pub async fn client_address(State(sources): State<Arc<Sources>>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = Client(sources.client(peer, request.headers()));
    request.extensions_mut().insert(client);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_vouches_for() {
        let sources = Sources::new(&["10.0.0.0/8".into(), "192.0.2.1".into()], &[]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let proxy = ip("10.1.2.3");
        // Not from a trusted proxy: the header is the client's own words.
        assert_eq!(sources.client(ip("198.51.100.9"), &headers(&["203.0.113.7"])), ip("198.51.100.9"));
        assert_eq!(sources.client(proxy, &headers(&["203.0.113.7"])), ip("203.0.113.7"));
        // A client that wrote its own header: its forgery sits left of what the proxy appended.
        assert_eq!(sources.client(proxy, &headers(&["203.0.113.7, 198.51.100.9"])), ip("198.51.100.9"));
        assert_eq!(sources.client(proxy, &headers(&["203.0.113.7", "198.51.100.9, 192.0.2.1"])), ip("198.51.100.9"));
        // Only proxies: the first one; no header: the proxy itself.
        assert_eq!(sources.client(proxy, &headers(&["10.9.9.9, 192.0.2.1"])), ip("10.9.9.9"));
        assert_eq!(sources.client(proxy, &headers(&[])), proxy);
        assert_eq!(sources.client(proxy, &headers(&["not an address"])), proxy);
    }

    #[test]
    fn the_webhook_takes_its_allowed_sources_only_and_any_without_a_list() {
        let sources = Sources::new(&[], &["203.0.113.0/24".into(), "2001:db8::1".into()]);
        assert!(sources.allowed(Some("203.0.113.200".parse().unwrap())));
        assert!(sources.allowed(Some("2001:db8::1".parse().unwrap())));
        assert!(!sources.allowed(Some("203.0.114.1".parse().unwrap())));
        assert!(!sources.allowed(None));
        assert!(Sources::default().allowed(None));
    }
}

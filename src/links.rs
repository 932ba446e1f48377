//! Links to a build's log and artifacts that open them without the admin token: the build id and
//! a key derived from the gateway's log-link secret, under the gateway's public URL.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Makes and checks per-build log links.
#[derive(Clone)]
pub struct LogLinks {
    /// How people reach the gateway, without a trailing `/`.
    public_url: String,
    secret: [u8; 32],
}

impl LogLinks {
    pub fn new(public_url: &str, secret: [u8; 32]) -> Self {
        LogLinks { public_url: public_url.trim_end_matches('/').to_owned(), secret }
    }

    /// A key for another purpose (`b"dashboard sessions"`), derived from the log-link secret, so
    /// the gateways that share that file share it too.
    pub fn derived_key(&self, purpose: &[u8]) -> [u8; 32] {
        Sha256::new().chain_update(self.secret).chain_update(b"derived:").chain_update(purpose).finalize().into()
    }

    /// The unguessable key that opens one build's log.
    pub fn key(&self, build_id: Uuid) -> String {
        let digest =
            Sha256::new().chain_update(self.secret).chain_update(b"log:").chain_update(build_id.as_bytes()).finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// The absolute, stable link to a build's log.
    pub fn url(&self, build_id: Uuid) -> String {
        format!("{}/api/v1/builds/{build_id}/log?key={}", self.public_url, self.key(build_id))
    }

    /// The absolute link to one of a build's artifacts (its name percent-encoded as one segment).
    pub fn artifact_url(&self, build_id: Uuid, attempt: u32, name: &str) -> String {
        let base = format!("{}/api/v1/builds/{build_id}/artifacts/", self.public_url);
        match reqwest::Url::parse(&base) {
            Ok(mut url) => {
                if let Ok(mut path) = url.path_segments_mut() {
                    path.pop_if_empty().push(name);
                }
                url.query_pairs_mut()
                    .append_pair("attempt", &attempt.to_string())
                    .append_pair("key", &self.key(build_id));
                url.into()
            }
            Err(_) => format!("{base}?attempt={attempt}&key={}", self.key(build_id)),
        }
    }

    /// Whether `key` opens the build's log and artifacts (constant time).
    pub fn opens(&self, build_id: Uuid, key: &str) -> bool {
        bool::from(key.as_bytes().ct_eq(self.key(build_id).as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_absolute_and_opens_its_own_build_only() {
        let links = LogLinks::new("https://ci.example.com/", [7; 32]);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let url = links.url(a);
        assert!(url.starts_with(&format!("https://ci.example.com/api/v1/builds/{a}/log?key=")), "{url}");
        let key = url.rsplit('=').next().unwrap();
        assert!(links.opens(a, key));
        assert!(!links.opens(b, key));
        assert!(!LogLinks::new("https://ci.example.com", [8; 32]).opens(a, key));
        let artifact = links.artifact_url(a, 2, "reports/junit 1.xml");
        let expected =
            format!("https://ci.example.com/api/v1/builds/{a}/artifacts/reports%2Fjunit%201.xml?attempt=2&key={key}");
        assert_eq!(artifact, expected);
    }
}

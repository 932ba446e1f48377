//! One HTTP try: the answer's status, its whole body (bounded), its `Retry-After`, or why there was
//! no answer, with every cause (`connection refused`, `invalid peer certificate: UnknownIssuer`).

use std::time::{Duration, SystemTime};

use meshgate_domain::notification::TryOutcome;
use serde_json::Value;

/// The most of an answer's body that is read; protocols parse all of it (a Slack answer's `ok` may
/// come after a long `warning`), the audit keeps an excerpt.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How much of an answer goes into the attempt event.
const EXCERPT_CHARS: usize = 200;

/// What came back from one try.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// None: no answer (connection failed, timed out, certificate refused).
    pub status: Option<u16>,
    /// The body, at most [`MAX_ANSWER_BYTES`] of it.
    pub body: String,
    pub retry_after: Option<Duration>,
    /// Why there was no answer, with its causes.
    pub error: Option<String>,
    /// The target's id for the message it made, where it gives one.
    pub message_ref: Option<String>,
    /// A local sink (the console) took the line: no HTTP, nothing to answer.
    pub written: bool,
    /// Why the target refused, in its own words, where the protocol reads them from its answer.
    pub said: Option<String>,
}

impl Answer {
    pub fn succeeded(&self) -> bool {
        self.written || self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    /// An answer made up here, for a try that could not be sent.
    pub fn unsent(why: impl Into<String>) -> Self {
        Answer { error: Some(why.into()), ..Answer::default() }
    }

    /// A local sink's line, written.
    pub fn written(what: impl Into<String>) -> Self {
        Answer { body: what.into(), written: true, ..Answer::default() }
    }

    /// What the lifecycle needs from it; the audit keeps the start of the body, or the error.
    pub fn into_outcome(self) -> TryOutcome {
        let detail = match self.error {
            Some(error) => error,
            None => self.body.chars().take(EXCERPT_CHARS).collect(),
        };
        TryOutcome {
            status: self.status,
            written: self.written,
            detail,
            retry_after: self.retry_after,
            message_ref: self.message_ref,
            said: self.said,
        }
    }
}

/// Sends one request and reads what came back.
pub async fn exchange(request: reqwest::RequestBuilder) -> Answer {
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Answer::unsent(crate::report::http_error(e)),
    };
    let status = response.status().as_u16();
    let hinted = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, SystemTime::now()));
    let mut bytes = Vec::new();
    let mut error = None;
    while bytes.len() < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER_BYTES - bytes.len())]),
            Ok(None) => break,
            Err(e) => {
                // The status came; the body broke off. The status decides, the error is kept.
                error = Some(crate::report::http_error(e));
                break;
            }
        }
    }
    let body = String::from_utf8_lossy(&bytes).into_owned();
    // Matrix (`retry_after_ms`) and Discord (`retry_after`, seconds) also say it in the body.
    let retry_after = hinted.or_else(|| {
        let v: Value = serde_json::from_str(&body).ok()?;
        v["retry_after_ms"]
            .as_u64()
            .map(Duration::from_millis)
            .or_else(|| v["retry_after"].as_f64().and_then(|s| Duration::try_from_secs_f64(s).ok()))
    });
    let error = error.map(|e| format!("status {status}, body cut short: {e}"));
    Answer { status: Some(status), body, retry_after, error, message_ref: None, written: false, said: None }
}

/// `Retry-After` as delta-seconds or an HTTP-date (all three formats).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for one path segment.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_every_http_date_format() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        for later in ["Sun, 06 Nov 1994 08:49:47 GMT", "Sunday, 06-Nov-94 08:49:47 GMT", "Sun Nov  6 08:49:47 1994"] {
            assert_eq!(retry_after(later, now), Some(Duration::from_secs(10)), "{later}");
        }
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn issue_ids_are_percent_encoded_in_paths() {
        assert_eq!(percent_encode("MOB-7"), "MOB-7");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn the_audit_keeps_the_error_or_the_start_of_the_body() {
        let answered = Answer { status: Some(500), body: "e".repeat(1000), ..Answer::default() }.into_outcome();
        assert_eq!(answered.detail.len(), EXCERPT_CHARS);
        let unsent = Answer::unsent("error sending request: connection refused").into_outcome();
        assert_eq!((unsent.status, unsent.detail.as_str()), (None, "error sending request: connection refused"));
    }
}

//! Errors as an operator reads them: the whole chain of causes on one line.
//!
//! `reqwest` says `error sending request` and keeps *why* (`connection refused`, `invalid peer
//! certificate: UnknownIssuer`, `dns error`) in its sources; an attempt event or a log line that
//! shows only the top loses the one thing the operator needs.

use std::error::Error;

/// `top: cause: deeper cause`, skipping a cause whose text its parent already shows (many error
/// types print their source as part of their own message).
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !last.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        last = said;
        source = cause.source();
    }
    text
}

/// What went wrong with an HTTP request, without its URL (an incoming-webhook URL is a secret),
/// with the whole chain, and saying `timed out` when it did.
pub fn http_error(error: reqwest::Error) -> String {
    let timed_out = error.is_timeout();
    let error = error.without_url();
    let text = chain(&error);
    if timed_out && !text.contains("timed out") {
        format!("{text}: timed out")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot deliver")]
    struct Top(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(chain(&Top(io())), "cannot deliver: connection refused");
        assert_eq!(chain(&Repeats(io())), "outer: connection refused");
    }
}

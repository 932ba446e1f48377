//! Retry arithmetic as pure functions: exponential backoff with full jitter, `Retry-After` hints,
//! and which answers are worth another try. Randomness is passed in as a fraction in `[0, 1)`.

use std::time::Duration;

/// When to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff ceiling.
    pub base: Duration,
    /// The backoff ceiling never grows past this.
    pub cap: Duration,
    /// No wait, hinted or not, is longer than this.
    pub max_wait: Duration,
    /// Tries in all, the first included.
    pub max_attempts: u32,
}

/// Whether an answer is worth another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    Permanent,
}

/// 408, 425, 429 and 5xx are retried; every other status is final. (Network errors, which have no
/// status, are retried by the caller.)
pub fn classify(status: u16) -> Verdict {
    match status {
        408 | 425 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Permanent,
    }
}

impl RetryPolicy {
    /// Full jitter: `random(0, min(cap, base · 2^attempt))`, with `attempt` counting from 0.
    pub fn backoff(&self, attempt: u32, random: f64) -> Duration {
        let ceiling = self.base.saturating_mul(2u32.saturating_pow(attempt.min(31))).min(self.cap);
        ceiling.mul_f64(random.clamp(0.0, 1.0))
    }

    /// The wait before try `attempt + 1`: `max(hint, backoff)`, clamped to `max_wait`; `None` once
    /// `max_attempts` tries have been made.
    pub fn next_wait(&self, attempt: u32, hint: Option<Duration>, random: f64) -> Option<Duration> {
        if attempt + 1 >= self.max_attempts {
            return None;
        }
        let wait = self.backoff(attempt, random).max(hint.unwrap_or_default());
        Some(wait.min(self.max_wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            max_attempts: 6,
        }
    }

    /// A seeded source of fractions (splitmix64), so the schedule is reproducible.
    fn fractions(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        }
    }

    #[test]
    fn the_backoff_stays_under_a_doubling_ceiling_that_stops_at_the_cap() {
        let mut random = fractions(7);
        for attempt in 0..20 {
            let ceiling = Duration::from_millis(500).saturating_mul(1 << attempt.min(20)).min(Duration::from_secs(30));
            let wait = policy().backoff(attempt, random());
            assert!(wait <= ceiling, "attempt {attempt}: {wait:?} > {ceiling:?}");
        }
        assert_eq!(policy().backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(policy().backoff(30, 1.0), Duration::from_secs(30));
        assert_eq!(policy().backoff(2, 0.0), Duration::ZERO);
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let schedule = |seed| {
            let mut random = fractions(seed);
            (0..5).map(|a| policy().next_wait(a, None, random())).collect::<Vec<_>>()
        };
        assert_eq!(schedule(42), schedule(42));
        assert_ne!(schedule(42), schedule(43));
    }

    #[test]
    fn a_retry_after_hint_is_waited_at_least_but_never_past_the_maximum() {
        assert_eq!(policy().next_wait(0, Some(Duration::from_secs(7)), 0.5), Some(Duration::from_secs(7)));
        assert_eq!(policy().next_wait(0, Some(Duration::from_secs(3600)), 0.5), Some(Duration::from_secs(60)));
        assert_eq!(policy().next_wait(4, Some(Duration::from_millis(1)), 1.0), Some(Duration::from_secs(8)));
    }

    #[test]
    fn tries_stop_at_the_maximum() {
        assert!(policy().next_wait(4, None, 0.5).is_some());
        assert_eq!(policy().next_wait(5, None, 0.5), None);
    }

    #[test]
    fn only_timeouts_too_early_rate_limits_and_server_errors_are_retried() {
        for status in [408, 425, 429, 500, 502, 503, 599] {
            assert_eq!(classify(status), Verdict::Retry, "{status}");
        }
        for status in [200, 301, 400, 401, 403, 404, 409, 410, 422] {
            assert_eq!(classify(status), Verdict::Permanent, "{status}");
        }
    }
}

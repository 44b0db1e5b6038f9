//! *When* to retry: exponential backoff with full jitter. *What* is retryable is each adapter's
//! [`Classified::class`](crate::ports::Classified) — the split Vector makes between `RetryLogic` and its policy.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: attempt `n` (1-based) waits a random time in `[base·2ⁿ⁻¹ / 2, base·2ⁿ⁻¹]`, capped at `max`.
/// Half-jitter keeps retries of many calls from synchronising while still growing the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (1 = first retry). A server hint (`after`) wins when it is longer.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.max);
        let half = ceiling / 2;
        let jittered = half + rand::rng().random_range(Duration::ZERO..=half);
        hint.map_or(jittered, |h| h.max(jittered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d1 = b.delay(1, None);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = b.delay(3, None);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d10 = b.delay(10, None);
            assert!(
                d10 >= Duration::from_millis(500) && d10 <= Duration::from_secs(1),
                "{d10:?}"
            );
        }
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(5))),
            Duration::from_secs(5),
            "server hint wins"
        );
    }
}

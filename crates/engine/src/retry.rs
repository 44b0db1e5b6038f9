//! *When* to retry: exponential backoff with full jitter, and [`retry`], the loop the call pipeline and the chat
//! export both run a portal operation in. *What* is retryable is each adapter's
//! [`Classified::class`](crate::ports::Classified) — the split Vector makes between `RetryLogic` and its policy.

use std::future::Future;
use std::time::Duration;

use b24sense_core::ErrorClass;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::ports::Classified;

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

/// Runs `op` until it succeeds or fails for good: an error that is not [`ErrorClass::Retryable`], the
/// `max_attempts`-th attempt (the first included), or `stop` cancelled (before a retry, or while waiting for one)
/// returns the last error. Each retry waits [`Backoff::delay`] (the error's hint wins when longer). `what` names the
/// operation in the log. The client under `op` has already retried its HTTP layer; this is the run's own patience.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    backoff: &Backoff,
    max_attempts: u32,
    stop: &CancellationToken,
    mut op: F,
) -> Result<T, E>
where
    E: Classified,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => match e.class() {
                ErrorClass::Retryable { after }
                    if attempt < max_attempts && !stop.is_cancelled() =>
                {
                    let delay = backoff.delay(attempt, after);
                    tracing::warn!(error = %e, ?delay, attempt, "{what} failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return Err(e),
                    }
                    attempt += 1;
                }
                _ => return Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("scripted ({0:?})")]
    struct Scripted(ErrorClass);

    impl Classified for Scripted {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    const QUICK: Backoff = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(2),
    };

    /// Runs `retry` over `script` (one answer per attempt; `None` = success) and returns (result, attempts made).
    async fn run(
        script: &[Option<ErrorClass>],
        stop: &CancellationToken,
    ) -> (Result<u32, ErrorClass>, u32) {
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let r = retry("scripted", &QUICK, 3, stop, || {
            let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as usize;
            let answer = script.get(n).copied().flatten();
            async move {
                match answer {
                    Some(class) => Err(Scripted(class)),
                    None => Ok(n as u32 + 1),
                }
            }
        })
        .await;
        (r.map_err(|e| e.0), attempts.into_inner())
    }

    #[tokio::test]
    async fn retries_retryable_errors_up_to_max_attempts_only() {
        let again = Some(ErrorClass::Retryable { after: None });
        let go = CancellationToken::new();
        assert_eq!(run(&[again, again, None], &go).await, (Ok(3), 3));
        let (r, n) = run(&[again, again, again, None], &go).await;
        assert_eq!((r.is_err(), n), (true, 3), "the third failure is the last");
        let (r, n) = run(&[Some(ErrorClass::Permanent), None], &go).await;
        assert_eq!((r, n), (Err(ErrorClass::Permanent), 1), "not retried");
        let (r, n) = run(&[Some(ErrorClass::InDoubt), None], &go).await;
        assert_eq!(
            (r, n),
            (Err(ErrorClass::InDoubt), 1),
            "in doubt is the caller's call"
        );
        let stopped = CancellationToken::new();
        stopped.cancel();
        assert_eq!(
            run(&[again, None], &stopped).await.1,
            1,
            "no retry once stopped"
        );
    }

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

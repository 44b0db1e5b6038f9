//! Client-side limits: the request-rate limiter (one per client) and the per-method operating-time tracker
//! (Bitrix24 limits both, per portal).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

/// A portal's request bucket: `capacity` requests of burst, drained at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePlan {
    pub capacity: u32,
    pub per_second: u32,
}

impl RatePlan {
    /// Every plan except Enterprise: X = 50, Y = 2/s.
    pub const STANDARD: RatePlan = RatePlan {
        capacity: 50,
        per_second: 2,
    };
    /// Enterprise (`LICENSE_FAMILY` `ent`): X = 250, Y = 5/s.
    pub const ENTERPRISE: RatePlan = RatePlan {
        capacity: 250,
        per_second: 5,
    };

    /// The burst we allow ourselves: 90 % of the portal's capacity, rounded up.
    pub fn local_capacity(self) -> u32 {
        (self.capacity.max(1) * 9).div_ceil(10)
    }
}

impl Default for RatePlan {
    fn default() -> Self {
        RatePlan::STANDARD
    }
}

/// governor's clock reading tokio's time, so that the limiter follows `tokio::time::pause()` in tests
/// and sleeps with `tokio::time::sleep` (governor's own `until_ready` uses a real-time timer).
#[derive(Debug, Clone)]
pub(crate) struct TokioClock {
    start: tokio::time::Instant,
}

/// Nanoseconds since the clock's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TokioInstant(u64);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;
    fn add(self, rhs: Nanos) -> TokioInstant {
        TokioInstant(self.0.saturating_add(rhs.as_u64()))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_sub(earlier.0))
    }
    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(self.0.checked_sub(duration.as_u64()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

type Gcra =
    governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// The client's request-rate limiter: one per [`Bitrix24Client`](crate::Bitrix24Client), shared by all clones
/// and tasks, taken once per HTTP request (a `batch` of 50 commands is one request, as on the server).
///
/// # Algorithm
/// Bitrix24 counts requests in a *leaky bucket* per portal: every request adds 1, the counter leaks
/// `per_second` per second, and a request that finds it above `capacity` fails with 503 `QUERY_LIMIT_EXCEEDED`.
/// We mirror that bucket locally with governor's GCRA (generic cell rate algorithm), which is the same leaky
/// bucket expressed as one timestamp: the *theoretical arrival time* (TAT) of the next request. Each request
/// moves the TAT forward by the emission interval `T = 1 / per_second`; a request is allowed now if
/// `TAT − now ≤ (burst − 1) × T`, i.e. if the bucket still has room. So after an idle period `burst` requests
/// go out at once, and then one every `T` (e.g. 45 at once, then one every 500 ms on the standard plan).
///
/// `burst = ceil(0.9 × capacity)`: the ~10 % headroom absorbs the jitter between our send time and the
/// portal's arrival time (and other clients of the same portal from this IP), which would otherwise overflow
/// the server's bucket while ours still has room. When the portal does answer `QUERY_LIMIT_EXCEEDED`,
/// [`drain`](Self::drain) empties the local bucket so the next requests run at the steady rate.
pub struct RequestLimiter {
    gcra: Gcra,
    clock: TokioClock,
    burst: u32,
}

impl RequestLimiter {
    pub fn new(plan: RatePlan) -> RequestLimiter {
        let burst = plan.local_capacity().max(1);
        let per_second = NonZeroU32::new(plan.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst_nz);
        let clock = TokioClock {
            start: tokio::time::Instant::now(),
        };
        RequestLimiter {
            gcra: governor::RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            burst,
        }
    }

    /// The local burst size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Waits until one request may be sent.
    pub async fn acquire(&self) {
        loop {
            match self.gcra.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
            }
        }
    }

    /// Takes one request's room if the bucket has it now; never waits.
    pub fn try_acquire(&self) -> bool {
        self.gcra.check().is_ok()
    }

    /// Empties the bucket (the portal said it is full). Bounded by the burst size.
    pub fn drain(&self) {
        for _ in 0..self.burst {
            if self.gcra.check().is_err() {
                break;
            }
        }
    }
}

/// What the portal last said about one method's operating time.
#[derive(Debug, Clone, Copy)]
struct MethodTime {
    operating: f64,
    reset_at: Option<f64>,
}

/// Per-method operating-time tracker fed from `time.operating` / `time.operating_reset_at` of every response.
pub(crate) struct OperatingTracker {
    limit_secs: f64,
    threshold: f64,
    methods: Mutex<HashMap<String, MethodTime>>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl OperatingTracker {
    pub fn new(limit_secs: f64, threshold: f64) -> Self {
        OperatingTracker {
            limit_secs,
            threshold,
            methods: Mutex::new(HashMap::new()),
        }
    }

    pub fn record(&self, method: &str, operating: Option<f64>, reset_at: Option<f64>) {
        if operating.is_none() && reset_at.is_none() {
            return;
        }
        let mut m = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(method.to_ascii_lowercase()).or_insert(MethodTime {
            operating: 0.0,
            reset_at: None,
        });
        if let Some(o) = operating {
            e.operating = o;
        }
        if reset_at.is_some() {
            e.reset_at = reset_at;
        }
    }

    /// How long to hold calls of `method` before sending: until `operating_reset_at` once the accumulated
    /// operating time is above `threshold × limit`.
    pub fn delay_before(&self, method: &str) -> Option<Duration> {
        let m = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.get(&method.to_ascii_lowercase())?;
        if e.operating <= self.threshold * self.limit_secs {
            return None;
        }
        Self::until(e.reset_at?)
    }

    /// After `OPERATION_TIME_LIMIT`: until the last seen reset time, or 60 s when it is unknown or past.
    pub fn delay_after_block(&self, method: &str) -> Duration {
        let m = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&method.to_ascii_lowercase())
            .and_then(|e| e.reset_at)
            .and_then(Self::until)
            .unwrap_or(Duration::from_secs(60))
    }

    fn until(reset_at: f64) -> Option<Duration> {
        // A small margin: the portal's clock and its whole-second `operating_reset_at` are not ours.
        let wait = reset_at + 0.25 - unix_now();
        // A bucket expires at most 10 minutes after it started; clamp against clock skew.
        (wait > 0.0).then(|| Duration::from_secs_f64(wait.min(600.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom() {
        assert_eq!(RatePlan::STANDARD.local_capacity(), 45);
        assert_eq!(RatePlan::ENTERPRISE.local_capacity(), 225);
        assert_eq!(
            RatePlan {
                capacity: 7,
                per_second: 1
            }
            .local_capacity(),
            7
        );
    }

    /// Burst of 45 at once, then one request every 500 ms (standard plan), on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = RequestLimiter::new(RatePlan::STANDARD);
        let t0 = tokio::time::Instant::now();
        for _ in 0..45 {
            l.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the burst goes out at once");
        let mut stamps = Vec::new();
        for _ in 0..10 {
            l.acquire().await;
            stamps.push(t0.elapsed());
        }
        for (i, s) in stamps.iter().enumerate() {
            let expected = Duration::from_millis(500 * (i as u64 + 1));
            assert!(
                *s >= expected && *s < expected + Duration::from_millis(5),
                "request {i} at {s:?}"
            );
        }
        // Idle for the whole refill time → a full burst again.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let t1 = tokio::time::Instant::now();
        for _ in 0..45 {
            l.acquire().await;
        }
        assert_eq!(t1.elapsed(), Duration::ZERO);
        l.acquire().await;
        assert!(t1.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_empties_the_bucket() {
        let l = RequestLimiter::new(RatePlan::ENTERPRISE);
        l.acquire().await;
        l.drain();
        let t0 = tokio::time::Instant::now();
        l.acquire().await;
        assert!(
            t0.elapsed() >= Duration::from_millis(200),
            "next request waits one interval (1/5 s)"
        );
    }

    #[test]
    fn operating_tracker() {
        let t = OperatingTracker::new(480.0, 0.75);
        assert_eq!(t.delay_before("x"), None);
        let reset = unix_now() + 30.0;
        t.record("Voximplant.Statistic.Get", Some(100.0), Some(reset));
        assert_eq!(
            t.delay_before("voximplant.statistic.get"),
            None,
            "under the threshold"
        );
        t.record("voximplant.statistic.get", Some(361.0), None);
        let d = t.delay_before("voximplant.statistic.get").unwrap();
        assert!(d > Duration::from_secs(28) && d <= Duration::from_millis(30_250));
        assert_eq!(t.delay_after_block("other"), Duration::from_secs(60));
        t.record("old", Some(470.0), Some(unix_now() - 1.0));
        assert_eq!(t.delay_before("old"), None, "reset time already passed");
    }
}

//! How many calls are downloaded and uploaded at once: fixed ([`Concurrency::Pinned`]) or found by the run itself
//! ([`Concurrency::Adaptive`], the default), through the [`AdaptiveLimit`] every worker takes a permit from.
//!
//! # The algorithm (AIMD on windows of completed uploads)
//!
//! Eight uploads in flight leave a fast link idle when each upload waits ~100 ms for SpeechSense's answer, and 32
//! can swamp a slow link or a server that is short of quota. So the limit moves between a floor ([`FLOOR`]) and a
//! ceiling (default [`DEFAULT_CEILING`]), starting at `initial` (default [`DEFAULT_INITIAL`]):
//!
//! - Every finished attempt at a call is a **sample**: when it started, how long it took (download and upload
//!   together: one worker holds one permit for both), how many bytes it sent, and whether it ended **done**
//!   (uploaded) or **overloaded** (a retryable or in-doubt error: `RESOURCE_EXHAUSTED`, `UNAVAILABLE`, a deadline,
//!   a broken download). Final outcomes (a skip, a refused recording) say nothing about load and are not samples.
//! - Done samples fill a **window** of as many samples as the current limit (at least [`FLOOR`]): about one round
//!   of the workers. When a window closes, its **throughput** (bytes per second since the previous window closed)
//!   and its **latency** (mean time per attempt) are judged against the previous window's throughput and the best
//!   latency of the last [`LATENCY_MEMORY`] windows:
//!   - latency above [`LATENCY_TOLERANCE`] × the best while throughput did not rise — the link or the server is
//!     queueing our requests, more in flight only makes each wait longer — **decreases** the limit;
//!   - throughput that fell (by more than [`NOISE`]) **holds** it: more in flight bought nothing;
//!   - anything else **increases** it: by half the limit during the first climb (slow start: 8 → 12 → 18 → 27 →
//!     32), by one after the first hold or decrease (additive). So the limit keeps probing upwards while
//!     throughput rises and latency holds, and stops where latency starts to grow.
//!
//!   Larger recordings make a window slower *and* its throughput higher, so they alone never decrease the limit.
//!   The window during which the limit changed mixes two limits (new places start empty), so it is not judged.
//! - An **overloaded** sample decreases the limit at once (multiplicative: × [`DECREASE`]) and ends slow start.
//!   At most one decrease per window: a sample whose attempt started before the last decrease was sent under the
//!   old limit, so it counts neither for nor against the new one (as TCP reacts to one loss per round trip).
//!
//! The limit lowers by keeping permits that come back, never by stopping a call in flight. Pinned, it never moves.
//! Memory does not grow with the limit beyond one chunk per stream: see the SpeechSense client's `AudioStream`.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

/// The limit never goes below this (nor below a lower `initial`).
pub const FLOOR: usize = 4;
/// Where an adaptive run starts: the fixed concurrency of earlier versions.
pub const DEFAULT_INITIAL: usize = 8;
/// The default ceiling: each stream in flight holds at most one 1 MiB chunk, so 32 MiB at most.
pub const DEFAULT_CEILING: usize = 32;
/// Multiplicative decrease on overload or rising latency.
pub const DECREASE: f64 = 0.7;
/// A window's latency above this multiple of the best recent one counts as rising.
pub const LATENCY_TOLERANCE: f64 = 1.5;
/// Throughput changes within this fraction count as flat (the sizes of the recordings in a window vary).
pub const NOISE: f64 = 0.05;
/// Windows over which the best latency is remembered, so that it follows a lasting change.
pub const LATENCY_MEMORY: usize = 8;

/// How many calls a run works on at once (downloads and uploads: one worker holds one call for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Start at `initial` and move between the floor and `ceiling` with throughput and latency.
    Adaptive { initial: usize, ceiling: usize },
    /// Exactly this many, always (`--concurrency N`).
    Pinned(usize),
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency::Adaptive {
            initial: DEFAULT_INITIAL,
            ceiling: DEFAULT_CEILING,
        }
    }
}

impl Concurrency {
    /// Adaptive up to `ceiling`, starting at the default or lower when the ceiling is lower.
    pub fn adaptive_up_to(ceiling: usize) -> Self {
        Concurrency::Adaptive {
            initial: DEFAULT_INITIAL.min(ceiling),
            ceiling,
        }
    }

    /// The most calls ever in flight: the number of workers.
    pub fn ceiling(&self) -> usize {
        match *self {
            Concurrency::Adaptive { ceiling, .. } => ceiling,
            Concurrency::Pinned(n) => n,
        }
    }

    pub fn initial(&self) -> usize {
        match *self {
            Concurrency::Adaptive { initial, .. } => initial,
            Concurrency::Pinned(n) => n,
        }
    }

    /// The setting's error, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Concurrency::Pinned(0) => Err("concurrency: must be at least 1".into()),
            Concurrency::Adaptive { initial, ceiling } if initial == 0 || ceiling < initial => {
                Err(format!(
                    "concurrency: the initial limit ({initial}) must be between 1 and the ceiling ({ceiling})"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// How the limit moved during a run (reported in the summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LimitTrace {
    pub initial: usize,
    pub lowest: usize,
    pub peak: usize,
    /// The limit when the run ended.
    #[serde(rename = "final")]
    pub last: usize,
    pub increases: u64,
    pub decreases: u64,
}

/// How one attempt at a call ended, as far as load is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Uploaded: `bytes` went to SpeechSense.
    Done { bytes: u64 },
    /// Refused or lost for a reason that may be load (retryable or in doubt).
    Overloaded,
}

/// One finished attempt.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub started: Instant,
    pub elapsed: Duration,
    pub load: Load,
}

impl Sample {
    fn finished(&self) -> Instant {
        self.started + self.elapsed
    }
}

/// The run's limit on calls in flight; workers hold an [`InFlight`] permit per call.
pub struct AdaptiveLimit {
    state: Mutex<State>,
    /// Woken when a permit comes back or the limit rises.
    freed: Notify,
}

struct State {
    adaptive: bool,
    limit: usize,
    floor: usize,
    ceiling: usize,
    in_flight: usize,
    /// Still in the first climb (grows by half the limit per window).
    slow_start: bool,
    window: Window,
    /// The current window began under another limit: it mixes both, so it is not judged.
    settling: bool,
    /// Throughput of the last judged window (bytes per second).
    baseline: Option<f64>,
    /// Mean latency of the last judged windows, newest last.
    latencies: VecDeque<Duration>,
    last_decrease: Option<Instant>,
    trace: LimitTrace,
}

#[derive(Default)]
struct Window {
    /// When the previous window closed (or the first sample started).
    opened: Option<Instant>,
    samples: usize,
    bytes: u64,
    latency: Duration,
}

impl AdaptiveLimit {
    pub fn new(concurrency: Concurrency) -> Self {
        let initial = concurrency.initial().max(1);
        let ceiling = concurrency.ceiling().max(initial);
        let state = State {
            adaptive: matches!(concurrency, Concurrency::Adaptive { .. }),
            limit: initial,
            floor: FLOOR.min(initial),
            ceiling,
            in_flight: 0,
            slow_start: true,
            window: Window::default(),
            settling: false,
            baseline: None,
            latencies: VecDeque::new(),
            last_decrease: None,
            trace: LimitTrace {
                initial,
                lowest: initial,
                peak: initial,
                last: initial,
                ..LimitTrace::default()
            },
        };
        AdaptiveLimit {
            state: Mutex::new(state),
            freed: Notify::new(),
        }
    }

    /// The limit now.
    pub fn current(&self) -> usize {
        self.lock().limit
    }

    pub fn trace(&self) -> LimitTrace {
        self.lock().trace
    }

    /// Waits until fewer than the limit are in flight and takes a place.
    pub async fn acquire(&self) -> InFlight<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a permit freed in between still wakes this waiter.
            freed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.in_flight < s.limit {
                    s.in_flight += 1;
                    return InFlight { limit: self };
                }
            }
            freed.await;
        }
    }

    /// Takes in one finished attempt and moves the limit if it says so.
    pub fn record(&self, sample: Sample) {
        let raised = {
            let mut s = self.lock();
            if !s.adaptive {
                return;
            }
            let before = s.limit;
            s.record(sample);
            s.limit > before
        };
        if raised {
            self.freed.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One call in flight; its place is given back when dropped.
pub struct InFlight<'a> {
    limit: &'a AdaptiveLimit,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.limit.lock().in_flight -= 1;
        self.limit.freed.notify_waiters();
    }
}

impl State {
    fn record(&mut self, sample: Sample) {
        // Sent under a limit that has been lowered since: says nothing about the new one.
        let stale = self.last_decrease.is_some_and(|at| sample.started < at);
        let bytes = match sample.load {
            Load::Overloaded if stale => return,
            Load::Overloaded => {
                self.decrease(sample.finished());
                return;
            }
            Load::Done { bytes } => bytes,
        };
        let opened = *self.window.opened.get_or_insert(sample.started);
        self.window.samples += 1;
        self.window.bytes += bytes;
        self.window.latency += sample.elapsed;
        if self.window.samples >= self.limit.max(FLOOR) {
            self.close_window(opened, sample.finished());
        }
    }

    fn close_window(&mut self, opened: Instant, now: Instant) {
        let w = std::mem::take(&mut self.window);
        self.window.opened = Some(now);
        if std::mem::take(&mut self.settling) {
            return;
        }
        let secs = now
            .saturating_duration_since(opened)
            .as_secs_f64()
            .max(1e-3);
        let throughput = w.bytes as f64 / secs;
        let latency = w.latency / w.samples.max(1) as u32;
        let rose = self
            .baseline
            .is_some_and(|b| throughput > b * (1.0 + NOISE));
        let fell = self
            .baseline
            .is_some_and(|b| throughput < b * (1.0 - NOISE));
        self.baseline = Some(throughput);
        let best = self.latencies.iter().copied().min().unwrap_or(latency);
        self.latencies.push_back(latency);
        if self.latencies.len() > LATENCY_MEMORY {
            self.latencies.pop_front();
        }
        let queueing = latency.as_secs_f64() > best.as_secs_f64() * LATENCY_TOLERANCE;
        if queueing && !rose {
            self.decrease(now);
        } else if fell {
            // More in flight bought nothing: the first climb is over, and this round the limit holds.
            self.slow_start = false;
        } else {
            let step = if self.slow_start {
                (self.limit / 2).max(1)
            } else {
                1
            };
            self.change((self.limit + step).min(self.ceiling));
        }
    }

    fn decrease(&mut self, now: Instant) {
        self.slow_start = false;
        self.last_decrease = Some(now);
        self.baseline = None;
        self.window = Window {
            opened: Some(now),
            ..Window::default()
        };
        self.change(((self.limit as f64 * DECREASE) as usize).max(self.floor));
    }

    /// Moves the limit; the window under way then mixes two limits and is not judged.
    fn change(&mut self, limit: usize) {
        self.settling |= limit != self.limit;
        self.set(limit);
    }

    fn set(&mut self, limit: usize) {
        let t = &mut self.trace;
        if limit > self.limit {
            t.increases += 1;
        } else if limit < self.limit {
            t.decreases += 1;
        }
        self.limit = limit;
        t.last = limit;
        t.peak = t.peak.max(limit);
        t.lowest = t.lowest.min(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` samples as `limit` parallel attempts would produce them: each takes `latency` and sends `bytes`,
    /// one round of `limit` finishing every `latency`. Returns the clock after the last one.
    fn feed(l: &AdaptiveLimit, clock: &mut Instant, n: usize, latency: Duration, bytes: u64) {
        for i in 0..n {
            let per_round = l.current();
            let started = *clock;
            if (i + 1) % per_round == 0 {
                *clock += latency;
            }
            l.record(Sample {
                started,
                elapsed: latency,
                load: Load::Done { bytes },
            });
        }
    }

    fn overloaded(l: &AdaptiveLimit, started: Instant) {
        l.record(Sample {
            started,
            elapsed: Duration::from_millis(10),
            load: Load::Overloaded,
        });
    }

    const MS100: Duration = Duration::from_millis(100);

    #[test]
    fn grows_while_throughput_rises_up_to_the_ceiling() {
        let l = AdaptiveLimit::new(Concurrency::default());
        let mut clock = Instant::now();
        // Fixed latency: every extra call in flight adds throughput, so the limit climbs...
        feed(&l, &mut clock, 40, MS100, 100_000);
        assert!(l.current() > DEFAULT_INITIAL, "limit {}", l.current());
        // ...and stops at the ceiling.
        feed(&l, &mut clock, 2000, MS100, 100_000);
        assert_eq!(l.current(), DEFAULT_CEILING);
        let t = l.trace();
        assert_eq!((t.initial, t.peak, t.last, t.decreases), (8, 32, 32, 0));
    }

    #[test]
    fn stops_climbing_where_latency_starts_to_queue() {
        let l = AdaptiveLimit::new(Concurrency::default());
        let mut clock = Instant::now();
        // A server that finishes 80 attempts/s however many are in flight: beyond 8, more in flight only makes
        // each wait longer. The limit may probe past 8, but latency stops it well below the ceiling.
        for _ in 0..400 {
            let n = l.current();
            let latency = Duration::from_secs_f64(n as f64 / 80.0);
            let started = clock;
            clock += latency / n as u32;
            l.record(Sample {
                started,
                elapsed: latency,
                load: Load::Done { bytes: 10_000 },
            });
        }
        let t = l.trace();
        assert!(t.decreases > 0, "{t:?}");
        assert!(t.peak <= 18, "climbed to {} on flat throughput", t.peak);
        assert!(t.last <= 13, "ended at {}", t.last);
    }

    #[test]
    fn drops_on_resource_exhausted_once_per_round_and_never_below_the_floor() {
        let l = AdaptiveLimit::new(Concurrency::Adaptive {
            initial: 20,
            ceiling: 32,
        });
        let t0 = Instant::now();
        overloaded(&l, t0);
        assert_eq!(l.current(), 14, "20 × 0.7");
        // The other attempts sent under the old limit fail too: no further decrease for them.
        for _ in 0..10 {
            overloaded(&l, t0);
        }
        assert_eq!(l.current(), 14);
        // Attempts started after the decrease count again, down to the floor and no lower.
        let mut at = t0 + Duration::from_secs(1);
        for _ in 0..20 {
            overloaded(&l, at);
            at += Duration::from_secs(1);
        }
        assert_eq!(l.current(), FLOOR);
        let t = l.trace();
        assert_eq!((t.lowest, t.peak, t.last), (FLOOR, 20, FLOOR));
    }

    #[test]
    fn backs_off_when_latency_rises() {
        let l = AdaptiveLimit::new(Concurrency::Adaptive {
            initial: 16,
            ceiling: 32,
        });
        let mut clock = Instant::now();
        feed(&l, &mut clock, 16, MS100, 100_000);
        let before = l.current();
        assert_eq!(l.trace().decreases, 0);
        // The server slows down threefold: same bytes per attempt, so throughput falls while latency rises.
        feed(&l, &mut clock, 100, MS100 * 3, 100_000);
        assert!(
            l.current() < before,
            "limit {} did not fall from {before}",
            l.current()
        );
        assert!(l.trace().decreases > 0);
    }

    #[test]
    fn larger_recordings_alone_do_not_lower_the_limit() {
        let l = AdaptiveLimit::new(Concurrency::default());
        let mut clock = Instant::now();
        feed(&l, &mut clock, 8, MS100, 100_000);
        // Ten times the bytes take three times as long: slower, but more throughput.
        feed(&l, &mut clock, 40, MS100 * 3, 1_000_000);
        assert_eq!(l.trace().decreases, 0);
    }

    #[test]
    fn pinned_never_changes() {
        let l = AdaptiveLimit::new(Concurrency::Pinned(3));
        let mut clock = Instant::now();
        feed(&l, &mut clock, 100, MS100, 100_000);
        overloaded(&l, clock);
        feed(&l, &mut clock, 10, MS100 * 5, 100_000);
        assert_eq!(l.current(), 3);
        let t = l.trace();
        assert_eq!(
            (t.lowest, t.peak, t.last, t.increases, t.decreases),
            (3, 3, 3, 0, 0)
        );
    }

    #[tokio::test]
    async fn permits_follow_the_limit() {
        let l = AdaptiveLimit::new(Concurrency::Pinned(2));
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(third.is_err(), "a third permit past a limit of two");
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(5), l.acquire()).await;
        assert!(third.is_ok(), "a freed permit is handed out again");
    }

    #[test]
    fn settings_are_validated() {
        assert!(Concurrency::Pinned(0).validate().is_err());
        assert!(Concurrency::Adaptive {
            initial: 9,
            ceiling: 8
        }
        .validate()
        .unwrap_err()
        .contains("ceiling"));
        assert!(Concurrency::default().validate().is_ok());
        assert_eq!(Concurrency::adaptive_up_to(4).initial(), 4);
    }
}

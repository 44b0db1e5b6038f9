//! A run's pace from its recent calls: the rate over the last [`WINDOW`] calls done, measured up to now (so a
//! stall lowers it at once), and the time left at that rate. Steadier than the rate since the start (a slow
//! first listing page or a burst of skipped calls no longer sways it for the whole run) and quicker to follow a
//! change of pace.

use std::collections::VecDeque;
use std::time::Instant;

/// How many recent calls the rate is measured over.
const WINDOW: usize = 100;
/// No estimate before this many calls are done: the first few say little about the pace.
const MIN_DONE: usize = 5;

/// When the last [`WINDOW`] calls were done.
pub(super) struct RecentRate {
    started: Instant,
    done: VecDeque<Instant>,
}

impl RecentRate {
    pub(super) fn new(started: Instant) -> RecentRate {
        RecentRate {
            started,
            done: VecDeque::with_capacity(WINDOW + 1),
        }
    }

    /// One more call done at `at`.
    pub(super) fn record(&mut self, at: Instant) {
        self.done.push_back(at);
        while self.done.len() > WINDOW + 1 {
            self.done.pop_front();
        }
    }

    /// Calls per second over the recent calls, measured up to `now`; `None` before [`MIN_DONE`] calls.
    pub(super) fn rate(&self, now: Instant) -> Option<f64> {
        if self.done.len() < MIN_DONE {
            return None;
        }
        // The calls done after `from`: the whole window once it is full, else every call since the start.
        let (n, from) = if self.done.len() > WINDOW {
            (WINDOW, self.done[0])
        } else {
            (self.done.len(), self.started)
        };
        let span = now.saturating_duration_since(from).as_secs_f64();
        (span > 0.0).then(|| n as f64 / span)
    }
}

/// Seconds left for `left` calls at `rate` calls per second.
pub(super) fn eta_secs(left: u64, rate: Option<f64>) -> Option<u64> {
    let rate = rate.filter(|r| *r > 0.0)?;
    Some((left as f64 / rate).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_follows_the_recent_pace_and_drops_in_a_stall() {
        let t0 = Instant::now();
        let mut r = RecentRate::new(t0);
        assert_eq!(r.rate(t0 + Duration::from_secs(1)), None);
        // 200 calls at 10/s, then 100 at 1/s: the rate is the recent one, not the average.
        let mut t = t0;
        for _ in 0..200 {
            t += Duration::from_millis(100);
            r.record(t);
        }
        let fast = r.rate(t).unwrap();
        assert!((fast - 10.0).abs() < 0.01, "{fast}");
        for _ in 0..100 {
            t += Duration::from_secs(1);
            r.record(t);
        }
        let slow = r.rate(t).unwrap();
        assert!((slow - 1.0).abs() < 0.01, "{slow}");
        // Nothing for 100 s: half the rate.
        let stalled = r.rate(t + Duration::from_secs(100)).unwrap();
        assert!((stalled - 0.5).abs() < 0.01, "{stalled}");
        assert_eq!(eta_secs(30, Some(0.5)), Some(60));
        assert_eq!(eta_secs(30, None), None);
    }
}

//! The portal's two limiters — the request-rate leaky bucket and the per-method operating-time window — as pure
//! arithmetic over explicit clock readings.

use std::collections::{HashMap, VecDeque};

/// Request-rate leaky bucket: each request adds 1, the level leaks `leak` per second; a request that would push
/// the level above `capacity` is rejected (and adds nothing).
#[derive(Debug, Clone)]
pub struct LeakyBucket {
    capacity: f64,
    leak: f64,
    level: f64,
    last: f64,
}

impl LeakyBucket {
    pub fn new(capacity: u32, leak_per_sec: u32) -> LeakyBucket {
        LeakyBucket {
            capacity: f64::from(capacity),
            leak: f64::from(leak_per_sec),
            level: 0.0,
            last: f64::MIN,
        }
    }

    /// `now` in seconds on any monotonic scale. Returns whether the request is admitted.
    pub fn admit(&mut self, now: f64) -> bool {
        if self.last != f64::MIN {
            let dt = (now - self.last).max(0.0);
            self.level = (self.level - dt * self.leak).max(0.0);
        }
        self.last = now;
        if self.level + 1.0 > self.capacity + 1e-9 {
            return false;
        }
        self.level += 1.0;
        true
    }
}

/// Per (credential, method) operating-time accumulator: ten 1-minute buckets, a 10-minute sliding window.
#[derive(Debug, Default)]
pub struct Operating {
    /// key → (minute index, seconds) oldest first.
    buckets: HashMap<(String, String), VecDeque<(i64, f64)>>,
}

/// What a response reports: `time.operating` and `time.operating_reset_at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatingState {
    pub operating: f64,
    pub reset_at: i64,
}

impl Operating {
    /// The key's buckets at `now_unix` (the minutes that left the window dropped) and the current minute.
    fn window(
        &mut self,
        cred: &str,
        method: &str,
        now_unix: f64,
    ) -> (&mut VecDeque<(i64, f64)>, i64) {
        let minute = (now_unix / 60.0).floor() as i64;
        let q = self
            .buckets
            .entry((cred.to_string(), method.to_string()))
            .or_default();
        while q.front().is_some_and(|(m, _)| *m <= minute - 10) {
            q.pop_front();
        }
        (q, minute)
    }

    fn state(q: &VecDeque<(i64, f64)>, now_unix: f64) -> OperatingState {
        let operating = q.iter().map(|(_, s)| s).sum();
        let reset_at = q
            .front()
            .map_or(now_unix as i64 + 600, |(m, _)| (m + 10) * 60);
        OperatingState {
            operating,
            reset_at,
        }
    }

    /// The check before a call: `Err(state)` when the method is blocked (sum already over the limit).
    pub fn check(
        &mut self,
        cred: &str,
        method: &str,
        limit: f64,
        now_unix: f64,
    ) -> Result<(), OperatingState> {
        let (q, _) = self.window(cred, method, now_unix);
        let st = Self::state(q, now_unix);
        if st.operating > limit {
            Err(st)
        } else {
            Ok(())
        }
    }

    /// Charges a finished call; the call that pushes the sum over the limit still completes.
    pub fn charge(&mut self, cred: &str, method: &str, cost: f64, now_unix: f64) -> OperatingState {
        let (q, minute) = self.window(cred, method, now_unix);
        match q.back_mut() {
            Some((m, s)) if *m == minute => *s += cost,
            _ => q.push_back((minute, cost)),
        }
        Self::state(q, now_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_burst_then_leak() {
        let mut b = LeakyBucket::new(5, 2);
        assert!((0..5).all(|_| b.admit(100.0)), "a burst of X passes");
        assert!(!b.admit(100.0), "X+1 is rejected");
        assert!(!b.admit(100.4));
        assert!(b.admit(100.5), "after 0.5 s one slot leaked out at 2/s");
        assert!(!b.admit(100.5));
        assert!((0..5).all(|_| b.admit(103.0)));
    }

    #[test]
    fn operating_blocks_after_the_limit_and_resets() {
        let mut o = Operating::default();
        let t0 = 60.0 * 1000.0;
        for i in 0..3 {
            assert!(o.check("w", "m", 10.0, t0 + f64::from(i)).is_ok());
            o.charge("w", "m", 4.0, t0 + f64::from(i));
        }
        let st = o.check("w", "m", 10.0, t0 + 5.0).unwrap_err();
        assert_eq!(st.operating, 12.0);
        assert_eq!(st.reset_at, (1000 + 10) * 60);
        assert!(
            o.check("w", "other", 10.0, t0 + 5.0).is_ok(),
            "other methods keep working"
        );
        assert!(
            o.check("w", "m", 10.0, t0 + 600.0).is_ok(),
            "the window slid past"
        );
    }
}

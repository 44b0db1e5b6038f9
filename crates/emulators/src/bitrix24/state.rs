//! The running portal's state ([`PortalState`]): the configuration, the generated data, the limiters, the
//! counters, the application flow and the live view, shared by every route; and one method call with the
//! operating-time limiter around it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

use super::app::{self, AppState};
use super::clock::{now_unix, unix_to_portal};
use super::config::PortalConfig;
use super::data::PortalData;
use super::error::ApiError;
use super::faults::{kind, FaultState};
use super::limits::{LeakyBucket, Operating, OperatingState};
use super::live::Live;
use super::methods::{self, Ctx, MethodOk};
use super::params::P;
use super::stats::PortalStats;

pub(crate) struct PortalState {
    pub(crate) config: PortalConfig,
    pub(crate) data: PortalData,
    /// `http://127.0.0.1:PORT/`
    pub(crate) base: String,
    /// `http://127.0.0.1:OTHER_PORT/`: where `CALL_RECORD_URL`s point. A separate listener plays the external
    /// recording storage (Voximplant or a PBX), whose downloads never count against the portal's bucket.
    pub(crate) records_base: String,
    pub(crate) faults: FaultState,
    bucket: Mutex<LeakyBucket>,
    operating: Mutex<Operating>,
    stats: Mutex<PortalStats>,
    pub(crate) bytes_sent: Arc<AtomicU64>,
    pub(crate) sha_cache: Mutex<HashMap<u64, String>>,
    /// The application flow (install, OAuth, events): [`app`].
    pub(crate) app: AppState,
    /// Calls still to come and recordings still to be attached (tests of continuous sync).
    pub(crate) live: Live,
    epoch: tokio::time::Instant,
}

impl PortalState {
    pub(crate) fn new(
        config: PortalConfig,
        data: PortalData,
        base: String,
        records_base: String,
    ) -> PortalState {
        PortalState {
            faults: FaultState::new(config.faults.clone()),
            bucket: Mutex::new(LeakyBucket::new(config.rate.0, config.rate.1)),
            operating: Mutex::new(Operating::default()),
            stats: Mutex::new(PortalStats::default()),
            bytes_sent: Arc::new(AtomicU64::new(0)),
            sha_cache: Mutex::new(HashMap::new()),
            app: AppState::new(config.seed),
            live: Live::default(),
            epoch: tokio::time::Instant::now(),
            config,
            data,
            base,
            records_base,
        }
    }

    /// The counters, for updating (a poisoned lock still holds good counters).
    pub(crate) fn stats(&self) -> MutexGuard<'_, PortalStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters as they stand, with the bytes sent so far.
    pub(crate) fn stats_snapshot(&self) -> PortalStats {
        let mut s = self.stats().clone();
        s.bytes_sent = self.bytes_sent.load(Ordering::Relaxed);
        s
    }

    pub(crate) fn reset_stats(&self) {
        *self.stats() = PortalStats::default();
        self.bytes_sent.store(0, Ordering::Relaxed);
    }

    /// One request through the leaky bucket: false (and counted) when it is full.
    pub(crate) fn admit(&self) -> bool {
        let now = self.epoch.elapsed().as_secs_f64();
        let ok = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(now);
        if !ok {
            self.stats().rate_limited += 1;
        }
        ok
    }

    fn operating_check(&self, cred: &str, method: &str) -> Result<(), ApiError> {
        let Some(op) = &self.config.operating else {
            return Ok(());
        };
        let r = self
            .operating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(cred, method, op.limit_secs, now_unix());
        r.map_err(|_| {
            self.stats().operating_limited += 1;
            ApiError::new(
                429,
                "OPERATION_TIME_LIMIT",
                "Method is blocked due to operation time limit.",
            )
        })
    }

    fn operating_charge(&self, cred: &str, method: &str, cost: f64) -> Option<OperatingState> {
        self.config.operating.as_ref()?;
        Some(
            self.operating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .charge(cred, method, cost, now_unix()),
        )
    }

    fn time_obj(&self, start: f64, processing: f64, op: Option<OperatingState>) -> Value {
        let finish = now_unix().max(start);
        let tz = self.config.utc_offset;
        let mut t = json!({
            "start": start, "finish": finish, "duration": finish - start, "processing": processing,
            "date_start": unix_to_portal(tz, start), "date_finish": unix_to_portal(tz, finish),
        });
        if let Some(op) = op {
            t["operating_reset_at"] = json!(op.reset_at);
            t["operating"] = json!(op.operating);
        }
        t
    }

    /// One method call with the operating limiter around it (a batch costs nothing itself: its commands do).
    pub(crate) fn call_method(
        &self,
        ctx: &Ctx,
        method: &str,
        p: &P,
    ) -> Result<(MethodOk, Value), ApiError> {
        let started = now_unix();
        let t0 = std::time::Instant::now();
        self.operating_check(&ctx.cred, method)?;
        let res = if method == "batch" {
            self.batch(ctx, p)
        } else {
            match app::dispatch(self, ctx, method, p) {
                Some(r) => r?,
                None => methods::dispatch(self, ctx, method, p)?,
            }
        };
        let cost = if method == "batch" {
            0.0
        } else {
            self.config
                .operating
                .as_ref()
                .map_or(0.0, |o| o.cost_per_call_secs)
        };
        let op = self.operating_charge(&ctx.cred, method, cost);
        let time = self.time_obj(started, t0.elapsed().as_secs_f64(), op);
        Ok((res, time))
    }

    /// The call at `idx` has not ended yet or its recording is not attached yet ([`super::live`]).
    fn not_yet_recorded(&self, idx: usize) -> bool {
        self.data
            .calls
            .get(idx)
            .is_some_and(|c| self.live.recording_missing(c.id))
    }

    /// The recording of the call at `idx` was made to vanish by a fault (counted when asked).
    fn vanished(&self, idx: usize) -> bool {
        let gone = self
            .data
            .calls
            .get(idx)
            .is_some_and(|c| self.faults.vanished(c.id));
        if gone {
            self.stats().count_fault(kind::VANISHED);
        }
        gone
    }

    /// The recording of the call at `idx` can be served now: neither vanished nor still to be attached.
    pub(crate) fn recording_available(&self, idx: usize) -> bool {
        !self.vanished(idx) && !self.not_yet_recorded(idx)
    }
}

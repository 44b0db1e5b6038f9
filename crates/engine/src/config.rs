//! What one export run is asked to do.

use std::time::Duration;

use b24sense_core::{CallFilter, MonoPolicy};

use crate::concurrency::Concurrency;
use crate::holder::Holder;
use crate::retry::Backoff;

/// Settings of one export run (CLI flags or a portal's saved settings).
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Ledger key of the portal (its host for a webhook, `member_id` for an installed application).
    pub portal: String,
    pub filter: CallFilter,
    pub connection_id: String,
    pub mono_policy: MonoPolicy,
    /// Recognition language sent as the `language` key.
    pub language: String,
    /// Calls downloaded and uploaded at once: adaptive (the default) or pinned.
    pub concurrency: Concurrency,
    /// List and count only; upload nothing and write nothing.
    pub dry_run: bool,
    /// Continuous sync: first take up what the ledger left unfinished (calls of a stopped or crashed run, calls
    /// whose recording is due for another check — read again from the portal by ID), then list only the calls
    /// after the high-water mark. `false`: list every qualifying call from the start and try again whatever is not
    /// uploaded (a one-shot export, "Start export").
    pub incremental: bool,
    /// Wait for recordings the portal has not attached yet: such a call waits in the ledger (`pending`,
    /// `awaiting_recording`) and is checked again with backoff until the horizon. `None`: a call without a
    /// recording is skipped as `no_recording` at once (a later run looks again) — what a one-shot export does.
    pub await_recordings: Option<LateRecordings>,
    /// Attempts per call for retryable failures (download or upload), including the first.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// SpeechSense refuses audio longer than this.
    pub max_recording: Duration,
    /// How long a worker's claim on a call lasts before another worker may take it over. Renewed every third of
    /// it while the worker is busy with the call, so it only bounds how long a dead worker blocks the call.
    pub lease: Duration,
    /// How long a replica's hold on the portal lasts without renewal (renewed every sixth of it). Only the holder
    /// talks to the portal; another replica takes over only after this. Five sixths of it should cover the time the
    /// portal's request bucket takes to drain (25 s on the standard plan, 50 s on Enterprise), so a takeover after
    /// a crash never starts against a bucket the dead holder had filled. Exception: a holder known dead (a crashed
    /// run on this machine, see `holder`) is taken over at once — the user restarting it should not wait a minute,
    /// and a refusal from a bucket it left full is backed off from like any other.
    pub portal_lease: Duration,
    /// How often a replica waiting for the portal, or a worker waiting for a call another worker held, looks again.
    pub poll: Duration,
    /// After a shutdown request, how long uploads in flight may take to finish before they are abandoned (their
    /// calls stay `uploading`, in doubt, and are resolved by the next run).
    pub shutdown_grace: Duration,
    /// How long a talk may take to become searchable: when an upload in doubt is searched for and not found, the
    /// search is repeated over this time before the call is uploaded again (also for a call a crashed run left in
    /// doubt: its portal may have been taken over at once, see [`ExportConfig::holder`]).
    pub search_settle: Duration,
    /// How long the run waits for a ledger that refuses writes (full disk, read-only file, a lock held elsewhere,
    /// server unreachable) before it ends, its held outcomes in the recovery journal (`docs/ledger-faults.md`).
    pub ledger_give_up: Duration,
    /// Identifies this run in leases (pid and a random part).
    pub worker_id: String,
    /// This process, recorded with the portal lease so that a run that finds it dead on the same machine takes the
    /// portal over at once; `None`: not recorded (no `/proc`), and the lease is waited for after a crash.
    pub holder: Option<Holder>,
}

/// How long and how often a call without a recording is checked again (`bitrix24-api.md` §4.3: built-in telephony
/// attaches the file within a minute or so, an external PBX seconds to hours later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateRecordings {
    /// Give up this long after the ledger first saw the call (not after the call's own date: PBXs backdate).
    pub horizon: Duration,
    /// The first check comes this long after the call was first seen; each later one after as long as the call
    /// has waited so far (2, 4, 8, 16… minutes with the default), but at most `max_interval` apart.
    pub first_check: Duration,
    pub max_interval: Duration,
}

impl Default for LateRecordings {
    /// 48 hours, first check after 2 minutes, then at most hourly: about 50 checks in all, each one command of a
    /// batch that reads 2,500 calls per request.
    fn default() -> Self {
        LateRecordings {
            horizon: Duration::from_secs(48 * 3600),
            first_check: Duration::from_secs(120),
            max_interval: Duration::from_secs(3600),
        }
    }
}

impl LateRecordings {
    /// The wait before the next check of a call that has waited `waited` so far; `None` once the horizon is
    /// reached (the call is then `no_recording`). The last check falls on the horizon.
    pub fn next_check(&self, waited: Duration) -> Option<Duration> {
        if waited >= self.horizon {
            return None;
        }
        let delay = waited.clamp(self.first_check, self.max_interval.max(self.first_check));
        Some(delay.min(self.horizon - waited))
    }
}

impl ExportConfig {
    pub fn new(portal: impl Into<String>, connection_id: impl Into<String>) -> Self {
        ExportConfig {
            portal: portal.into(),
            filter: CallFilter::default(),
            connection_id: connection_id.into(),
            mono_policy: MonoPolicy::Upload,
            language: b24sense_core::mapping::DEFAULT_LANGUAGE.to_string(),
            concurrency: Concurrency::default(),
            dry_run: false,
            incremental: false,
            await_recordings: None,
            max_attempts: 5,
            backoff: Backoff::default(),
            max_recording: Duration::from_secs(4 * 3600),
            lease: Duration::from_secs(60),
            portal_lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            search_settle: Duration::from_secs(2),
            ledger_give_up: Duration::from_secs(600),
            worker_id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            holder: Holder::this_process(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_recordings_are_checked_with_doubling_spacing_until_the_horizon() {
        let late = LateRecordings::default();
        let min = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(late.next_check(Duration::ZERO), Some(min(2)));
        assert_eq!(late.next_check(min(2)), Some(min(2)), "checked at 4 min");
        assert_eq!(late.next_check(min(4)), Some(min(4)), "checked at 8 min");
        assert_eq!(late.next_check(min(100)), Some(min(60)), "at most hourly");
        assert_eq!(
            late.next_check(min(48 * 60 - 10)),
            Some(min(10)),
            "the last check falls on the horizon"
        );
        assert_eq!(late.next_check(min(48 * 60)), None);
        // Walking the schedule: about 50 checks in 48 hours, never two closer than the first delay.
        let (mut waited, mut checks) = (Duration::ZERO, 0);
        while let Some(d) = late.next_check(waited) {
            assert!(
                d >= min(2) || waited + d == late.horizon,
                "{d:?} at {waited:?}"
            );
            waited += d;
            checks += 1;
        }
        assert_eq!(waited, late.horizon);
        assert!((45..=55).contains(&checks), "{checks} checks");
    }
}

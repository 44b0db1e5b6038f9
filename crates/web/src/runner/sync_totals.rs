//! What continuous sync delivered: today, since sync was turned on, and the last pass with its time. Each run's
//! journaled progress carries the totals so far, and a sync pass adds what it did; the next run starts from the
//! portal's last journaled progress. Turning sync off and on again starts new totals (they belong to the
//! settings' `sync_since`).

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use super::progress::Progress;

/// Calls by what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Delivered {
    pub found: u64,
    pub uploaded: u64,
    pub skipped: u64,
    pub failed: u64,
    pub awaiting_recording: u64,
}

impl Delivered {
    /// What one run did (calls a stop left unfinished are not failures of theirs: they are taken up again).
    pub fn of(p: &Progress) -> Delivered {
        Delivered {
            found: p.found,
            uploaded: p.uploaded,
            skipped: p.skipped.values().sum(),
            failed: p.failed_calls(),
            awaiting_recording: p.awaiting_recording,
        }
    }

    fn add(&mut self, d: Delivered) {
        self.found += d.found;
        self.uploaded += d.uploaded;
        self.skipped += d.skipped;
        self.failed += d.failed;
        self.awaiting_recording += d.awaiting_recording;
    }
}

/// Continuous sync's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncTotals {
    /// When sync was turned on (RFC 3339).
    pub since: String,
    /// Sync passes since then.
    pub passes: u64,
    /// Everything since then.
    pub total: Delivered,
    /// The day `today` counts (`YYYY-MM-DD` in the portal's time zone, else UTC) and that zone's offset.
    pub day: String,
    pub utc_offset_secs: i32,
    pub today: Delivered,
    /// When the last pass ended (RFC 3339) and what it did.
    pub last_pass_at: Option<String>,
    pub last_pass: Delivered,
}

fn day_of(at: DateTime<Utc>, offset: FixedOffset) -> String {
    at.with_timezone(&offset).format("%Y-%m-%d").to_string()
}

impl SyncTotals {
    /// The totals a run starts from: the previous run's, when they belong to the same `sync_since`.
    pub fn carried(previous: Option<SyncTotals>, sync_since: &str) -> SyncTotals {
        match previous {
            Some(t) if t.since == sync_since => t,
            _ => SyncTotals {
                since: sync_since.to_string(),
                ..SyncTotals::default()
            },
        }
    }

    /// Adds a sync pass that ended at `at`; `offset`: the portal's time zone when known.
    pub fn add_pass(&mut self, pass: Delivered, at: DateTime<Utc>, offset: Option<FixedOffset>) {
        if let Some(offset) = offset {
            self.utc_offset_secs = offset.local_minus_utc();
        }
        self.roll_day(at);
        self.passes += 1;
        self.total.add(pass);
        self.today.add(pass);
        self.last_pass = pass;
        self.last_pass_at = Some(at.to_rfc3339());
    }

    /// On a new day `today` starts from zero.
    pub fn roll_day(&mut self, now: DateTime<Utc>) {
        let offset = FixedOffset::east_opt(self.utc_offset_secs)
            .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
        let day = day_of(now, offset);
        if day != self.day {
            self.day = day;
            self.today = Delivered::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_add_up_today_restarts_and_new_sync_starts_over() {
        let d = |uploaded| Delivered {
            found: uploaded + 1,
            uploaded,
            skipped: 1,
            ..Delivered::default()
        };
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let msk = FixedOffset::east_opt(3 * 3600);
        let mut s = SyncTotals::carried(None, "2026-12-01T10:00:00Z");
        s.add_pass(d(5), t("2026-12-01T12:00:00Z"), msk);
        s.add_pass(d(3), t("2026-12-01T20:00:00Z"), msk);
        assert_eq!((s.passes, s.total.uploaded, s.today.uploaded), (2, 8, 8));
        assert_eq!(s.last_pass, d(3));
        // 21:30 UTC is the next day in Moscow.
        s.add_pass(d(2), t("2026-12-01T21:30:00Z"), None);
        assert_eq!(
            (s.day.as_str(), s.today.uploaded, s.total.uploaded),
            ("2026-12-02", 2, 10)
        );
        let same = SyncTotals::carried(Some(s.clone()), "2026-12-01T10:00:00Z");
        assert_eq!(same, s);
        let new = SyncTotals::carried(Some(s), "2026-12-03T09:00:00Z");
        assert_eq!((new.passes, new.total), (0, Delivered::default()));
    }
}

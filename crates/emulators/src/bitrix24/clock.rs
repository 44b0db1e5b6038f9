//! Wall-clock readings and the portal's date format (`2026-03-01T09:12:00+03:00`), shared by the limiter, the
//! `time` object of answers, the rows and the fault layer.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, TimeZone, Utc};

/// How the portal writes dates: ISO 8601 with the portal's offset.
const PORTAL_DATE: &str = "%Y-%m-%dT%H:%M:%S%:z";

/// Seconds since the Unix epoch, fractional.
pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whole seconds since the Unix epoch.
pub(crate) fn now_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, in the portal's time zone.
pub(crate) fn portal_now(offset: FixedOffset) -> DateTime<FixedOffset> {
    Utc::now().with_timezone(&offset)
}

/// A date as the portal writes it.
pub(crate) fn portal_date(d: &DateTime<FixedOffset>) -> String {
    d.format(PORTAL_DATE).to_string()
}

/// A Unix time (seconds, fractional part dropped) as the portal writes it in its zone.
pub(crate) fn unix_to_portal(offset: FixedOffset, t: f64) -> String {
    let secs = t.floor() as i64;
    offset
        .timestamp_opt(secs, 0)
        .single()
        .map(|d| portal_date(&d))
        .unwrap_or_default()
}

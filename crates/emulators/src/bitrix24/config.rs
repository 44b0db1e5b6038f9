//! How the emulated portal is generated and how it behaves: [`PortalConfig`] (sizes, shares, credentials, the
//! bucket, latency, faults) and the operating-time limiter's settings ([`OperatingConfig`]).

use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone};

use super::faults::FaultConfig;
use super::openlines::OpenLinesConfig;

/// The portal to generate and how it behaves.
#[derive(Clone)]
pub struct PortalConfig {
    pub seed: u64,
    pub calls: usize,
    pub users: usize,
    pub contacts: usize,
    pub companies: usize,
    pub leads: usize,
    pub deals: usize,
    /// Calls are spread over `[start, start + days)`.
    pub start: DateTime<FixedOffset>,
    pub days: u32,
    /// The portal's time zone (dates in rows and `time.date_*`).
    pub utc_offset: FixedOffset,
    /// Calls with no recording at all (missed calls etc.).
    pub no_record_share: f64,
    /// Recorded calls whose `CALL_RECORD_URL` is "" (only `RECORD_FILE_ID` → `disk.file.get`).
    pub disk_only_share: f64,
    pub wav_share: f64,
    pub stereo_share: f64,
    /// MP3 size realism (8000 = 64 kbit/s); WAV uses its real PCM byte rate.
    pub recording_bytes_per_second: u64,
    /// Cap per file (keeps tests light).
    pub max_recording_bytes: Option<u64>,
    /// The lowest-ID recorded call gets a recording of exactly this many bytes.
    pub big_recording: Option<u64>,
    pub webhook_user: u64,
    pub webhook_secret: String,
    /// OAuth access tokens accepted on `/rest/{method}`; empty = OAuth not set up (`NO_AUTH_FOUND`).
    pub access_tokens: Vec<String>,
    /// Leaky bucket: capacity X, leak Y per second.
    pub rate: (u32, u32),
    /// The portal counts recording downloads from its own host: `/rest/download.json` goes through the bucket
    /// (refused with 503 `QUERY_LIMIT_EXCEEDED` when it is full). On by default, the worst case; `/records/*` (the
    /// external host) never does.
    pub count_downloads: bool,
    /// Added to every REST response (not per download chunk).
    pub latency: Duration,
    /// Waited before answering each recording download, on both hosts (time to the first byte, not per chunk).
    pub download_latency: Duration,
    pub operating: Option<OperatingConfig>,
    pub faults: FaultConfig,
    /// Open Lines sessions (chats), generated beside the calls without changing them.
    pub open_lines: OpenLinesConfig,
}

impl std::fmt::Debug for PortalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalConfig")
            .field("seed", &self.seed)
            .field("calls", &self.calls)
            .field("users", &self.users)
            .field("start", &self.start)
            .field("days", &self.days)
            .field("webhook_user", &self.webhook_user)
            .field("webhook_secret", &"<redacted>")
            .field(
                "access_tokens",
                &format_args!("<{} redacted>", self.access_tokens.len()),
            )
            .field("rate", &self.rate)
            .field("operating", &self.operating)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Default for PortalConfig {
    fn default() -> Self {
        let msk = FixedOffset::east_opt(3 * 3600).expect("valid offset");
        PortalConfig {
            seed: 1,
            calls: 300,
            users: 12,
            contacts: 120,
            companies: 40,
            leads: 60,
            deals: 30,
            start: msk
                .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
                .single()
                .expect("valid date"),
            days: 30,
            utc_offset: msk,
            no_record_share: 0.15,
            disk_only_share: 0.10,
            wav_share: 0.2,
            stereo_share: 0.8,
            recording_bytes_per_second: 8000,
            max_recording_bytes: Some(256 * 1024),
            big_recording: None,
            webhook_user: 1,
            webhook_secret: "emulatorsecret0001".into(),
            access_tokens: Vec::new(),
            rate: (50, 2),
            count_downloads: true,
            latency: Duration::ZERO,
            download_latency: Duration::ZERO,
            operating: None,
            faults: FaultConfig::default(),
            open_lines: OpenLinesConfig::default(),
        }
    }
}

/// Per (credential, method) operating-time limiter: the portal blocks a method once the time spent in it over
/// a sliding 10-minute window passes the limit.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatingConfig {
    /// Seconds per 10-minute window (cloud: 480).
    pub limit_secs: f64,
    /// What each call adds.
    pub cost_per_call_secs: f64,
}

impl Default for OperatingConfig {
    fn default() -> Self {
        OperatingConfig {
            limit_secs: 480.0,
            cost_per_call_secs: 0.5,
        }
    }
}

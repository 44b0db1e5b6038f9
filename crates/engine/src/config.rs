//! What one export run is asked to do.

use std::time::Duration;

use b24sense_core::{CallFilter, MonoPolicy};

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
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// List and count only; upload nothing and write nothing.
    pub dry_run: bool,
    /// Attempts per call for retryable failures (download or upload), including the first.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// SpeechSense refuses audio longer than this.
    pub max_recording: Duration,
    /// How long a worker's claim on a call lasts before another worker may take it over.
    pub lease: Duration,
    /// Identifies this process in leases (host, pid and a random part).
    pub worker_id: String,
}

impl ExportConfig {
    pub fn new(portal: impl Into<String>, connection_id: impl Into<String>) -> Self {
        ExportConfig {
            portal: portal.into(),
            filter: CallFilter::default(),
            connection_id: connection_id.into(),
            mono_policy: MonoPolicy::Upload,
            language: b24sense_core::mapping::DEFAULT_LANGUAGE.to_string(),
            concurrency: 8,
            dry_run: false,
            max_attempts: 5,
            backoff: Backoff::default(),
            max_recording: Duration::from_secs(4 * 3600),
            lease: Duration::from_secs(600),
            worker_id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        }
    }
}

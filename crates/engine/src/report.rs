//! What a run tells its caller: progress events while it runs (each call's [`CallReport`] among them) and a
//! summary of counts at the end. The per-call reports are handed out one by one and never kept by the engine, so a
//! run's memory does not grow with its calls; a front end that wants them all writes them out as they come.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use b24sense_core::Outcome;
pub use b24sense_store::LedgerFault;
use serde::Serialize;

/// One line of the per-call report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallReport {
    pub call_id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Recording duration in seconds as the portal states it.
    pub seconds: u64,
    /// Bytes streamed to SpeechSense for this call.
    pub bytes: u64,
    /// From the upload's first byte to SpeechSense's answer with the talk ID (uploaded calls only).
    #[serde(skip)]
    pub upload_time: Option<Duration>,
}

/// Events a front end (progress bar, web page, logs) can follow.
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    /// `n` more qualifying calls were listed.
    Found { n: u64 },
    /// Listing finished; `total` calls qualified.
    ListingDone { total: u64 },
    /// One call reached its outcome in this run.
    Settled(CallReport),
    /// A call has no recording yet: it waits in the ledger and is checked again later (continuous sync).
    AwaitingRecording { call_id: u64 },
    /// A row the portal returned could not be read.
    BadRow { detail: String },
    /// The ledger stopped or started again taking writes, or the outcomes it could not take were journaled or
    /// imported: sent once per change (`docs/ledger-faults.md`).
    Ledger(LedgerHealth),
}

/// What a run knows about its ledger's health, for a progress line, a banner or a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LedgerHealth {
    /// The ledger refused a write. The run holds the outcomes it could not write (in memory and in the recovery
    /// journal), takes no new calls, and retries with backoff; it gives up after `give_up_secs`.
    Down {
        fault: LedgerFault,
        /// The database's own words.
        cause: String,
        /// Outcomes held so far.
        held: u64,
        give_up_secs: u64,
    },
    /// The ledger takes writes again; the run goes on by itself.
    Up { down_secs: u64, held: u64 },
    /// The run ends before the ledger took these outcomes: they are in the recovery journal at `path` (or, when it
    /// could not be written, printed on stderr as JSON lines), and the next run imports them first.
    Journaled { path: Option<PathBuf>, held: u64 },
    /// A recovery journal left by an earlier run was imported before anything else.
    Imported {
        path: PathBuf,
        entries: u64,
        applied: u64,
    },
}

/// How the run got on with its ledger (the summary's `ledger`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LedgerStats {
    /// Times the ledger stopped taking writes.
    pub outages: u64,
    /// Ledger operations tried again after a failure.
    pub retries: u64,
    /// Outcomes held because the ledger could not take them at first.
    pub held: u64,
    /// Outcomes left in the recovery journal (or on stderr) at the end: the ledger never took them in this run.
    pub journaled: u64,
    /// Entries of an earlier run's recovery journal imported at the start.
    pub imported: u64,
    /// Seconds the ledger refused writes, in all.
    pub down_secs: u64,
}

/// Receives progress events; must be cheap (called from the pipeline's tasks).
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// No progress reporting.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// The result of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Calls that qualified (listed by the portal with the filters).
    pub found: u64,
    pub uploaded: u64,
    /// Uploaded one-channel recordings (mono policy `upload`).
    pub uploaded_mono: u64,
    /// Uploaded again after an in-doubt upload, with no duplicate check available.
    pub reuploaded_after_crash: u64,
    /// Skipped, by reason (`already_uploaded`, `no_recording`, …).
    pub skipped: BTreeMap<String, u64>,
    /// Failed, by reason.
    pub failed: BTreeMap<String, u64>,
    /// Rows the portal returned that could not be read.
    pub bad_rows: u64,
    /// Calls this run could not claim because another worker kept holding them: neither done nor reported here.
    pub unsettled: u64,
    /// Calls without a recording yet, left waiting in the ledger for a later check (continuous sync).
    pub awaiting_recording: u64,
    pub bytes_uploaded: u64,
    pub seconds_uploaded: u64,
    #[serde(serialize_with = "secs_f64")]
    pub wall_time: Duration,
    /// Set when the run stopped early (fatal error or shutdown), with the reason.
    pub stopped: Option<String>,
    /// Dry run: calls that would be uploaded and their total length.
    pub would_upload: Option<DryRunTotals>,
    /// How the limit on calls in flight moved (initial, lowest, peak, final).
    pub concurrency: crate::concurrency::LimitTrace,
    /// Whether the portal counts recording downloads from its own host against its request bucket, as known at
    /// the end of the run; `None` when the source has no such notion (or a dry run, which downloads nothing).
    pub download_accounting: Option<DownloadAccounting>,
    /// Ledger faults this run met and what became of the outcomes it held.
    pub ledger: LedgerStats,
}

/// How recording downloads from the portal's own host are accounted (`docs/architecture.md`, "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadAccounting {
    /// Downloads take no request token: the portal has not refused anything while they ran uncounted.
    Uncounted,
    /// Downloads take a request token: the portal refused a request for its rate limit while they did not.
    Counted,
}

impl DownloadAccounting {
    pub fn from_counted(counted: bool) -> DownloadAccounting {
        if counted {
            DownloadAccounting::Counted
        } else {
            DownloadAccounting::Uncounted
        }
    }

    /// The word the summaries use (`uncounted` / `counted`).
    pub fn as_str(self) -> &'static str {
        match self {
            DownloadAccounting::Uncounted => "uncounted",
            DownloadAccounting::Counted => "counted",
        }
    }
}

/// What a dry run found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DryRunTotals {
    pub calls: u64,
    pub minutes: u64,
    pub already_uploaded: u64,
    pub without_recording: u64,
}

fn secs_f64<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl Summary {
    pub(crate) fn record(&mut self, report: &CallReport) {
        match &report.outcome {
            Outcome::Uploaded {
                mono,
                reuploaded_after_crash,
                ..
            } => {
                self.uploaded += 1;
                self.uploaded_mono += u64::from(*mono);
                self.reuploaded_after_crash += u64::from(*reuploaded_after_crash);
                self.bytes_uploaded += report.bytes;
                self.seconds_uploaded += report.seconds;
            }
            Outcome::Skipped { reason } => {
                *self.skipped.entry(reason.to_string()).or_default() += 1
            }
            Outcome::Failed { reason, .. } => {
                *self.failed.entry(reason.to_string()).or_default() += 1
            }
        }
    }

    /// Calls that reached an outcome.
    pub fn settled(&self) -> u64 {
        self.uploaded + self.skipped.values().sum::<u64>() + self.failed.values().sum::<u64>()
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

//! A run's progress: what the page shows and the store journals ([`Progress`]), the live state it is computed
//! from ([`RunState`]), and the engine's progress events applied to it ([`progress_callback`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use b24sense_core::Outcome;
use b24sense_engine::{CallReport, ProgressEvent};
use serde::{Deserialize, Serialize};

use super::chats::ChatProgress;
use super::eta::{eta_secs, RecentRate};
use super::sync_totals::SyncTotals;
use crate::i18n::{self, Lang, Msg};
use crate::metrics::Metrics;
use crate::trigger::{self, Trigger};

/// What the page shows about the current or last run (also what the store journals, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    pub running: bool,
    /// What started the run; `""` in JSON while unknown.
    #[serde(with = "trigger::or_empty")]
    pub trigger: Option<Trigger>,
    pub found: u64,
    /// How many calls the portal counted for the filters when the run started (a full run only): the total
    /// the time left is estimated from before the listing is done.
    pub expected: Option<u64>,
    pub listing_done: bool,
    pub settled: u64,
    pub uploaded: u64,
    /// Calls without a recording yet, waiting in the ledger for the next check.
    pub awaiting_recording: u64,
    pub skipped: BTreeMap<String, u64>,
    /// By reason; `interrupted`: calls a stop left unfinished (taken up again by the next run).
    pub failed: BTreeMap<String, u64>,
    /// Calls found and not done yet: `found = uploaded + skipped + failed + awaiting_recording + remaining`.
    pub remaining: u64,
    pub bytes: u64,
    /// Calls per second over the recent calls (the whole run's once it ended).
    pub rate: f64,
    /// Seconds left at the recent rate (when the total is known or estimated).
    pub eta_secs: Option<u64>,
    pub elapsed_secs: u64,
    /// The newest last, in words a person understands.
    pub last_errors: Vec<String>,
    /// Why the run ended early (stopped by the user, refused credentials, …).
    pub stopped: Option<String>,
    pub finished: bool,
    /// The run's server stopped or crashed before it ended; it is resumed when a server starts again.
    pub interrupted: bool,
    /// A note for the page (this run resumes one that a restart interrupted).
    pub notice: Option<String>,
    /// With continuous sync on: what it delivered so far.
    pub sync: Option<SyncTotals>,
    /// Open Lines sessions, when the settings name a chat connection (the counts above are calls only).
    pub chats: Option<ChatProgress>,
}

impl Progress {
    /// A journaled run whose process is gone, as the page shows it.
    pub fn into_interrupted(mut self, lang: Lang) -> Progress {
        self.running = false;
        self.finished = true;
        self.interrupted = true;
        self.eta_secs = None;
        self.stopped = Some(Msg::Interrupted.text(lang).to_string());
        if let Some(c) = self.chats.as_mut() {
            c.running = false;
        }
        self
    }

    /// Calls that failed (not counting those a stop left unfinished).
    pub fn failed_calls(&self) -> u64 {
        self.failed
            .iter()
            .filter(|(reason, _)| reason.as_str() != INTERRUPTED)
            .map(|(_, n)| n)
            .sum()
    }

    /// Calls found and not done yet, from the counts.
    fn not_done(&self) -> u64 {
        self.found
            .saturating_sub(self.settled + self.awaiting_recording)
    }
}

/// The failure reason of calls a stop left unfinished.
const INTERRUPTED: &str = "interrupted";

/// The live state of one run in this process.
pub(super) struct RunState {
    pub(super) progress: Mutex<Progress>,
    pub(super) started: Instant,
    errors: Mutex<VecDeque<String>>,
    recent: Mutex<RecentRate>,
    /// Bumped by every progress event: the journal writes only when it moved (or for the heartbeat).
    pub(super) changes: AtomicU64,
}

impl RunState {
    pub(super) fn new(progress: Progress) -> RunState {
        let started = Instant::now();
        RunState {
            progress: Mutex::new(progress),
            started,
            errors: Mutex::new(VecDeque::new()),
            recent: Mutex::new(RecentRate::new(started)),
            changes: AtomicU64::new(0),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The progress with rate, ETA and the last errors filled in.
    pub(super) fn snapshot(&self) -> Progress {
        let mut p = self.lock().clone();
        p.remaining = p.not_done();
        if !p.finished {
            let now = Instant::now();
            p.elapsed_secs = now.duration_since(self.started).as_secs();
            let rate = self
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rate(now);
            p.rate = rate.unwrap_or(0.0);
            // The total: the listed calls once the listing is done, else what the portal counted at the start.
            let total = if p.listing_done {
                Some(p.found)
            } else {
                p.expected.map(|e| e.max(p.found))
            };
            // A call left waiting for its recording is done for this run.
            let done = p.settled + p.awaiting_recording;
            p.eta_secs = total.and_then(|t| eta_secs(t.saturating_sub(done), rate));
        }
        p.last_errors = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        p
    }

    pub(super) fn finished(&self) -> bool {
        self.lock().finished
    }

    /// One more call done (settled, or left waiting for its recording).
    fn call_done(&self) {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(Instant::now());
    }

    pub(super) fn push_error(&self, msg: String) {
        let mut errs = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errs.push_back(msg);
        while errs.len() > 10 {
            errs.pop_front();
        }
    }
}

/// The engine's progress events applied to the run's in-memory progress and the metrics. Called from the
/// pipeline's tasks: it only takes the progress lock, never waits for the database.
pub(super) fn progress_callback(
    st: Arc<RunState>,
    m: Arc<Metrics>,
    lang: Lang,
) -> b24sense_engine::ProgressFn {
    let gauge = super::ledger_health::LedgerDown::new(m.clone());
    Arc::new(move |ev: &ProgressEvent| {
        let mut p = st.lock();
        match ev {
            ProgressEvent::Found { n } => p.found += n,
            ProgressEvent::ListingDone { total } => {
                p.listing_done = true;
                p.found = p.found.max(*total);
            }
            ProgressEvent::Settled(r) => {
                st.call_done();
                p.settled += 1;
                p.bytes += r.bytes;
                m.upload_bytes.inc_by(r.bytes);
                match &r.outcome {
                    Outcome::Uploaded { .. } => {
                        p.uploaded += 1;
                        m.call_settled("uploaded");
                        if let Some(t) = r.upload_time {
                            m.upload_duration.observe(t.as_secs_f64());
                        }
                    }
                    Outcome::Skipped { reason } => {
                        *p.skipped.entry(reason.as_str().to_string()).or_insert(0) += 1;
                        m.call_settled("skipped");
                    }
                    Outcome::Failed { reason, .. } => {
                        *p.failed.entry(reason.as_str().to_string()).or_insert(0) += 1;
                        m.call_settled("failed");
                        if let Some(msg) = describe(r, lang) {
                            st.push_error(msg);
                        }
                    }
                }
            }
            ProgressEvent::AwaitingRecording { .. } => {
                st.call_done();
                p.awaiting_recording += 1;
            }
            ProgressEvent::BadRow { detail } => {
                tracing::warn!(%detail, "unreadable call row");
                st.push_error(i18n::unreadable_row(lang).to_string());
            }
            ProgressEvent::Ledger(h) => super::ledger_health::apply(&st, &mut p, &gauge, h, lang),
        }
        drop(p);
        st.changes.fetch_add(1, Ordering::Relaxed);
    })
}

/// A failed call in the page's words (the technical detail is in the report and the log). Calls a stop left
/// unfinished are not listed: the stop's own message says why, once.
fn describe(report: &CallReport, lang: Lang) -> Option<String> {
    let Outcome::Failed { reason, detail } = &report.outcome else {
        return None;
    };
    if *reason == b24sense_core::FailReason::Interrupted {
        return None;
    }
    tracing::debug!(call = report.call_id, %reason, %detail, "call not uploaded");
    Some(i18n::call_not_uploaded(lang, report.call_id, *reason))
}

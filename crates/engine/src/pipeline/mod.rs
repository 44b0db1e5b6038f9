//! One export run: list → register → enrich → resolve → download → probe → upload → commit.
//!
//! Three kinds of tasks, joined by channels, so that the slowest resource (usually the portal's 2 requests/s) stays
//! busy and nothing waits on anything it does not need:
//! - the **lister** pages through the call history (up to 2,500 calls per request), writes new calls to the ledger
//!   as `pending` in one transaction per page, looks up operator and client names for the whole page in one batch,
//!   and hands the calls on;
//! - the **resolver** passes calls with a `CALL_RECORD_URL` straight through and gathers the others until it can
//!   resolve 50 Disk files in one `disk.file.get` batch, just before they are downloaded; calls whose direct URL
//!   turned out dead come back to it for the Disk route. It claims the calls it hands on in the ledger, a worker's
//!   worth per statement;
//! - **workers**, as many as the concurrency's ceiling, each take a place under the run's [`AdaptiveLimit`] and
//!   then a claimed call, stream its recording from the portal into SpeechSense (never holding it whole), commit
//!   the outcome, and tell the limit how the attempt went.
//!
//! Delivery guarantee: a call is marked `uploading` right before the half-close that lets SpeechSense store its
//! talk, and `uploaded` with its talk ID after; a call left `uploading` is *in doubt* and is resolved by a
//! SpeechSense search when one is configured, or uploaded again and reported as `reuploaded_after_crash` — so a
//! duplicate is never silent and a loss never happens. A stream abandoned before its half-close stores nothing,
//! so a call whose upload broke off earlier is not in doubt.
//!
//! Several processes (replicas on one PostgreSQL, or a restart after a crash) coordinate through leases:
//! - one **portal lease** per portal: only its holder lists, downloads and uploads, so together the replicas stay
//!   within the portal's request limit; the others poll until it is released or expires (its holder died);
//! - one **call lease** per call, held (and renewed) for as long as a worker is busy with the call. A call whose
//!   lease another process still holds is waited for, not skipped: with the portal lease held, that process is dead
//!   or paused, and its lease runs out.
//! - Every write is fenced, and so is the end of every upload: right before the half-close that makes SpeechSense
//!   store the talk, the worker marks the call `uploading` (renewing its lease, fenced) and abandons the stream
//!   (nothing stored) if it was taken over.
//!   A worker paused past its lease (SIGSTOP, a suspended VM) therefore neither commits nor stores a second talk.
//!
//! The parts, one file each:
//! - this file: [`run_export`], the run's shared state and the wiring of the stages by channels;
//! - `accounting`: the portal's download accounting, as the ledger remembers it;
//! - `lease`: taking, waiting for, renewing and checking the portal's and the calls' leases;
//! - `lister`: listing (or reading the due calls again), registering, looking up names;
//! - `resolver`: routing by recording URL, `disk.file.get` batches, claims ahead of the workers, outcomes reached
//!   without an upload;
//! - `workers`: driving a claimed call to its outcome (retries, the in-doubt rule) and committing it;
//! - `attempt`: one try at a call — download and probe, choose the connection, upload and classify;
//! - `dry_run`: counting what a run would upload.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::{Call, CrmInfo, FailReason, Outcome, UserInfo};
use b24sense_store::{Claim, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::concurrency::AdaptiveLimit;
use crate::config::ExportConfig;
use crate::ports::{CallSource, Classified, TalkSink};
use crate::report::{CallReport, ProgressEvent, ProgressFn, Summary};
use crate::EngineError;

mod accounting;
mod attempt;
mod dry_run;
mod guard;
mod lease;
mod lister;
mod resolver;
mod workers;

/// `disk.file.get` commands per batch request (the portal's batch limit).
const DISK_BATCH: usize = 50;

/// A call on its way through the pipeline, with what was learned about it so far.
#[derive(Debug, Clone)]
struct WorkItem {
    call: Call,
    operator: Option<UserInfo>,
    client: Option<CrmInfo>,
    /// Where to download the recording from, once known.
    url: Option<Url>,
    /// The URL came from `disk.file.get`, so there is no other route left.
    via_disk: bool,
    /// `disk.file.get` links handed out for this call so far. A link can die before it is used (an OAuth
    /// `DOWNLOAD_URL` dies with its access token), so a dead one earns one fresh link, not more.
    disk_links: u8,
    /// The ledger claim taken for this call ahead of the workers, and when (see [`Run::dispatch`]).
    claim: Option<(Claim, Instant)>,
}

/// Disk links tried per call before its recording counts as unavailable.
const MAX_DISK_LINKS: u8 = 2;

/// What a worker tells the resolver after each item.
enum Feedback {
    Done,
    /// The direct URL is dead; try the Disk route.
    Fallback(Box<WorkItem>),
}

/// What one upload sent: audio bytes and the time from the first byte to the talk ID.
#[derive(Debug, Clone, Copy)]
struct Sent {
    bytes: u64,
    took: Option<Duration>,
}

impl Sent {
    const NOTHING: Sent = Sent {
        bytes: 0,
        took: None,
    };
}

/// Why one attempt at a call did not produce an outcome.
enum AttemptError {
    /// Try again after a backoff; `reason` is reported if attempts run out.
    Retry {
        reason: FailReason,
        after: Option<Duration>,
        detail: String,
    },
    /// The upload may have been stored.
    InDoubt { detail: String },
    /// The direct URL is dead; go through Disk.
    Fallback,
    /// This outcome is final.
    Final(Outcome),
    /// Nothing can succeed in this run.
    Fatal(String),
    /// Another worker owns the call now.
    LostLease,
    /// The ledger could not write the `uploading` mark, so the upload was abandoned before its end (nothing stored).
    Ledger(b24sense_store::Error),
}

struct Run<S, K> {
    source: Arc<S>,
    sink: Arc<K>,
    store: Store,
    config: ExportConfig,
    progress: ProgressFn,
    /// Stops taking new calls: set on shutdown or on a fatal error.
    stop: CancellationToken,
    /// Abandons the calls in flight: the shutdown grace ran out, or another replica took the portal over.
    hard: CancellationToken,
    fatal: Mutex<Option<String>>,
    summary: Mutex<Summary>,
    /// Calls in flight at once (downloads and uploads).
    limit: AdaptiveLimit,
    /// The ledger's health and the outcomes it could not take yet (`guard`).
    ledger: guard::LedgerGuard,
    /// Claims made so far: each claim's lease owner is [`b24sense_store::claim_owner`] of the worker ID and this.
    claims: std::sync::atomic::AtomicU64,
}

/// Runs one export to completion (or until `shutdown` is cancelled, after which in-flight uploads finish).
pub async fn run_export<S: CallSource, K: TalkSink>(
    source: Arc<S>,
    sink: Arc<K>,
    store: Store,
    config: ExportConfig,
    progress: ProgressFn,
    shutdown: CancellationToken,
) -> Result<Summary, EngineError> {
    config
        .filter
        .validate()
        .map_err(|e| EngineError::Config(e.to_string()))?;
    config.concurrency.validate().map_err(EngineError::Config)?;
    if config.connection_id.trim().is_empty() {
        return Err(EngineError::Config(
            "connection_id: must not be empty".into(),
        ));
    }
    let started = Instant::now();
    let run = Arc::new(Run {
        source,
        sink,
        store,
        limit: AdaptiveLimit::new(config.concurrency),
        config,
        progress,
        stop: shutdown.child_token(),
        hard: CancellationToken::new(),
        fatal: Mutex::new(None),
        summary: Mutex::new(Summary::default()),
        ledger: guard::LedgerGuard::new(),
        claims: Default::default(),
    });

    if !run.config.dry_run {
        // Outcomes an earlier run could not record come first: no call with a known talk ID goes out again.
        run.import_recovery_journal().await?;
    }
    if run.config.dry_run {
        run.dry_run().await?;
    } else if let Some(lease) = run.acquire_portal().await? {
        let accounting = run.start_download_accounting().await;
        let held = CancellationToken::new();
        let holder = tokio::spawn(run.clone().hold_portal(lease.clone(), held.clone()));
        let grace = {
            let (hard, grace) = (run.hard.clone(), run.config.shutdown_grace);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                tracing::warn!(
                    "uploads still in flight after the shutdown grace period; abandoning them"
                );
                hard.cancel();
            })
        };
        let result = run.clone().export().await;
        run.finish_download_accounting(accounting).await;
        // Calls claimed ahead of the workers and never taken up (the run stopped) are due at once for the next run.
        let given_up = run.ledger_given_up();
        if given_up {
            tracing::warn!("the ledger refuses writes: this run's leases are left to expire (a new process on this machine takes them over at once)");
        } else if let Err(e) = run
            .store
            .release_held(&run.config.portal, &run.config.worker_id)
            .await
        {
            tracing::warn!(error = %e, "could not release the calls this run held; their leases expire by themselves");
        }
        grace.abort();
        held.cancel();
        let _ = holder.await;
        // Let a waiting replica take over at once rather than after the lease runs out.
        if !given_up {
            if let Err(e) = run.store.release_portal(&lease).await {
                tracing::warn!(error = %e, "could not release the portal lease; it expires by itself");
            }
        }
        run.settle_ledger_guard().await;
        // A run that gave up on its ledger ends with its reason and summary (below), not the last ledger error.
        if let Err(e) = result {
            if run.fatal.lock().unwrap().is_none() {
                return Err(e);
            }
        }
    }

    let mut summary = std::mem::take(&mut *run.summary.lock().unwrap());
    summary.wall_time = started.elapsed();
    summary.concurrency = run.limit.trace();
    if let Some(reason) = run.fatal.lock().unwrap().clone() {
        summary.stopped = Some(reason.clone());
        return Err(EngineError::Stopped {
            reason,
            summary: Box::new(summary),
        });
    }
    if shutdown.is_cancelled() {
        summary.stopped = Some("shutdown requested".into());
    }
    Ok(summary)
}

impl<S: CallSource, K: TalkSink> Run<S, K> {
    async fn export(self: Arc<Self>) -> Result<(), EngineError> {
        // One worker per place the limit may ever allow; the limit decides how many work at once.
        let workers = self.config.concurrency.ceiling().max(1);
        let (input_tx, input_rx) = mpsc::channel::<WorkItem>(DISK_BATCH * 2);
        let (work_tx, work_rx) =
            mpsc::channel::<WorkItem>(self.config.concurrency.initial().max(1));
        let (feedback_tx, feedback_rx) = mpsc::unbounded_channel::<Feedback>();
        let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));

        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let run = self.clone();
            let rx = work_rx.clone();
            let fb = feedback_tx.clone();
            tasks.spawn(async move { run.worker(rx, fb).await });
        }
        drop(feedback_tx);
        let resolver = tokio::spawn(self.clone().resolver(input_rx, work_tx, feedback_rx));

        let listed = self.lister(input_tx).await;
        let resolved = resolver
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| EngineError::Internal(e.to_string()))?;
        }
        listed.and(resolved)
    }

    fn fail_run(&self, reason: String) {
        let mut fatal = self.fatal.lock().unwrap();
        if fatal.is_none() {
            tracing::error!(%reason, "stopping the export");
            *fatal = Some(reason);
        }
        self.stop.cancel();
    }

    fn report(&self, call: &Call, outcome: Outcome, sent: Sent) {
        let report = CallReport {
            call_id: call.id,
            outcome,
            seconds: call.recording_seconds(),
            bytes: sent.bytes,
            upload_time: sent.took,
        };
        self.summary.lock().unwrap().record(&report);
        (self.progress)(&ProgressEvent::Settled(report));
    }

    /// Retries a portal operation that failed with a retryable error (the client already retried the HTTP layer).
    async fn with_retry<T, E: Classified, F, Fut>(&self, what: &str, op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let c = &self.config;
        crate::retry::retry(what, &c.backoff, c.max_attempts, &self.stop, op).await
    }
}

fn unique<T: std::hash::Hash + Eq + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.filter(|i| seen.insert(i.clone())).collect()
}

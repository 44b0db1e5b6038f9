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
//! - `concurrency` **workers** each take a claimed call, stream its recording from the portal into SpeechSense
//!   (never holding it whole), and commit the outcome.
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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::audio::{self, ProbeError, MAX_PROBE_BYTES};
use b24sense_core::mapping::talk_fields;
use b24sense_core::{
    Call, CrmInfo, CrmRef, ErrorClass, FailReason, LedgerState, MonoPolicy, Outcome, SkipReason,
    UserInfo,
};
use b24sense_store::{Claim, PortalLease, Store};
use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::{ExportConfig, LateRecordings};
use crate::ports::{CallSource, Classified, Names, TalkSink};
use crate::report::{CallReport, DryRunTotals, ProgressEvent, ProgressFn, Summary};
use crate::EngineError;

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
        config,
        progress,
        stop: shutdown.child_token(),
        hard: CancellationToken::new(),
        fatal: Mutex::new(None),
        summary: Mutex::new(Summary::default()),
    });

    if run.config.dry_run {
        run.dry_run().await?;
    } else if let Some(lease) = run.acquire_portal().await? {
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
        // Calls claimed ahead of the workers and never taken up (the run stopped) are due at once for the next run.
        if let Err(e) = run
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
        if let Err(e) = run.store.release_portal(&lease).await {
            tracing::warn!(error = %e, "could not release the portal lease; it expires by itself");
        }
        result?;
    }

    let mut summary = std::mem::take(&mut *run.summary.lock().unwrap());
    summary.wall_time = started.elapsed();
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
        let workers = self.config.concurrency.max(1);
        let (input_tx, input_rx) = mpsc::channel::<WorkItem>(DISK_BATCH * 2);
        let (work_tx, work_rx) = mpsc::channel::<WorkItem>(workers);
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

    /// Waits (polling) until this process holds the portal's lease; `None` when shut down while waiting.
    async fn acquire_portal(&self) -> Result<Option<PortalLease>, EngineError> {
        let mut waiting = false;
        loop {
            let lease = self
                .store
                .claim_portal(
                    &self.config.portal,
                    &self.config.worker_id,
                    self.config.portal_lease,
                )
                .await?;
            if let Some(lease) = lease {
                if waiting {
                    tracing::info!(portal = %self.config.portal, "took the portal over");
                }
                return Ok(Some(lease));
            }
            if !waiting {
                waiting = true;
                tracing::warn!(
                    portal = %self.config.portal,
                    "another process holds this portal (a replica, or a run that was killed: its lease \
                     expires within {:?}); waiting for its lease",
                    self.config.portal_lease
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll()) => {}
                _ = self.stop.cancelled() => return Ok(None),
            }
        }
    }

    /// Renews the portal lease every sixth of its length until `done` (so a dead holder's last request is at least
    /// five sixths of a lease old when another replica takes over: 50 s with the default, the Enterprise bucket's
    /// drain time). Losing it (another replica took the portal
    /// over, or the database was unreachable for a whole lease) stops the run and abandons the calls in flight.
    async fn hold_portal(self: Arc<Self>, lease: PortalLease, done: CancellationToken) {
        let every = (self.config.portal_lease / 6).max(Duration::from_millis(50));
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = done.cancelled() => return,
            }
            match self
                .store
                .renew_portal(&lease, self.config.portal_lease)
                .await
            {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    self.fail_run("another replica took this portal over".into());
                    self.hard.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the portal lease");
                    if renewed.elapsed() >= self.config.portal_lease {
                        self.fail_run(format!("lost the portal lease: {e}"));
                        self.hard.cancel();
                        return;
                    }
                }
            }
        }
    }

    fn poll(&self) -> Duration {
        self.config
            .poll
            .min(self.config.lease / 4)
            .max(Duration::from_millis(10))
    }

    /// Claims a call, waiting while another worker holds it (with the portal lease held, that worker is dead or
    /// paused and its lease runs out). `None`: the call is done already (reported here) or still held after the wait.
    async fn claim_or_wait(&self, call: &Call) -> Result<Option<Claim>, EngineError> {
        let deadline = Instant::now() + self.config.lease * 2 + self.config.portal_lease;
        loop {
            let claim = self
                .store
                .claim(
                    &self.config.portal,
                    call.id,
                    &self.config.worker_id,
                    self.config.lease,
                )
                .await?;
            if claim.is_some() {
                return Ok(claim);
            }
            match self.store.entry(&self.config.portal, call.id).await? {
                Some(e) if e.state == LedgerState::Uploaded => {
                    let outcome = Outcome::Skipped {
                        reason: SkipReason::AlreadyUploaded,
                    };
                    self.report(call, outcome, Sent::NOTHING);
                    return Ok(None);
                }
                None => return Ok(None),
                Some(_) => {}
            }
            if Instant::now() >= deadline || self.stop.is_cancelled() {
                tracing::warn!(
                    call = call.id,
                    "another worker still holds this call; leaving it to that worker"
                );
                self.summary.lock().unwrap().unsettled += 1;
                return Ok(None);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll()) => {}
                _ = self.stop.cancelled() => {}
            }
        }
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
    async fn with_retry<T, E: Classified, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match e.class() {
                    ErrorClass::Retryable { after }
                        if attempt < self.config.max_attempts && !self.stop.is_cancelled() =>
                    {
                        let delay = self.config.backoff.delay(attempt, after);
                        tracing::warn!(error = %e, ?delay, attempt, "{what} failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.stop.cancelled() => return Err(e),
                        }
                        attempt += 1;
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    // ---------------------------------------------------------------- lister

    async fn lister(&self, input: mpsc::Sender<WorkItem>) -> Result<(), EngineError> {
        let portal = self.config.portal.clone();
        let cursor_key = serde_json::to_string(&self.config.filter).unwrap_or_default();
        let mut names = Names::default();
        let mut after = 0u64;
        let mut total = 0u64;
        if self.config.incremental {
            if let Some(mark) = self.store.cursor(&portal, &cursor_key).await? {
                total += self.take_up_due(mark, &input, &mut names).await?;
                after = mark;
            }
        }
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let Some(page) = self.next_page(after).await else {
                break;
            };
            total += page.calls.len() as u64;
            self.report_bad_rows(&page.bad_rows);
            if !self.hand_on(page.calls, &input, &mut names).await? {
                break;
            }
            if let Some(last) = page.last_id {
                self.store.set_cursor(&portal, &cursor_key, last).await?;
                after = last;
            }
            if page.exhausted || page.last_id.is_none() {
                break;
            }
        }
        (self.progress)(&ProgressEvent::ListingDone { total });
        self.summary.lock().unwrap().found = total;
        Ok(())
    }

    /// Continuous sync: the ledger's unfinished calls up to the high-water mark `mark` (left by a stopped or crashed
    /// run, or awaiting a recording that is due for another check), read again from the portal by ID so that a
    /// recording attached since is seen, and handed on. Returns how many calls were taken up.
    async fn take_up_due(
        &self,
        mark: u64,
        input: &mpsc::Sender<WorkItem>,
        names: &mut Names,
    ) -> Result<u64, EngineError> {
        /// One REST request reads 2,500 calls by ID (50 per command, 50 commands per batch).
        const DUE_PAGE: u32 = 2_500;
        let mut after = 0u64;
        let mut taken = 0u64;
        while !self.stop.is_cancelled() {
            let due = self
                .store
                .due(&self.config.portal, after, mark, DUE_PAGE)
                .await?;
            let Some(last) = due.last().map(|e| e.call_id) else {
                break;
            };
            after = last;
            let ids: Vec<u64> = due.iter().map(|e| e.call_id).collect();
            let read = self
                .with_retry("reading calls again", || self.source.calls_by_id(&ids))
                .await;
            let page = match read {
                Ok(page) => page,
                Err(e) => {
                    self.fail_run(format!("reading calls again from Bitrix24 failed: {e}"));
                    break;
                }
            };
            taken += ids.len() as u64;
            (self.progress)(&ProgressEvent::Found {
                n: ids.len() as u64,
            });
            self.report_bad_rows(&page.bad_rows);
            // A call the portal no longer returns is gone (deleted); with unreadable rows in the answer, absence
            // proves nothing, and the calls are left for the next pass.
            if page.bad_rows.is_empty() {
                let returned: HashSet<u64> = page.calls.iter().map(|c| c.id).collect();
                for entry in due.iter().filter(|e| !returned.contains(&e.call_id)) {
                    if let Some(call) = &entry.call {
                        let outcome = Outcome::Failed {
                            reason: FailReason::RecordingUnavailable,
                            detail: format!("Bitrix24 no longer returns call {}", call.id),
                        };
                        self.settle_directly(call, outcome).await?;
                    }
                }
            }
            if !self.hand_on(page.calls, input, names).await? {
                break;
            }
            if due.len() < DUE_PAGE as usize {
                break;
            }
        }
        Ok(taken)
    }

    fn report_bad_rows(&self, bad_rows: &[String]) {
        for detail in bad_rows {
            tracing::warn!(%detail, "unreadable call row");
            self.summary.lock().unwrap().bad_rows += 1;
            (self.progress)(&ProgressEvent::BadRow {
                detail: detail.clone(),
            });
        }
    }

    /// Registers a page of calls in the ledger, looks up their names and hands on those not uploaded yet. False when
    /// the run is stopping (the rest stays `pending` in the ledger).
    async fn hand_on(
        &self,
        calls: Vec<Call>,
        input: &mpsc::Sender<WorkItem>,
        names: &mut Names,
    ) -> Result<bool, EngineError> {
        let entries = self.store.register(&self.config.portal, &calls).await?;
        let mut todo = Vec::with_capacity(calls.len());
        for (call, entry) in calls.into_iter().zip(entries) {
            if entry.state == LedgerState::Uploaded {
                let outcome = Outcome::Skipped {
                    reason: SkipReason::AlreadyUploaded,
                };
                self.report(&call, outcome, Sent::NOTHING);
            } else {
                todo.push(call);
            }
        }
        self.enrich(names, &todo).await;
        for call in todo {
            let item = WorkItem {
                operator: call
                    .portal_user_id
                    .and_then(|id| names.users.get(&id).cloned()),
                client: call.crm_ref().and_then(|r| names.crm.get(&r).cloned()),
                call,
                url: None,
                via_disk: false,
                disk_links: 0,
                claim: None,
            };
            tokio::select! {
                sent = input.send(item) => if sent.is_err() { return Ok(false) },
                _ = self.stop.cancelled() => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Looks up the names this page needs and the per-run cache lacks, in as few requests as the portal allows.
    async fn enrich(&self, names: &mut Names, calls: &[Call]) {
        let users: Vec<u64> = unique(
            calls
                .iter()
                .filter_map(|c| c.portal_user_id)
                .filter(|u| !names.users.contains_key(u)),
        );
        let crm: Vec<CrmRef> = unique(
            calls
                .iter()
                .filter_map(Call::crm_ref)
                .filter(|r| !names.crm.contains_key(r)),
        );
        if users.is_empty() && crm.is_empty() {
            return;
        }
        match self
            .with_retry("looking up names", || self.source.lookup(&users, &crm))
            .await
        {
            Ok(found) => {
                names.users.extend(found.users);
                names.crm.extend(found.crm);
            }
            // Names are metadata, not the call: export with the mapping's fallbacks rather than not at all.
            Err(e) => tracing::warn!(error = %e, "name lookup failed; using fallback names"),
        }
    }

    // ---------------------------------------------------------------- resolver

    async fn resolver(
        self: Arc<Self>,
        mut input: mpsc::Receiver<WorkItem>,
        work: mpsc::Sender<WorkItem>,
        mut feedback: mpsc::UnboundedReceiver<Feedback>,
    ) -> Result<(), EngineError> {
        let mut via_disk: Vec<WorkItem> = Vec::new();
        let mut outstanding = 0usize;
        let mut input_open = true;
        loop {
            // A partial Disk batch costs a whole request, so one goes out only when listing is over: until then more
            // Disk-only calls keep coming, and the workers have the direct-URL calls (idle at most while the next
            // listing request runs). This keeps `disk.file.get` at one request per 50 calls.
            let flush = via_disk.len() >= DISK_BATCH || (!via_disk.is_empty() && !input_open);
            if flush && !self.stop.is_cancelled() {
                let batch: Vec<WorkItem> =
                    via_disk.drain(..via_disk.len().min(DISK_BATCH)).collect();
                let ready = self.resolve_disk(batch).await?;
                outstanding += ready.len();
                if !self.dispatch(ready, &work).await? {
                    return Ok(());
                }
                continue;
            }
            if self.stop.is_cancelled() {
                // Calls not yet handed to a worker stay `pending` in the ledger for the next run.
                via_disk.clear();
                input_open = false;
            }
            if !input_open && via_disk.is_empty() && outstanding == 0 {
                return Ok(());
            }
            tokio::select! {
                item = input.recv(), if input_open => match item {
                    Some(item) => {
                        // Take what else is queued (up to a worker each) so that one ledger statement claims it all.
                        let mut ready = Vec::new();
                        let mut next = Some(item);
                        while let Some(item) = next.take() {
                            if let Some(item) = self.route(item, &mut via_disk).await? {
                                ready.push(item);
                            }
                            if ready.len() < self.workers() {
                                next = input.try_recv().ok();
                            }
                        }
                        outstanding += ready.len();
                        if !self.dispatch(ready, &work).await? {
                            return Ok(());
                        }
                    }
                    None => input_open = false,
                },
                fb = feedback.recv() => match fb {
                    Some(Feedback::Done) => outstanding -= 1,
                    Some(Feedback::Fallback(item)) => {
                        outstanding -= 1;
                        via_disk.push(*item);
                    }
                    None => return Ok(()),
                },
                _ = self.stop.cancelled(), if input_open => {}
            }
        }
    }

    fn workers(&self) -> usize {
        self.config.concurrency.max(1)
    }

    /// Hands calls to the workers, claiming them in the ledger first, a worker's worth per statement: one statement
    /// instead of one per call, and a claim that waits for at most two rounds of the workers before its worker
    /// takes it up. A call someone else holds goes on unclaimed, and its worker waits for it. False when the
    /// workers are gone. Claims of calls no worker took up (the run stopped) are given back when the run ends.
    async fn dispatch(
        &self,
        items: Vec<WorkItem>,
        work: &mpsc::Sender<WorkItem>,
    ) -> Result<bool, EngineError> {
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let mut chunk: Vec<WorkItem> = items.by_ref().take(self.workers()).collect();
            let ids: Vec<u64> = chunk.iter().map(|i| i.call.id).collect();
            let claims = self
                .store
                .claim_many(
                    &self.config.portal,
                    &ids,
                    &self.config.worker_id,
                    self.config.lease,
                )
                .await?;
            let at = Instant::now();
            let mut claims: HashMap<u64, Claim> =
                claims.into_iter().map(|c| (c.call_id, c)).collect();
            for item in &mut chunk {
                item.claim = claims.remove(&item.call.id).map(|c| (c, at));
            }
            for item in chunk {
                if work.send(item).await.is_err() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Sends a call with a direct URL on; keeps a Disk-only call for the next batch; settles a call with no recording.
    async fn route(
        &self,
        mut item: WorkItem,
        via_disk: &mut Vec<WorkItem>,
    ) -> Result<Option<WorkItem>, EngineError> {
        if let Some(url) = item
            .call
            .call_record_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
        {
            item.url = Some(url);
            return Ok(Some(item));
        }
        if item.call.record_file_id.is_some() {
            via_disk.push(item);
            return Ok(None);
        }
        match self.config.await_recordings {
            Some(late) if item.call.may_get_recording() => {
                self.await_recording(&item.call, late).await?
            }
            _ => {
                let outcome = Outcome::Skipped {
                    reason: SkipReason::NoRecording,
                };
                self.settle_directly(&item.call, outcome).await?
            }
        }
        Ok(None)
    }

    /// A call without a recording yet (the portal may attach it minutes or hours later): it waits in the ledger
    /// for its next check, until the horizon after the ledger first saw it; then it is skipped as `no_recording`.
    async fn await_recording(&self, call: &Call, late: LateRecordings) -> Result<(), EngineError> {
        let Some(claim) = self.claim_or_wait(call).await? else {
            return Ok(());
        };
        let waited = (chrono::Utc::now() - claim.first_seen)
            .to_std()
            .unwrap_or_default();
        let Some(delay) = late.next_check(waited) else {
            let outcome = Outcome::Skipped {
                reason: SkipReason::NoRecording,
            };
            if self.store.finish(&claim, &outcome).await? {
                self.report(call, outcome, Sent::NOTHING);
            }
            return Ok(());
        };
        if self.store.wait_for_recording(&claim, delay).await? {
            tracing::debug!(
                call = call.id,
                ?delay,
                "no recording yet; checking again later"
            );
            self.summary.lock().unwrap().awaiting_recording += 1;
            (self.progress)(&ProgressEvent::AwaitingRecording { call_id: call.id });
        }
        Ok(())
    }

    /// Resolves up to 50 Disk files in one request; returns the calls that now have a URL.
    async fn resolve_disk(&self, batch: Vec<WorkItem>) -> Result<Vec<WorkItem>, EngineError> {
        let ids: Vec<u64> = unique(batch.iter().filter_map(|i| i.call.record_file_id));
        let resolved = match self
            .with_retry("resolving recordings", || self.source.resolve_files(&ids))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if e.class() == ErrorClass::Fatal {
                    self.fail_run(format!("Bitrix24 refused disk.file.get: {e}"));
                    return Ok(Vec::new());
                }
                for item in &batch {
                    let outcome = Outcome::Failed {
                        reason: FailReason::PortalError,
                        detail: e.to_string(),
                    };
                    self.settle_directly(&item.call, outcome).await?;
                }
                return Ok(Vec::new());
            }
        };
        let mut ready = Vec::with_capacity(batch.len());
        for mut item in batch {
            let file_id = item.call.record_file_id.unwrap_or_default();
            match resolved.get(&file_id) {
                Some(Ok(url)) => {
                    item.url = Some(url.clone());
                    item.via_disk = true;
                    item.disk_links += 1;
                    ready.push(item);
                }
                other => {
                    let detail = match other {
                        Some(Err(reason)) => format!("Disk file {file_id}: {reason}"),
                        _ => format!("Disk file {file_id} was not returned by disk.file.get"),
                    };
                    let outcome = Outcome::Failed {
                        reason: FailReason::RecordingUnavailable,
                        detail,
                    };
                    self.settle_directly(&item.call, outcome).await?;
                }
            }
        }
        Ok(ready)
    }

    /// Records an outcome reached without any upload: in one statement when nobody holds the call, else by the
    /// usual claim (which waits for the holder) and commit.
    async fn settle_directly(&self, call: &Call, outcome: Outcome) -> Result<(), EngineError> {
        if self
            .store
            .settle_unheld(&self.config.portal, call.id, &outcome)
            .await?
        {
            self.report(call, outcome, Sent::NOTHING);
            return Ok(());
        }
        if let Some(claim) = self.claim_or_wait(call).await? {
            self.store.finish(&claim, &outcome).await?;
            self.report(call, outcome, Sent::NOTHING);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- workers

    async fn worker(
        self: Arc<Self>,
        work: Arc<tokio::sync::Mutex<mpsc::Receiver<WorkItem>>>,
        feedback: mpsc::UnboundedSender<Feedback>,
    ) {
        loop {
            let item = work.lock().await.recv().await;
            let Some(item) = item else { return };
            let fb = if self.stop.is_cancelled() {
                Feedback::Done
            } else {
                match self.process(item).await {
                    Ok(fb) => fb,
                    Err(e) => {
                        self.fail_run(format!("ledger error: {e}"));
                        Feedback::Done
                    }
                }
            };
            if feedback.send(fb).is_err() {
                return;
            }
        }
    }

    /// Claims one call and drives it to an outcome, holding the call's lease throughout.
    async fn process(&self, mut item: WorkItem) -> Result<Feedback, EngineError> {
        let ahead = match item.claim.take() {
            Some((claim, at)) => self.still_held(claim, at).await?,
            None => None,
        };
        let claim = match ahead {
            Some(claim) => claim,
            None => match self.claim_or_wait(&item.call).await? {
                Some(claim) => claim,
                None => return Ok(Feedback::Done),
            },
        };
        tokio::select! {
            done = self.keep_lease(&claim, self.drive(item, &claim)) => done,
            _ = self.hard.cancelled() => {
                // Dropping the upload resets its stream; a row already `uploading` stays in doubt for the next run.
                if let Err(e) = self.store.release(&claim).await {
                    tracing::warn!(call = claim.call_id, error = %e, "could not release an abandoned call");
                }
                Ok(Feedback::Done)
            }
        }
    }

    /// A claim taken ahead of the workers, renewed first if it has waited long (so that a long wait in the queue
    /// does not leave it to expire mid-upload); `None` when another worker took the call over meanwhile.
    async fn still_held(&self, claim: Claim, at: Instant) -> Result<Option<Claim>, EngineError> {
        if at.elapsed() < self.config.lease / 3 {
            return Ok(Some(claim));
        }
        Ok(self
            .store
            .renew(&claim, self.config.lease)
            .await?
            .then_some(claim))
    }

    async fn drive(&self, item: WorkItem, claim: &Claim) -> Result<Feedback, EngineError> {
        let claim = claim.clone();
        let mut reupload = false;
        if claim.in_doubt {
            match self.find_existing(item.call.id).await {
                Some(Ok(talk_id)) => {
                    let outcome = Outcome::Uploaded {
                        talk_id,
                        mono: false,
                        reuploaded_after_crash: false,
                    };
                    return self
                        .commit(&claim, &item.call, outcome, Sent::NOTHING)
                        .await;
                }
                Some(Err(())) => {}
                None => reupload = true,
            }
        }
        let mut attempt = 1;
        loop {
            let result = self.attempt(&item, &claim, reupload).await;
            let (outcome, sent) = match result {
                Ok(done) => done,
                Err(AttemptError::Final(outcome)) => (outcome, Sent::NOTHING),
                Err(AttemptError::LostLease) => return Ok(Feedback::Done),
                Err(AttemptError::Fallback) => {
                    self.store.release(&claim).await?;
                    let mut item = item;
                    item.url = None;
                    item.via_disk = true;
                    return Ok(Feedback::Fallback(Box::new(item)));
                }
                Err(AttemptError::Fatal(reason)) => {
                    self.fail_run(reason.clone());
                    (
                        Outcome::Failed {
                            reason: FailReason::Interrupted,
                            detail: reason,
                        },
                        Sent::NOTHING,
                    )
                }
                Err(AttemptError::InDoubt { detail }) => {
                    tracing::warn!(call = item.call.id, %detail, "upload in doubt");
                    match self.find_existing_settled(item.call.id).await {
                        Some(Ok(talk_id)) => (
                            Outcome::Uploaded {
                                talk_id,
                                mono: false,
                                reuploaded_after_crash: reupload,
                            },
                            Sent::NOTHING,
                        ),
                        found => {
                            reupload |= found.is_none();
                            if attempt >= self.config.max_attempts || self.stop.is_cancelled() {
                                (
                                    Outcome::Failed {
                                        reason: FailReason::InDoubt,
                                        detail,
                                    },
                                    Sent::NOTHING,
                                )
                            } else {
                                attempt += 1;
                                self.pause(attempt - 1, None).await;
                                continue;
                            }
                        }
                    }
                }
                Err(AttemptError::Retry {
                    reason,
                    after,
                    detail,
                }) => {
                    if attempt >= self.config.max_attempts || self.stop.is_cancelled() {
                        (Outcome::Failed { reason, detail }, Sent::NOTHING)
                    } else {
                        tracing::debug!(call = item.call.id, %detail, attempt, "retrying");
                        self.pause(attempt, after).await;
                        attempt += 1;
                        continue;
                    }
                }
            };
            return self.commit(&claim, &item.call, outcome, sent).await;
        }
    }

    async fn pause(&self, attempt: u32, hint: Option<Duration>) {
        let delay = self.config.backoff.delay(attempt, hint);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.stop.cancelled() => {}
        }
    }

    /// [`Self::find_existing`] for an upload that was in doubt a moment ago: a talk stored just now may not be
    /// searchable yet, so "none found" is asked again a few times over `search_settle` before it is believed.
    async fn find_existing_settled(&self, call_id: u64) -> Option<Result<String, ()>> {
        const TRIES: u32 = 3;
        let mut found = self.find_existing(call_id).await;
        for _ in 1..TRIES {
            if !matches!(found, Some(Err(()))) || self.stop.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.search_settle / (TRIES - 1)) => {}
                _ = self.stop.cancelled() => {}
            }
            found = self.find_existing(call_id).await;
        }
        found
    }

    /// A talk already stored for this call: `Some(Ok(id))` found, `Some(Err(()))` searched and none found,
    /// `None` no search possible (not configured, or it failed).
    async fn find_existing(&self, call_id: u64) -> Option<Result<String, ()>> {
        match self
            .sink
            .find_talks(&self.config.connection_id, call_id)
            .await
        {
            Ok(Some(ids)) => Some(ids.into_iter().next().ok_or(())),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(call = call_id, error = %e, "duplicate check failed");
                None
            }
        }
    }

    async fn commit(
        &self,
        claim: &Claim,
        call: &Call,
        outcome: Outcome,
        sent: Sent,
    ) -> Result<Feedback, EngineError> {
        if !self.store.finish(claim, &outcome).await? {
            tracing::warn!(
                call = call.id,
                "lease was taken over before the commit; the other worker reports this call"
            );
            return Ok(Feedback::Done);
        }
        self.report(call, outcome, sent);
        Ok(Feedback::Done)
    }

    /// One try: download, probe, upload.
    async fn attempt(
        &self,
        item: &WorkItem,
        claim: &Claim,
        reupload: bool,
    ) -> Result<(Outcome, Sent), AttemptError> {
        let call = &item.call;
        let url = item
            .url
            .as_ref()
            .ok_or(AttemptError::Final(Outcome::Skipped {
                reason: SkipReason::NoRecording,
            }))?;
        let recording = self
            .source
            .download(url)
            .await
            .map_err(|e| match e.class() {
                ErrorClass::Permanent
                    if call.record_file_id.is_some() && item.disk_links < MAX_DISK_LINKS =>
                {
                    AttemptError::Fallback
                }
                ErrorClass::Permanent => AttemptError::Final(Outcome::Failed {
                    reason: FailReason::RecordingUnavailable,
                    detail: e.to_string(),
                }),
                ErrorClass::Fatal => AttemptError::Fatal(format!("Bitrix24: {e}")),
                ErrorClass::Retryable { after } => AttemptError::Retry {
                    reason: FailReason::DownloadFailed,
                    after,
                    detail: e.to_string(),
                },
                ErrorClass::InDoubt => AttemptError::Retry {
                    reason: FailReason::DownloadFailed,
                    after: None,
                    detail: e.to_string(),
                },
            })?;
        let content_length = recording.content_length;
        let mut body = recording.bytes;

        // Read just enough of the head to know the container and channels. The first piece nearly always holds the
        // whole header: it is kept as it is, and copied only if more must be appended.
        let mut head = Bytes::new();
        let probe = loop {
            match audio::probe(&head) {
                Ok(p) => break p,
                Err(ProbeError::NeedMore(_)) if head.len() < MAX_PROBE_BYTES => {
                    match body.next().await {
                        Some(Ok(chunk)) if head.is_empty() => head = chunk,
                        Some(Ok(chunk)) => {
                            // Takes the buffer back without a copy once it is this head's alone (from the
                            // second join on), so that many small pieces still cost one copy each.
                            let mut joined = BytesMut::from(std::mem::take(&mut head));
                            joined.extend_from_slice(&chunk);
                            head = joined.freeze();
                        }
                        Some(Err(e)) => {
                            return Err(AttemptError::Retry {
                                reason: FailReason::DownloadFailed,
                                after: None,
                                detail: e,
                            })
                        }
                        None => {
                            let detail = format!(
                                "recording ends after {} bytes, before a complete header",
                                head.len()
                            );
                            return Err(unsupported(detail));
                        }
                    }
                }
                Err(ProbeError::NeedMore(_)) => {
                    return Err(unsupported("no audio header in the first 512 KiB".into()))
                }
                Err(ProbeError::Unsupported(why)) => return Err(unsupported(why)),
            }
        };
        let seconds = probe
            .estimate_seconds(content_length)
            .unwrap_or(0)
            .max(call.recording_seconds());
        if seconds > self.config.max_recording.as_secs() {
            return Err(AttemptError::Final(Outcome::Skipped {
                reason: SkipReason::TooLong,
            }));
        }
        let mono = probe.is_mono();
        let connection_id = match (&self.config.mono_policy, mono) {
            (MonoPolicy::Skip, true) => {
                return Err(AttemptError::Final(Outcome::Skipped {
                    reason: SkipReason::MonoRecording,
                }))
            }
            (MonoPolicy::Route(id), true) => id.clone(),
            _ => self.config.connection_id.clone(),
        };
        let fields = talk_fields(
            call,
            item.operator.as_ref(),
            item.client.as_ref(),
            &self.config.language,
        );

        let sent = Arc::new(AtomicU64::new(0));
        let source_broke = Arc::new(AtomicBool::new(false));
        let gate_closed = Arc::new(Mutex::new(None::<bool>));
        let audio = {
            let sent = sent.clone();
            let broke = source_broke.clone();
            stream::once(async move { Ok::<Bytes, String>(head) })
                .chain(body)
                .inspect(move |r| match r {
                    Ok(b) => {
                        sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => broke.store(true, Ordering::Relaxed),
                })
                .chain(self.fence_gate(claim, gate_closed.clone()))
                .boxed()
        };
        let container = probe.container;
        let upload_started = Instant::now();
        let upload = self
            .sink
            .upload_audio(&connection_id, &fields, container, audio);
        let uploaded = upload.await;
        let gate = *gate_closed.lock().unwrap();
        match uploaded {
            Ok(talk_id) => Ok((
                // `mono` marks a one-channel recording in a two-channel connection (not one routed elsewhere).
                Outcome::Uploaded {
                    talk_id,
                    mono: mono && connection_id == self.config.connection_id,
                    reuploaded_after_crash: reupload,
                },
                Sent {
                    bytes: sent.load(Ordering::Relaxed),
                    took: Some(upload_started.elapsed()),
                },
            )),
            Err(e) => {
                let detail = e.to_string();
                match gate {
                    // Taken over: the stream was abandoned before its end, so nothing was stored.
                    Some(true) => return Err(AttemptError::LostLease),
                    Some(false) => {
                        return Err(AttemptError::Retry {
                            reason: FailReason::UploadFailed,
                            after: None,
                            detail:
                                "the ledger could not confirm the lease before the upload's end"
                                    .into(),
                        })
                    }
                    None => {}
                }
                if source_broke.load(Ordering::Relaxed) {
                    // The download broke mid-way and the upload was abandoned: nothing was stored.
                    return Err(AttemptError::Retry {
                        reason: FailReason::DownloadFailed,
                        after: None,
                        detail,
                    });
                }
                Err(match e.class() {
                    ErrorClass::Retryable { after } => AttemptError::Retry {
                        reason: FailReason::UploadFailed,
                        after,
                        detail,
                    },
                    ErrorClass::Permanent => AttemptError::Final(Outcome::Failed {
                        reason: FailReason::InvalidData,
                        detail,
                    }),
                    ErrorClass::InDoubt => AttemptError::InDoubt { detail },
                    ErrorClass::Fatal => AttemptError::Fatal(format!("SpeechSense: {detail}")),
                })
            }
        }
    }

    /// The end of an upload's audio: marks the call `uploading` (fenced, renewing its lease) right before the stream
    /// ends. The half-close is what makes SpeechSense store the talk, so this is the one moment the ledger must be
    /// written before: a crash earlier leaves nothing stored and nothing in doubt. If the lease was taken over, or
    /// the ledger cannot say, the stream ends in an error instead, which abandons the upload so that nothing is
    /// stored; `closed` tells why (`Some(true)` taken over, `Some(false)` ledger error).
    fn fence_gate(
        &self,
        claim: &Claim,
        closed: Arc<Mutex<Option<bool>>>,
    ) -> impl futures::Stream<Item = Result<Bytes, String>> + Send + 'static {
        let store = self.store.clone();
        let claim = claim.clone();
        let lease = self.config.lease;
        stream::once(async move {
            let why = match store.mark_uploading(&claim, lease).await {
                Ok(true) => return None,
                Ok(false) => {
                    *closed.lock().unwrap() = Some(true);
                    "another worker took this call over".to_string()
                }
                Err(e) => {
                    *closed.lock().unwrap() = Some(false);
                    format!("ledger error before the upload's end: {e}")
                }
            };
            tracing::warn!(call = claim.call_id, %why, "abandoning the upload");
            Some(Err(why))
        })
        .filter_map(|item| async move { item })
    }

    /// Runs `work` while renewing the claim's lease every third of its length, so a long download or upload (a large
    /// recording, a slow network) is not taken over by another worker while it is still running.
    async fn keep_lease<T>(&self, claim: &Claim, work: impl std::future::Future<Output = T>) -> T {
        let every = (self.config.lease / 3).max(Duration::from_millis(100));
        let renew = async {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                match self.store.renew(claim, self.config.lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(call = claim.call_id, "lease lost during the upload");
                        return std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        tracing::warn!(call = claim.call_id, error = %e, "could not renew the lease")
                    }
                }
            }
        };
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => out,
            () = renew => unreachable!("renewal never finishes"),
        }
    }

    /// The next listing page after `after`, announced to the progress callback; `None` when listing failed (the run
    /// is then stopped with the reason).
    async fn next_page(&self, after: u64) -> Option<crate::ports::CallPage> {
        let listed = self
            .with_retry("listing calls", || {
                self.source.list_calls(&self.config.filter, after)
            })
            .await;
        match listed {
            Ok(page) => {
                (self.progress)(&ProgressEvent::Found {
                    n: page.calls.len() as u64,
                });
                Some(page)
            }
            Err(e) => {
                self.fail_run(format!("listing calls from Bitrix24 failed: {e}"));
                None
            }
        }
    }

    // ---------------------------------------------------------------- dry run

    async fn dry_run(&self) -> Result<(), EngineError> {
        let mut totals = DryRunTotals::default();
        let mut after = 0u64;
        let mut found = 0u64;
        loop {
            let Some(page) = self.next_page(after).await else {
                break;
            };
            found += page.calls.len() as u64;
            for call in &page.calls {
                let done = self.store.entry(&self.config.portal, call.id).await?;
                if done.is_some_and(|e| e.state == LedgerState::Uploaded) {
                    totals.already_uploaded += 1;
                } else if !call.has_recording() {
                    totals.without_recording += 1;
                } else {
                    totals.calls += 1;
                    totals.minutes += call.recording_seconds();
                }
            }
            match page.last_id {
                Some(last) if !page.exhausted => after = last,
                _ => break,
            }
        }
        totals.minutes = totals.minutes.div_ceil(60);
        (self.progress)(&ProgressEvent::ListingDone { total: found });
        let mut summary = self.summary.lock().unwrap();
        summary.found = found;
        summary.would_upload = Some(totals);
        Ok(())
    }
}

fn unsupported(detail: String) -> AttemptError {
    AttemptError::Final(Outcome::Failed {
        reason: FailReason::UnsupportedAudio,
        detail,
    })
}

fn unique<T: std::hash::Hash + Eq + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.filter(|i| seen.insert(i.clone())).collect()
}

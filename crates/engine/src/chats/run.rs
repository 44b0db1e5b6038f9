//! One chat run: the lane's lease, then two stages side by side. The reading stage ([`super::reader`]) takes up
//! (continuous sync) the sessions the ledger holds unfinished, then the listing page by page: each page registered
//! in the ledger in one transaction, the CRM names of its finished sessions read in one request, their histories 50
//! per request, each session mapped. The upload stage takes the mapped sessions off a bounded queue and uploads them
//! under the adaptive limit the calls use ([`crate::concurrency`]), each under its lease ([`super::session`]).

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::chat::{ChatSkip, ChatTalk};
use b24sense_store::{PortalLease, Store};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{ChatExportConfig, ChatOutcome, ChatProgressFn, ChatReport, ChatSummary};
use super::ledger::Until;
use super::ports::{ChatSource, TextSink};
use crate::concurrency::AdaptiveLimit;
use crate::holder::{Holder, Liveness};
use crate::ports::Classified;
use crate::EngineError;

/// Sessions read and mapped that may wait for an upload place: two history requests' worth. Together with the
/// uploads in flight and the batch being read, this is all of the histories a run holds at once.
const QUEUE: usize = 2 * super::reader::HISTORY_BATCH;

/// A session's mapping: its talks, or why it is skipped; `Err` when its history could not be read.
pub(super) type Mapped = Result<Result<Vec<ChatTalk>, ChatSkip>, String>;

/// One unit of work for the upload stage.
pub(super) enum Work {
    /// A session still open: recorded as waiting.
    Open(u64),
    /// A finished session, read and mapped.
    Mapped { session_id: u64, mapped: Mapped },
}

pub(super) struct ChatRun<S, K> {
    pub(super) source: Arc<S>,
    pub(super) sink: Arc<K>,
    pub(super) store: Store,
    pub(super) config: ChatExportConfig,
    progress: ChatProgressFn,
    pub(super) stop: CancellationToken,
    /// Uploads in flight (one place per session, held from its claim to its verdict).
    pub(super) limit: AdaptiveLimit,
    fatal: Mutex<Option<String>>,
    pub(super) summary: Mutex<ChatSummary>,
    /// Claims made so far: each claim's lease owner is [`b24sense_store::claim_owner`] of the worker ID and this.
    pub(super) claims: AtomicU64,
    /// Since when the ledger refuses operations (`None`: it takes them), see [`super::ledger`].
    pub(super) ledger_down_since: Mutex<Option<Instant>>,
    /// Sessions this run took up again by ID (continuous sync): the listing skips them when it reaches them, so
    /// that each session is handled and reported once per run.
    pub(super) taken_up: Mutex<HashSet<u64>>,
}

/// Exports the finished Open Lines sessions `config` selects to its SpeechSense chat connection, each once: to
/// completion, or until `shutdown` (uploads in flight finish; they are unary and short).
///
/// A fatal error of either service (a wrong key, a connection of the wrong kind, a listing the portal refuses)
/// ends the run with `Ok(summary)` where [`ChatSummary::fatal`] is set and [`ChatSummary::stopped`] says why;
/// `Err` is for invalid settings and a ledger that cannot be read or written.
///
/// It may run beside [`crate::run_export`] in one process, with the same Bitrix24 client: both then draw from
/// the client's one request bucket. Chat runs hold a lease of their own on the portal ([`ChatExportConfig::lane`]).
pub async fn run_chat_export<S: ChatSource, K: TextSink>(
    source: Arc<S>,
    sink: Arc<K>,
    store: Store,
    config: ChatExportConfig,
    progress: ChatProgressFn,
    shutdown: CancellationToken,
) -> Result<ChatSummary, EngineError> {
    config
        .filter
        .validate()
        .map_err(|e| EngineError::Config(e.to_string()))?;
    if config.connection_id.trim().is_empty() {
        return Err(EngineError::Config(
            "chat_connection_id: must not be empty".into(),
        ));
    }
    config.concurrency.validate().map_err(EngineError::Config)?;
    if config.max_attempts == 0 {
        return Err(EngineError::Config(
            "max_attempts: must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let run = Arc::new(ChatRun {
        source,
        sink,
        store,
        limit: AdaptiveLimit::new(config.concurrency),
        config,
        progress,
        stop: shutdown.child_token(),
        fatal: Mutex::new(None),
        summary: Mutex::new(ChatSummary::default()),
        claims: AtomicU64::new(0),
        ledger_down_since: Mutex::new(None),
        taken_up: Mutex::new(HashSet::new()),
    });
    let result = if run.config.dry_run {
        run.export().await
    } else if let Some(lease) = run.acquire_lane().await? {
        let held = CancellationToken::new();
        let holder = tokio::spawn(run.clone().hold_lane(lease.clone(), held.clone()));
        let result = run.export().await;
        // Every claim of this run (`<worker_id>/<n>`) that is still held.
        let owner = &run.config.worker_id;
        if let Err(e) = run
            .store
            .release_held_chats(&run.config.portal, owner)
            .await
        {
            tracing::warn!(error = %e, "could not release the sessions this run held; their leases expire");
        }
        held.cancel();
        let _ = holder.await;
        if let Err(e) = run.store.release_portal(&lease).await {
            tracing::warn!(error = %e, "could not release the chat lane; its lease expires by itself");
        }
        result
    } else {
        Ok(())
    };
    result?;
    let mut summary = std::mem::take(&mut *run.summary.lock().unwrap());
    summary.wall_time = started.elapsed();
    summary.concurrency = run.limit.trace();
    if let Some(reason) = run.fatal.lock().unwrap().clone() {
        summary.stopped = Some(reason);
        summary.fatal = true;
    } else if shutdown.is_cancelled() {
        summary.stopped = Some("shutdown requested".into());
    }
    Ok(summary)
}

impl<S: ChatSource, K: TextSink> ChatRun<S, K> {
    /// The reading stage ([`super::reader`]: listing, CRM names, histories, mapping) and the upload stage side by
    /// side, a bounded queue between them: uploads overlap the next history reads, and at most [`QUEUE`] read
    /// sessions wait. The first ledger error of either stops both (uploads in flight finish).
    async fn export(&self) -> Result<(), EngineError> {
        let (tx, rx) = mpsc::channel::<Work>(QUEUE);
        let read = async move {
            let r = self.read_all(&tx).await;
            if r.is_err() {
                self.stop.cancel();
            }
            r
        };
        let (read, upload) = tokio::join!(read, self.upload_all(rx));
        read.and(upload)
    }

    /// Takes work off the queue as places free up under the limit on uploads in flight, until the reading stage is
    /// done and everything taken has settled.
    async fn upload_all(&self, mut rx: mpsc::Receiver<Work>) -> Result<(), EngineError> {
        let mut running = FuturesUnordered::new();
        let mut failed: Option<EngineError> = None;
        loop {
            tokio::select! {
                biased;
                Some(done) = running.next(), if !running.is_empty() => {
                    if let Err(e) = done {
                        self.stop.cancel();
                        failed.get_or_insert(e);
                    }
                }
                next = async { (self.limit.acquire().await, rx.recv().await) } => match next {
                    (place, Some(work)) => running.push(async move {
                        let _place = place;
                        self.take(work).await
                    }),
                    (_, None) => break,
                },
            }
        }
        while let Some(done) = running.next().await {
            if let Err(e) = done {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn take(&self, work: Work) -> Result<(), EngineError> {
        match work {
            Work::Open(session_id) => self.wait_open(session_id).await,
            Work::Mapped { session_id, mapped } => self.take_session(session_id, mapped).await,
        }
    }

    /// An open session: recorded as waiting (`session_open`) without reading its history.
    async fn wait_open(&self, session_id: u64) -> Result<(), EngineError> {
        if self.stop.is_cancelled() {
            return Ok(());
        }
        let reason = "session_open".to_string();
        if !self.config.dry_run {
            let Some(claim) = self.claim_or_wait(session_id).await? else {
                return Ok(());
            };
            let verdict = b24sense_store::ChatVerdict::Waiting { reason: &reason };
            let done = self
                .ledger(Until::GiveUp, || self.store.finish_chat(&claim, verdict))
                .await?;
            if !done {
                self.summary.lock().unwrap().unsettled += 1;
                return Ok(());
            }
        }
        self.report(session_id, ChatOutcome::Waiting { reason }, 0);
        Ok(())
    }

    /// One finished session, mapped: uploaded (or its skip or failure recorded); in a dry run, reported as it would
    /// go.
    async fn take_session(&self, session_id: u64, mapped: Mapped) -> Result<(), EngineError> {
        if self.stop.is_cancelled() {
            return Ok(());
        }
        if self.config.dry_run {
            let outcome = match mapped {
                Ok(Ok(talks)) => {
                    let n: usize = talks.iter().map(|t| t.messages.len()).sum();
                    let parts = talks.len() as u32;
                    self.report(session_id, ChatOutcome::WouldUpload { parts }, n as u64);
                    return Ok(());
                }
                Ok(Err(skip)) => skip_outcome(skip.reason.as_str()),
                Err(detail) => ChatOutcome::Failed {
                    reason: "portal_error".into(),
                    detail,
                },
            };
            self.report(session_id, outcome, 0);
            return Ok(());
        }
        let Some(claim) = self.claim_or_wait(session_id).await? else {
            return Ok(());
        };
        self.drive(claim, mapped).await
    }

    pub(super) fn report(&self, session_id: u64, outcome: ChatOutcome, messages: u64) {
        let report = ChatReport {
            session_id,
            outcome,
            messages,
        };
        self.summary.lock().unwrap().record(&report);
        (self.progress)(&report);
    }

    pub(super) fn count_found(&self) {
        self.summary.lock().unwrap().found_by_search += 1;
    }

    pub(super) fn count_unsettled(&self) {
        self.summary.lock().unwrap().unsettled += 1;
    }

    pub(super) fn fail_run(&self, reason: String) {
        let mut fatal = self.fatal.lock().unwrap();
        if fatal.is_none() {
            tracing::error!(%reason, "stopping the chat export");
            *fatal = Some(reason);
        }
        self.stop.cancel();
    }

    /// Retries a portal operation that failed with a retryable error ([`crate::retry::retry`], as calls do).
    pub(super) async fn with_retry<T, E: Classified, F, Fut>(
        &self,
        what: &str,
        op: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let c = &self.config;
        crate::retry::retry(what, &c.backoff, c.max_attempts, &self.stop, op).await
    }

    pub(super) async fn pause(&self, attempt: u32, hint: Option<Duration>) {
        let delay = self.config.backoff.delay(attempt, hint);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.stop.cancelled() => {}
        }
    }

    /// Waits (polling) until this run holds the portal's chat lane; `None` when shut down while waiting. A lane
    /// whose holder is a dead process on this machine is taken over at once.
    async fn acquire_lane(&self) -> Result<Option<PortalLease>, EngineError> {
        let lane = self.config.lane();
        let me = self.config.holder.as_ref().map(Holder::to_string);
        let (owner, span) = (&self.config.worker_id, self.config.portal_lease);
        // The lane is claimed before any session: a ledger that refuses it ends the run here, nothing uploaded.
        loop {
            if let Some(l) = self
                .store
                .claim_portal(&lane, owner, me.as_deref(), span)
                .await?
            {
                return Ok(Some(l));
            }
            if let (Some(here), Some(current)) =
                (&self.config.holder, self.store.portal_holder(&lane).await?)
            {
                let dead = current.holder.as_deref().and_then(Holder::parse);
                if dead.is_some_and(|d| d.liveness(here) == Liveness::Gone) {
                    let taken = self
                        .store
                        .take_over_portal(&lane, &current, owner, me.as_deref(), span)
                        .await?;
                    if let Some(l) = taken {
                        self.store
                            .release_held_chats(&self.config.portal, &current.owner)
                            .await?;
                        return Ok(Some(l));
                    }
                }
            }
            tracing::info!(lane = %lane, "another process exports this portal's chats; waiting for its lease");
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = self.stop.cancelled() => return Ok(None),
            }
        }
    }

    /// Renews the lane's lease every sixth of its length until `done`; losing it stops the run.
    async fn hold_lane(self: Arc<Self>, lease: PortalLease, done: CancellationToken) {
        let every = (self.config.portal_lease / 6).max(Duration::from_millis(50));
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
                Ok(true) => {}
                Ok(false) => {
                    self.fail_run("another replica took this portal's chats over".into());
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the chat lane's lease"),
            }
        }
    }
}

/// The outcome of a mapping skip: an open session waits, the rest are skipped.
pub(super) fn skip_outcome(reason: &str) -> ChatOutcome {
    match reason {
        "session_open" => ChatOutcome::Waiting {
            reason: reason.into(),
        },
        _ => ChatOutcome::Skipped {
            reason: reason.into(),
        },
    }
}

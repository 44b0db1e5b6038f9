//! One chat run: the lane's lease, then (continuous sync) the sessions the ledger holds unfinished, then the
//! listing page by page; each page is registered in the ledger in one transaction, its finished sessions' histories
//! read 50 per request, and the sessions uploaded a few at a time ([`super::session`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::chat::{chat_talks, session_crm, ChatActivity, ChatSession};
use b24sense_core::{CrmInfo, CrmRef, ErrorClass, LedgerState};
use b24sense_store::{ListedSession, PortalLease, Store};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::config::{ChatExportConfig, ChatOutcome, ChatProgressFn, ChatReport, ChatSummary};
use super::ports::{ChatSource, SessionPage, TextSink};
use crate::holder::{Holder, Liveness};
use crate::ports::Classified;
use crate::EngineError;

/// Histories per request (the portal's batch limit).
pub(super) const HISTORY_BATCH: usize = 50;
/// Unfinished ledger rows read per page, and activities read again by ID per request (50 × 50).
const UNFINISHED_PAGE: u32 = 2_500;

pub(super) struct ChatRun<S, K> {
    pub(super) source: Arc<S>,
    pub(super) sink: Arc<K>,
    pub(super) store: Store,
    pub(super) config: ChatExportConfig,
    progress: ChatProgressFn,
    pub(super) stop: CancellationToken,
    fatal: Mutex<Option<String>>,
    summary: Mutex<ChatSummary>,
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
    if config.concurrency == 0 || config.max_attempts == 0 {
        return Err(EngineError::Config(
            "concurrency and max_attempts: must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let run = Arc::new(ChatRun {
        source,
        sink,
        store,
        config,
        progress,
        stop: shutdown.child_token(),
        fatal: Mutex::new(None),
        summary: Mutex::new(ChatSummary::default()),
    });
    let result = if run.config.dry_run {
        run.export().await
    } else if let Some(lease) = run.acquire_lane().await? {
        let held = CancellationToken::new();
        let holder = tokio::spawn(run.clone().hold_lane(lease.clone(), held.clone()));
        let result = run.export().await;
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
    if let Some(reason) = run.fatal.lock().unwrap().clone() {
        summary.stopped = Some(reason);
        summary.fatal = true;
    } else if shutdown.is_cancelled() {
        summary.stopped = Some("shutdown requested".into());
    }
    Ok(summary)
}

impl<S: ChatSource, K: TextSink> ChatRun<S, K> {
    async fn export(&self) -> Result<(), EngineError> {
        if self.config.incremental && !self.config.dry_run {
            self.take_up_unfinished().await?;
        }
        let key = self.config.cursor_key();
        let mut after = match self.config.incremental {
            true => self
                .store
                .cursor(&self.config.portal, &key)
                .await?
                .unwrap_or(0),
            false => 0,
        };
        let mut filter = self.config.filter.clone();
        filter.include_open = true;
        while !self.stop.is_cancelled() {
            let page = self
                .with_retry("listing Open Lines sessions", || {
                    self.source.list_sessions(&filter, after)
                })
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    self.fail_run(format!("Bitrix24: listing Open Lines sessions: {e}"));
                    break;
                }
            };
            let next = page.last_id.unwrap_or(after);
            let exhausted = page.exhausted || next <= after;
            self.take_page(page).await?;
            if self.stop.is_cancelled() {
                break;
            }
            after = next;
            if self.config.incremental && !self.config.dry_run {
                self.store
                    .set_cursor(&self.config.portal, &key, after)
                    .await?;
            }
            if exhausted {
                break;
            }
        }
        Ok(())
    }

    /// Continuous sync: the sessions the ledger holds `pending` (open ones waiting to close, released ones) or
    /// `uploading` (in doubt), read again by activity ID and taken through like listed ones.
    async fn take_up_unfinished(&self) -> Result<(), EngineError> {
        let states = [LedgerState::Pending, LedgerState::Uploading];
        let mut after = 0;
        loop {
            let rows = self
                .store
                .chat_entries(&self.config.portal, &states, after, UNFINISHED_PAGE)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.session_id;
            let ids: Vec<u64> = rows.iter().map(|r| r.activity_id).collect();
            match self
                .with_retry("reading sessions again", || {
                    self.source.sessions_by_id(&ids)
                })
                .await
            {
                Ok(page) => self.take_page(page).await?,
                Err(e) => {
                    self.fail_run(format!("Bitrix24: reading Open Lines sessions again: {e}"));
                    break;
                }
            }
            if rows.len() < UNFINISHED_PAGE as usize || self.stop.is_cancelled() {
                break;
            }
        }
        Ok(())
    }

    /// One page: registered in one transaction; uploaded rows reported, open sessions recorded as waiting, the
    /// others read 50 histories per request and uploaded.
    async fn take_page(&self, page: SessionPage) -> Result<(), EngineError> {
        {
            let mut s = self.summary.lock().unwrap();
            s.listed += page.sessions.len() as u64;
            s.bad_rows.extend(page.bad_rows);
        }
        let sessions = page.sessions;
        let entries = if self.config.dry_run {
            vec![None; sessions.len()]
        } else {
            let listed: Vec<ListedSession> = sessions
                .iter()
                .map(|a| ListedSession {
                    session_id: a.session_id,
                    activity_id: a.activity_id,
                })
                .collect();
            let rows = self
                .store
                .register_chats(&self.config.portal, &listed)
                .await?;
            rows.into_iter().map(Some).collect()
        };
        let mut closed = Vec::new();
        for (activity, entry) in sessions.into_iter().zip(entries) {
            if entry.is_some_and(|e| e.state == LedgerState::Uploaded) {
                self.report(activity.session_id, ChatOutcome::AlreadyUploaded, 0);
            } else if !activity.completed {
                self.wait_open(&activity).await?;
            } else {
                closed.push(activity);
            }
        }
        for batch in closed.chunks(HISTORY_BATCH) {
            if self.stop.is_cancelled() {
                break;
            }
            self.take_batch(batch).await?;
        }
        Ok(())
    }

    /// An open session: recorded as waiting (`session_open`) without reading its history.
    async fn wait_open(&self, activity: &ChatActivity) -> Result<(), EngineError> {
        let reason = "session_open".to_string();
        if !self.config.dry_run {
            let Some(claim) = self.claim_or_wait(activity.session_id).await? else {
                return Ok(());
            };
            let verdict = b24sense_store::ChatVerdict::Waiting { reason: &reason };
            if !self.store.finish_chat(&claim, verdict).await? {
                self.summary.lock().unwrap().unsettled += 1;
                return Ok(());
            }
        }
        self.report(activity.session_id, ChatOutcome::Waiting { reason }, 0);
        Ok(())
    }

    /// Up to 50 finished sessions: their histories in one request, their CRM names in one more, then uploaded a
    /// few at a time.
    async fn take_batch(&self, batch: &[ChatActivity]) -> Result<(), EngineError> {
        let histories = match self
            .with_retry("reading session histories", || self.source.histories(batch))
            .await
        {
            Ok(h) => h,
            Err(e) if matches!(e.class(), ErrorClass::Fatal) => {
                self.fail_run(format!("Bitrix24: reading session histories: {e}"));
                return Ok(());
            }
            Err(e) => {
                let detail = e.to_string();
                BTreeMap::from_iter(batch.iter().map(|a| (a.session_id, Err(detail.clone()))))
            }
        };
        let crm: Vec<CrmRef> = histories
            .values()
            .filter_map(|h| h.as_ref().ok().and_then(session_crm))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: HashMap<CrmRef, CrmInfo> = if crm.is_empty() {
            HashMap::new()
        } else {
            // Names are a nicety: without them the client's name comes from the chat.
            self.with_retry("looking up CRM names", || self.source.crm_names(&crm))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "CRM names could not be read; using the chat's");
                    HashMap::new()
                })
        };
        let mut histories = histories;
        let work: Vec<(u64, Result<ChatSession, String>)> = batch
            .iter()
            .map(|a| {
                let h = histories
                    .remove(&a.session_id)
                    .unwrap_or_else(|| Err("the portal returned no history".into()));
                (a.session_id, h)
            })
            .collect();
        let results: Vec<Result<(), EngineError>> = futures::stream::iter(work)
            .map(|(id, history)| {
                let client = history
                    .as_ref()
                    .ok()
                    .and_then(session_crm)
                    .and_then(|r| names.get(&r));
                self.take_session(id, history, client)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// One session: mapped, then uploaded (or its skip or failure recorded).
    async fn take_session(
        &self,
        session_id: u64,
        history: Result<ChatSession, String>,
        client: Option<&CrmInfo>,
    ) -> Result<(), EngineError> {
        if self.stop.is_cancelled() {
            return Ok(());
        }
        let mapped = history.map(|s| chat_talks(&s, None, client, &self.config.options));
        if self.config.dry_run {
            let outcome = match mapped {
                Ok(Ok(talks)) => {
                    let n: usize = talks.iter().map(|t| t.messages.len()).sum();
                    let mut s = self.summary.lock().unwrap();
                    s.would_upload += 1;
                    s.messages += n as u64;
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

    /// Retries a portal operation that failed with a retryable error.
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
                        tracing::warn!(error = %e, attempt, "{what} failed; retrying");
                        self.pause(attempt, after).await;
                        attempt += 1;
                    }
                    _ => return Err(e),
                },
            }
        }
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

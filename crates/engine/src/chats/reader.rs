//! The reading stage of a chat run: what the portal must be asked, in as few requests as its API allows.
//!
//! Per listing request (≤ 2,500 session activities): the page registered in the ledger in one transaction; the CRM
//! names of its finished sessions read in **one** request — each activity names its CRM owner (`OWNER_TYPE_ID`,
//! `OWNER_ID`), so the records are known before any history is read, deduplicated, up to 2,500 per request; then
//! the histories, 50 sessions per request, each session mapped as soon as its batch arrives and handed to the
//! upload stage. A history that names a CRM record its activity did not (an activity without an owner) costs one
//! more look-up for its batch, only for records not asked yet. So a run takes ⌈listed / 2,500⌉ listing requests,
//! as many name requests, and ⌈finished / 50⌉ history requests: about one request per 50 sessions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use b24sense_core::chat::{chat_talks, session_crm, ChatActivity, ChatSession};
use b24sense_core::{CrmInfo, CrmRef, ErrorClass, LedgerState};
use b24sense_store::ListedSession;
use tokio::sync::mpsc;

use super::config::ChatOutcome;
use super::ledger::Until;
use super::ports::{ChatSource, SessionPage, TextSink};
use super::run::{ChatRun, Work};
use crate::ports::Classified;
use crate::EngineError;

/// Histories per request (the portal's batch limit).
pub(super) const HISTORY_BATCH: usize = 50;
/// Unfinished ledger rows read per page, and activities read again by ID per request (50 × 50).
const UNFINISHED_PAGE: u32 = 2_500;

/// The CRM names of one listing page: those found, and every record asked for (found or not: a deleted record is
/// not asked again).
#[derive(Default)]
struct PageNames {
    found: HashMap<CrmRef, CrmInfo>,
    asked: BTreeSet<CrmRef>,
}

/// Whether the reading stage goes on: the upload stage may have stopped taking work.
enum Flow {
    Go,
    Stop,
}

impl<S: ChatSource, K: TextSink> ChatRun<S, K> {
    /// The whole reading stage; the queue closes when it returns.
    pub(super) async fn read_all(&self, tx: &mpsc::Sender<Work>) -> Result<(), EngineError> {
        if self.config.incremental && !self.config.dry_run {
            if let Flow::Stop = self.take_up_unfinished(tx).await? {
                return Ok(());
            }
        }
        let key = self.config.cursor_key();
        let portal = &self.config.portal;
        let mut after = match self.config.incremental {
            true => self
                .ledger(Until::Stop, || self.store.cursor(portal, &key))
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
            let mut page = page;
            let next = page.last_id.unwrap_or(after);
            let exhausted = page.exhausted || next <= after;
            {
                // Sessions taken up by ID at the start of this run are handled (and reported) already.
                let taken = self.taken_up.lock().unwrap();
                if !taken.is_empty() {
                    page.sessions.retain(|a| !taken.contains(&a.session_id));
                }
            }
            let flow = self.take_page(page, tx).await?;
            if self.stop.is_cancelled() || matches!(flow, Flow::Stop) {
                break;
            }
            after = next;
            // Every session of the page is in the ledger now (uploaded or not yet: `pending` rows, open ones
            // waiting among them): an incremental run takes those up by ID, so the mark may move past them. A
            // full run moves it too, so that the next incremental run lists only sessions after it.
            if !self.config.dry_run {
                self.ledger(Until::Stop, || self.store.set_cursor(portal, &key, after))
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
    async fn take_up_unfinished(&self, tx: &mpsc::Sender<Work>) -> Result<Flow, EngineError> {
        let states = [LedgerState::Pending, LedgerState::Uploading];
        let mut after = 0;
        loop {
            let rows = self
                .ledger(Until::Stop, || {
                    self.store
                        .chat_entries(&self.config.portal, &states, after, UNFINISHED_PAGE)
                })
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
                Ok(page) => {
                    self.taken_up
                        .lock()
                        .unwrap()
                        .extend(page.sessions.iter().map(|a| a.session_id));
                    if let Flow::Stop = self.take_page(page, tx).await? {
                        return Ok(Flow::Stop);
                    }
                }
                Err(e) => {
                    self.fail_run(format!("Bitrix24: reading Open Lines sessions again: {e}"));
                    break;
                }
            }
            if rows.len() < UNFINISHED_PAGE as usize || self.stop.is_cancelled() {
                break;
            }
        }
        Ok(Flow::Go)
    }

    /// One page: registered in one transaction; uploaded rows reported, open sessions queued to be recorded as
    /// waiting, the CRM names of the others read in one request, then their histories 50 per request, mapped and
    /// queued.
    async fn take_page(
        &self,
        page: SessionPage,
        tx: &mpsc::Sender<Work>,
    ) -> Result<Flow, EngineError> {
        {
            let mut s = self.summary.lock().unwrap();
            s.listed += page.sessions.len() as u64;
            s.bad_rows.extend(page.bad_rows);
        }
        let sessions = page.sessions;
        let portal = &self.config.portal;
        let entries = if self.config.dry_run {
            // Read only: a dry run writes nothing, but says which sessions are uploaded already.
            let ids: Vec<u64> = sessions.iter().map(|a| a.session_id).collect();
            self.ledger(Until::Stop, || self.store.chat_entries_of(portal, &ids))
                .await?
        } else {
            let listed: Vec<ListedSession> = sessions
                .iter()
                .map(|a| ListedSession {
                    session_id: a.session_id,
                    activity_id: a.activity_id,
                })
                .collect();
            let rows = self
                .ledger(Until::Stop, || self.store.register_chats(portal, &listed))
                .await?;
            rows.into_iter().map(Some).collect()
        };
        let mut closed = Vec::new();
        for (activity, entry) in sessions.into_iter().zip(entries) {
            if entry.is_some_and(|e| e.state == LedgerState::Uploaded) {
                self.report(activity.session_id, ChatOutcome::AlreadyUploaded, 0);
            } else if !activity.completed {
                if tx.send(Work::Open(activity.session_id)).await.is_err() {
                    return Ok(Flow::Stop);
                }
            } else {
                closed.push(activity);
            }
        }
        if closed.is_empty() || self.stop.is_cancelled() {
            return Ok(Flow::Go);
        }
        let mut names = PageNames::default();
        let owners: BTreeSet<CrmRef> = closed.iter().filter_map(|a| a.crm.clone()).collect();
        self.look_up(&mut names, owners).await;
        for batch in closed.chunks(HISTORY_BATCH) {
            if self.stop.is_cancelled() {
                break;
            }
            for work in self.read_batch(batch, &mut names).await {
                if tx.send(work).await.is_err() {
                    return Ok(Flow::Stop);
                }
            }
        }
        Ok(Flow::Go)
    }

    /// Reads the names of the records in `refs` not asked yet, in one request (2,500 records per request); a
    /// failure leaves them unknown (names are a nicety: without them the client's name comes from the chat).
    async fn look_up(&self, names: &mut PageNames, refs: BTreeSet<CrmRef>) {
        let ask: Vec<CrmRef> = refs
            .into_iter()
            .filter(|r| !names.asked.contains(r))
            .collect();
        if ask.is_empty() {
            return;
        }
        names.asked.extend(ask.iter().cloned());
        match self
            .with_retry("looking up CRM names", || self.source.crm_names(&ask))
            .await
        {
            Ok(found) => names.found.extend(found),
            Err(e) => tracing::warn!(error = %e, "CRM names could not be read; using the chat's"),
        }
    }

    /// Up to 50 finished sessions: their histories in one request, each mapped with its CRM record's name.
    async fn read_batch(&self, batch: &[ChatActivity], names: &mut PageNames) -> Vec<Work> {
        let histories = match self
            .with_retry("reading session histories", || self.source.histories(batch))
            .await
        {
            Ok(h) => h,
            Err(e) if matches!(e.class(), ErrorClass::Fatal) => {
                self.fail_run(format!("Bitrix24: reading session histories: {e}"));
                return Vec::new();
            }
            Err(e) => {
                let detail = e.to_string();
                BTreeMap::from_iter(batch.iter().map(|a| (a.session_id, Err(detail.clone()))))
            }
        };
        // Records only a history names (its activity had no owner): one more look-up, for those not asked yet.
        let late: BTreeSet<CrmRef> = histories
            .values()
            .filter_map(|h| h.as_ref().ok())
            .filter(|s| s.activity.crm.is_none())
            .filter_map(session_crm)
            .collect();
        self.look_up(names, late).await;
        let mut histories = histories;
        batch
            .iter()
            .map(|a| {
                let history: Result<ChatSession, String> = histories
                    .remove(&a.session_id)
                    .unwrap_or_else(|| Err("the portal returned no history".into()));
                let mapped = history.map(|s| {
                    let client = session_crm(&s).and_then(|r| names.found.get(&r));
                    chat_talks(&s, None, client, &self.config.options)
                });
                Work::Mapped {
                    session_id: a.session_id,
                    mapped,
                }
            })
            .collect()
    }
}

//! The lister: pages through the call history (or, in continuous sync, reads the ledger's due calls again), writes
//! new calls to the ledger as `pending`, looks up their names in one batch per page, and hands them on.

use std::collections::HashSet;

use b24sense_core::{Call, CrmRef, FailReason, LedgerState, Outcome, SkipReason};
use tokio::sync::mpsc;

use super::guard::Until;
use super::{unique, Run, Sent, WorkItem};
use crate::ports::{CallPage, CallSource, Names, TalkSink};
use crate::report::ProgressEvent;
use crate::EngineError;

impl<S: CallSource, K: TalkSink> Run<S, K> {
    pub(super) async fn lister(&self, input: mpsc::Sender<WorkItem>) -> Result<(), EngineError> {
        let portal = self.config.portal.clone();
        let cursor_key = serde_json::to_string(&self.config.filter).unwrap_or_default();
        let mut names = Names::default();
        let mut after = 0u64;
        let mut total = 0u64;
        if self.config.incremental {
            let mark = self
                .ledger_op(Until::Stop, || self.store.cursor(&portal, &cursor_key))
                .await?;
            if let Some(mark) = mark {
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
                self.ledger_op(Until::Stop, || {
                    self.store.set_cursor(&portal, &cursor_key, last)
                })
                .await?;
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
                .ledger_op(Until::Stop, || {
                    self.store.due(&self.config.portal, after, mark, DUE_PAGE)
                })
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
        let entries = self
            .ledger_op(Until::Stop, || {
                self.store.register(&self.config.portal, &calls)
            })
            .await?;
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

    /// The next listing page after `after`, announced to the progress callback; `None` when listing failed (the run
    /// is then stopped with the reason).
    pub(super) async fn next_page(&self, after: u64) -> Option<CallPage> {
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
}

//! The resolver: passes calls with a direct recording URL on, gathers Disk-only ones into `disk.file.get` batches of
//! 50, settles calls without a recording, and claims the calls it hands to the workers, a worker's worth per
//! statement.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use b24sense_core::{Call, ErrorClass, FailReason, Outcome, SkipReason};
use b24sense_store::Claim;
use tokio::sync::mpsc;
use url::Url;

use super::guard::Until;
use super::{unique, Feedback, Run, Sent, WorkItem, DISK_BATCH};
use crate::config::LateRecordings;
use crate::ports::{CallSource, Classified, TalkSink};
use crate::report::ProgressEvent;
use crate::EngineError;

/// Where [`Run::route`] sent a call.
enum Route {
    /// To a worker: its recording's URL is known.
    Ready(WorkItem),
    /// Kept: for the next Disk batch, or waiting in the ledger for its recording.
    Held,
    /// To be skipped: no recording and none to wait for.
    Unrecorded(WorkItem),
}

impl<S: CallSource, K: TalkSink> Run<S, K> {
    pub(super) async fn resolver(
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
                        // Take what else is queued (up to a worker each) so that one ledger statement claims it all,
                        // and one settles the calls without a recording among them.
                        let mut ready = Vec::new();
                        let mut unrecorded = Vec::new();
                        let mut next = Some(item);
                        while let Some(item) = next.take() {
                            match self.route(item, &mut via_disk).await? {
                                Route::Ready(item) => ready.push(item),
                                Route::Unrecorded(item) => unrecorded.push(item.call),
                                Route::Held => {}
                            }
                            if ready.len() < self.workers() {
                                next = input.try_recv().ok();
                            }
                        }
                        self.skip_unrecorded(&unrecorded).await?;
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

    /// A worker's worth: as many calls as may be in flight now.
    fn workers(&self) -> usize {
        self.limit.current().max(1)
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
            let owner = self.claim_owner();
            let claims = self
                .ledger_op(Until::Stop, || {
                    self.store
                        .claim_many(&self.config.portal, &ids, &owner, self.config.lease)
                })
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

    /// Sends a call with a direct URL on; keeps a Disk-only call for the next batch; hands back a call with no
    /// recording to be skipped, or lets it wait for its recording (continuous sync).
    async fn route(
        &self,
        mut item: WorkItem,
        via_disk: &mut Vec<WorkItem>,
    ) -> Result<Route, EngineError> {
        if let Some(url) = item
            .call
            .call_record_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
        {
            item.url = Some(url);
            return Ok(Route::Ready(item));
        }
        if item.call.record_file_id.is_some() {
            via_disk.push(item);
            return Ok(Route::Held);
        }
        match self.config.await_recordings {
            Some(late) if item.call.may_get_recording() => {
                self.await_recording(&item.call, late).await?;
                Ok(Route::Held)
            }
            _ => Ok(Route::Unrecorded(item)),
        }
    }

    /// Skips calls without a recording as `no_recording`, all at once: their settlements coincide and reach the
    /// ledger as one statement (a listing page of them used to cost a statement each). Each settlement runs to its
    /// end and is reported, even when another one fails; then the first error is the run's.
    async fn skip_unrecorded(&self, calls: &[Call]) -> Result<(), EngineError> {
        let skip = || Outcome::Skipped {
            reason: SkipReason::NoRecording,
        };
        futures::future::join_all(calls.iter().map(|call| self.settle_directly(call, skip())))
            .await
            .into_iter()
            .collect()
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
            self.commit(&claim, call, outcome, Sent::NOTHING).await?;
            return Ok(());
        };
        let waiting = self
            .ledger_op(Until::Stop, || self.store.wait_for_recording(&claim, delay))
            .await?;
        if waiting {
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
    /// usual claim (which waits for the holder) and fenced commit.
    pub(super) async fn settle_directly(
        &self,
        call: &Call,
        outcome: Outcome,
    ) -> Result<(), EngineError> {
        let settled = self
            .ledger_op(Until::Stop, || {
                self.store
                    .settle_unheld(&self.config.portal, call.id, &outcome)
            })
            .await?;
        if settled {
            self.report(call, outcome, Sent::NOTHING);
            return Ok(());
        }
        if let Some(claim) = self.claim_or_wait(call).await? {
            // Fenced like any commit: a call taken over meanwhile is the new holder's to report.
            self.commit(&claim, call, outcome, Sent::NOTHING).await?;
        }
        Ok(())
    }
}

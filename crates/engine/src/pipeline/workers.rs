//! The workers: each takes a place under the run's limit, then a claimed call, drives it to an outcome through
//! retries and the in-doubt rule (one try is in `attempt`, and each try is a sample for the limit), and commits the
//! outcome, fenced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use b24sense_core::{Call, FailReason, Outcome};
use b24sense_store::Claim;
use tokio::sync::mpsc;

use super::guard::Until;
use super::{AttemptError, Feedback, Run, Sent, WorkItem};
use crate::concurrency::{Load, Sample};
use crate::ports::{CallSource, TalkSink};
use crate::EngineError;

impl<S: CallSource, K: TalkSink> Run<S, K> {
    pub(super) async fn worker(
        self: Arc<Self>,
        work: Arc<tokio::sync::Mutex<mpsc::Receiver<WorkItem>>>,
        feedback: mpsc::UnboundedSender<Feedback>,
    ) {
        loop {
            // The place first: a call is taken off the queue only when it may start at once.
            let _place = self.limit.acquire().await;
            let item = work.lock().await.recv().await;
            let Some(item) = item else { return };
            // While the ledger refuses writes, no new call is started.
            let fb = if self.stop.is_cancelled() || !self.wait_ledger_up().await {
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

    async fn drive(&self, item: WorkItem, claim: &Claim) -> Result<Feedback, EngineError> {
        let claim = claim.clone();
        let mut reupload = false;
        if claim.in_doubt {
            // Settled: a crashed run's portal may have been taken over at once, its last talk not searchable yet.
            match self.find_existing_settled(item.call.id).await {
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
            let started = Instant::now();
            let mut queued = Duration::ZERO;
            let result = self.attempt(&item, &claim, reupload, &mut queued).await;
            if let Some(load) = load_of(&result) {
                // Waiting for the portal's rate limit is not latency of the links in flight: left out, it would
                // read as queueing and lower the limit while the uploads it governs are fine.
                let elapsed = started.elapsed();
                let queued = queued.min(elapsed);
                self.limit.record(Sample {
                    started: started + queued,
                    elapsed: elapsed - queued,
                    load,
                });
            }
            let (outcome, sent) = match result {
                Ok(done) => done,
                Err(AttemptError::Final(outcome)) => (outcome, Sent::NOTHING),
                Err(AttemptError::LostLease) => return Ok(Feedback::Done),
                Err(AttemptError::Ledger(e)) => {
                    // The `uploading` mark failed, so the stream was abandoned before its end: nothing stored, and
                    // no attempt of the call's. Wait for the ledger (renewing the claim probes it), then go again.
                    self.ledger_down(&e);
                    let renewed = self
                        .ledger_op(Until::Stop, || self.store.renew(&claim, self.config.lease))
                        .await;
                    if !matches!(renewed, Ok(true)) {
                        return Ok(Feedback::Done);
                    }
                    continue;
                }
                Err(AttemptError::Fallback) => {
                    self.ledger_op(Until::Stop, || self.store.release(&claim))
                        .await?;
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

    /// [`Self::find_existing`] for an upload that may have been in doubt a moment ago: a talk stored just now may
    /// not be searchable yet, so "none found" is asked again a few times over `search_settle` before it is believed.
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

    pub(super) async fn commit(
        &self,
        claim: &Claim,
        call: &Call,
        outcome: Outcome,
        sent: Sent,
    ) -> Result<Feedback, EngineError> {
        let mut failures = 0u32;
        loop {
            let done = match self.store.finish(claim, &outcome).await {
                Ok(true) => Ok(true),
                // After a failure the outcome may have been written all the same (the answer was lost), or the
                // lease may have lapsed meanwhile: a known talk ID is written over any unfinished row.
                Ok(false) if failures > 0 => self.commit_after_failure(claim, &outcome).await,
                other => other,
            };
            match done {
                Ok(true) => {
                    self.ledger_up();
                    if failures > 0 {
                        self.took(call);
                    }
                    self.report(call, outcome, sent);
                    return Ok(Feedback::Done);
                }
                Ok(false) => {
                    self.took(call);
                    tracing::warn!(
                        call = call.id,
                        "lease was taken over before the commit; the other worker reports this call"
                    );
                    return Ok(Feedback::Done);
                }
                Err(e) if !e.may_pass_later() => return Err(e.into()),
                Err(e) => {
                    if failures == 0 {
                        self.hold(claim, &outcome);
                    }
                    failures += 1;
                    self.ledger_down(&e);
                    if !self.ledger_pause(failures, Until::Hard).await {
                        // Given up, or abandoned at the end of a shutdown: the outcome stays held, in the journal.
                        return Ok(Feedback::Done);
                    }
                }
            }
        }
    }

    /// `finish` answered "not this claim's" after an earlier try failed: true when the ledger has the outcome now
    /// (the failed try was written after all, or the held entry was just written unfenced: a talk ID is a fact).
    async fn commit_after_failure(
        &self,
        claim: &Claim,
        outcome: &Outcome,
    ) -> Result<bool, b24sense_store::Error> {
        if let Some(entry) = self.held_entry(claim.call_id) {
            if entry.talk_id().is_some() && self.store.record_recovered(&entry).await? {
                return Ok(true);
            }
        }
        let now = self.store.entry(&claim.portal, claim.call_id).await?;
        Ok(now.is_some_and(|e| {
            e.state == outcome.state()
                && match outcome {
                    Outcome::Uploaded { talk_id, .. } => e.talk_id.as_deref() == Some(talk_id),
                    _ => e.reason.as_deref() == outcome.reason(),
                }
        }))
    }
}

/// What one try says about load: uploaded, or refused or lost in a way load explains (`RESOURCE_EXHAUSTED`,
/// `UNAVAILABLE`, a deadline, a broken download: all retryable or in doubt). Final outcomes say nothing about it.
fn load_of(result: &Result<(Outcome, Sent), AttemptError>) -> Option<Load> {
    match result {
        Ok((_, sent)) => Some(Load::Done { bytes: sent.bytes }),
        Err(AttemptError::Retry { .. } | AttemptError::InDoubt { .. }) => Some(Load::Overloaded),
        Err(_) => None,
    }
}

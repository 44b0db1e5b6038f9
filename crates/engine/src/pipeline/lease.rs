//! Leases: the portal's (one holder lists, downloads and uploads per portal) and each call's (one worker per call),
//! taken, waited for, renewed and checked — so that replicas and restarts never work on the same thing at once.
//! A portal lease whose holder died on this machine is taken over at once (see [`crate::holder`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use b24sense_core::{Call, LedgerState, Outcome, SkipReason};
use b24sense_store::{Claim, PortalLease};
use tokio_util::sync::CancellationToken;

use super::guard::Until;
use super::{Run, Sent};
use crate::holder::{Holder, Liveness};
use crate::ports::{CallSource, TalkSink};
use crate::EngineError;

impl<S: CallSource, K: TalkSink> Run<S, K> {
    /// Waits (polling) until this process holds the portal's lease; `None` when shut down while waiting. A lease
    /// whose holder is known to be dead (a run on this machine that crashed) is taken over at once.
    pub(super) async fn acquire_portal(&self) -> Result<Option<PortalLease>, EngineError> {
        let holder = self.config.holder.as_ref().map(Holder::to_string);
        let mut waiting = false;
        loop {
            let lease = self
                .store
                .claim_portal(
                    &self.config.portal,
                    &self.config.worker_id,
                    holder.as_deref(),
                    self.config.portal_lease,
                )
                .await?;
            if let Some(lease) = lease {
                if waiting {
                    tracing::info!(portal = %self.config.portal, "took the portal over");
                }
                return Ok(Some(lease));
            }
            if let Some(lease) = self.take_over_from_dead(holder.as_deref()).await? {
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

    /// Takes the portal's lease from its holder if that is a process on this machine that is gone, and gives back
    /// the calls it held (their leases would otherwise hold up the workers until they expire; a call it left
    /// `uploading` stays in doubt). `None`: the holder is alive, elsewhere or unknown, or another run was faster.
    async fn take_over_from_dead(
        &self,
        holder: Option<&str>,
    ) -> Result<Option<PortalLease>, EngineError> {
        let Some(here) = &self.config.holder else {
            return Ok(None);
        };
        let Some(current) = self.store.portal_holder(&self.config.portal).await? else {
            return Ok(None);
        };
        let Some(dead) = current.holder.as_deref().and_then(Holder::parse) else {
            return Ok(None);
        };
        if dead.liveness(here) != Liveness::Gone {
            return Ok(None);
        }
        let Some(lease) = self
            .store
            .take_over_portal(
                &self.config.portal,
                &current,
                &self.config.worker_id,
                holder,
                self.config.portal_lease,
            )
            .await?
        else {
            return Ok(None);
        };
        tracing::info!(
            portal = %self.config.portal,
            "the previous run (pid {}) is gone; taking the portal over",
            dead.pid
        );
        let released = self
            .store
            .release_held(&self.config.portal, &current.owner)
            .await?;
        if released > 0 {
            tracing::info!(calls = released, "released the calls the previous run held");
        }
        Ok(Some(lease))
    }

    /// Renews the portal lease every sixth of its length until `done` (so a dead holder's last request is at least
    /// five sixths of a lease old when another replica takes over: 50 s with the default, the Enterprise bucket's
    /// drain time). Losing it to another replica stops the run and abandons the calls in flight. A ledger that
    /// refuses the renewal is not a loss (`guard`: the run takes no new calls meanwhile); a lease that lapsed is
    /// still this run's unless a replica took it, which the first renewal that passes tells.
    pub(super) async fn hold_portal(self: Arc<Self>, lease: PortalLease, done: CancellationToken) {
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
                Ok(true) => {
                    renewed = Instant::now();
                    self.ledger_up();
                }
                Ok(false) => {
                    self.fail_run("another replica took this portal over".into());
                    self.hard.cancel();
                    return;
                }
                // The ledger is down (the workers hold their outcomes and wait, see `guard`): a lease that lapsed
                // meanwhile is still ours unless another replica took it, which the next renewal tells.
                Err(e) => {
                    tracing::warn!(error = %e, lapsed = renewed.elapsed() >= self.config.portal_lease,
                        "could not renew the portal lease");
                    self.ledger_down(&e);
                }
            }
        }
    }

    /// A lease owner for one claim (see [`b24sense_store::claim_owner`]).
    pub(super) fn claim_owner(&self) -> String {
        let n = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b24sense_store::claim_owner(&self.config.worker_id, n)
    }

    fn poll(&self) -> Duration {
        self.config
            .poll
            .min(self.config.lease / 4)
            .max(Duration::from_millis(10))
    }

    /// Claims a call, waiting while another worker holds it (with the portal lease held, that worker is dead or
    /// paused and its lease runs out). `None`: the call is done already (reported here) or still held after the wait.
    pub(super) async fn claim_or_wait(&self, call: &Call) -> Result<Option<Claim>, EngineError> {
        let deadline = Instant::now() + self.config.lease * 2 + self.config.portal_lease;
        loop {
            // One owner for the claim and its retries: a claim that took effect though its answer was lost is
            // taken back by the retry rather than waited for as another worker's.
            let owner = self.claim_owner();
            let claim = self
                .ledger_op(Until::Stop, || {
                    self.store
                        .claim(&self.config.portal, call.id, &owner, self.config.lease)
                })
                .await?;
            if claim.is_some() {
                return Ok(claim);
            }
            let entry = self
                .ledger_op(Until::Stop, || {
                    self.store.entry(&self.config.portal, call.id)
                })
                .await?;
            match entry {
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

    /// A claim taken ahead of the workers, renewed first if it has waited long (so that a long wait in the queue
    /// does not leave it to expire mid-upload); `None` when another worker took the call over meanwhile.
    pub(super) async fn still_held(
        &self,
        claim: Claim,
        at: Instant,
    ) -> Result<Option<Claim>, EngineError> {
        if at.elapsed() < self.config.lease / 3 {
            return Ok(Some(claim));
        }
        let renewed = self
            .ledger_op(Until::Stop, || self.store.renew(&claim, self.config.lease))
            .await?;
        Ok(renewed.then_some(claim))
    }

    /// Runs `work` while renewing the claim's lease every third of its length, so a long download or upload (a large
    /// recording, a slow network) is not taken over by another worker while it is still running.
    pub(super) async fn keep_lease<T>(
        &self,
        claim: &Claim,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = (self.config.lease / 3).max(Duration::from_millis(100));
        let renew = async {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                match self.store.renew(claim, self.config.lease).await {
                    Ok(true) => self.ledger_up(),
                    Ok(false) => {
                        tracing::warn!(call = claim.call_id, "lease lost during the upload");
                        return std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        tracing::warn!(call = claim.call_id, error = %e, "could not renew the lease");
                        self.ledger_down(&e);
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
}

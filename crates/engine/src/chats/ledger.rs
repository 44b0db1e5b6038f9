//! When the chat ledger fails (a full disk, a read-only file, a write lock held elsewhere, a server that is
//! unreachable or cut the connection after it committed): every ledger operation of a chat run goes through
//! [`ChatRun::ledger`], which retries it with backoff while the failure may pass, instead of ending the run.
//!
//! - Nothing is uploaded while the ledger is down: each part's `UploadText` comes right after a claim and an
//!   `uploading` mark that the ledger took, so the run takes no new session until those writes pass again.
//! - An answer SpeechSense gave is not dropped: the talk IDs a session's parts got stay with the session's task,
//!   whose write of them is retried until the ledger takes it. (Unlike calls, chats keep no recovery journal: if
//!   the process ends before the ledger recovers, the row stays `uploading` and the in-doubt rule decides — found
//!   by a search, or sent again and flagged `reuploaded_after_crash`.)
//! - A claim whose answer was lost is retried under the same owner ([`ChatRun::claim_owner`]), which takes it back.
//! - After [`super::ChatExportConfig::ledger_give_up`] of continuous trouble the operation fails and the run ends.
//!
//! The first failure of an outage is logged as an error with its cause, the recovery as a warning; the summary
//! counts outages and retries.

use std::future::Future;
use std::time::{Duration, Instant};

use b24sense_store::Error as StoreError;

use super::ports::{ChatSource, TextSink};
use super::run::ChatRun;
use crate::EngineError;

/// The longest wait between two tries of a failed ledger operation (the run's backoff, capped): a ledger that is
/// back is used again within this.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// How long an operation keeps trying.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Until the run stops (a shutdown, a fatal error) or gives up on the ledger: claims, reads, the listing's
    /// writes.
    Stop,
    /// Until the run gives up on the ledger: what a session's holder writes (its marks, talk IDs and verdict),
    /// which a shutdown must not drop.
    GiveUp,
}

impl<S: ChatSource, K: TextSink> ChatRun<S, K> {
    /// Runs a ledger operation, retried with backoff while its failure may pass, until it succeeds, the run gives up
    /// on the ledger, or `until` says stop (then the last error is returned).
    pub(super) async fn ledger<T, F, Fut>(&self, until: Until, mut op: F) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut failures = 0u32;
        loop {
            match op().await {
                Ok(v) => {
                    self.ledger_up();
                    return Ok(v);
                }
                Err(e) if !e.may_pass_later() => return Err(e.into()),
                Err(e) => {
                    failures += 1;
                    let since = self.ledger_down(&e);
                    let left = self.config.ledger_give_up.saturating_sub(since.elapsed());
                    let stopping = until == Until::Stop && self.stop.is_cancelled();
                    if left.is_zero() || stopping {
                        if left.is_zero() {
                            self.fail_run(format!(
                                "the ledger refused writes for {:?} ({:?}): {e}",
                                self.config.ledger_give_up,
                                e.fault(),
                            ));
                        }
                        return Err(e.into());
                    }
                    let delay = self
                        .config
                        .backoff
                        .delay(failures, None)
                        .min(MAX_PAUSE)
                        .min(left);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.cancelled(), if until == Until::Stop => {}
                    }
                }
            }
        }
    }

    /// A ledger operation failed: counted; the first failure of an outage is logged with its cause and what to do.
    /// Returns when the outage began.
    fn ledger_down(&self, e: &StoreError) -> Instant {
        self.summary.lock().unwrap().ledger_retries += 1;
        let mut down = self.ledger_down_since.lock().unwrap();
        if let Some(since) = *down {
            return since;
        }
        let now = Instant::now();
        *down = Some(now);
        self.summary.lock().unwrap().ledger_outages += 1;
        tracing::error!(error = %e, fault = ?e.fault(),
            "the ledger refuses writes; the chat export holds what it learned and retries");
        now
    }

    fn ledger_up(&self) {
        let mut down = self.ledger_down_since.lock().unwrap();
        if let Some(since) = down.take() {
            tracing::warn!(down = ?since.elapsed(), "the ledger takes writes again; the chat export goes on");
        }
    }

    /// A lease owner for one claim: [`b24sense_store::claim_owner`] of the run's worker ID and a counter, so that
    /// a claim's retry (same owner) takes back a claim whose answer was lost.
    pub(super) fn claim_owner(&self) -> String {
        let n = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b24sense_store::claim_owner(&self.config.worker_id, n)
    }
}

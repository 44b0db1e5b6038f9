//! Download accounting: whether recording downloads from the portal's own host (`/rest/download.json`) count
//! against the portal's request bucket. Bitrix24 does not document it, so the client does not assume the worst:
//! it starts as configured (uncounted by default) and switches to counting — for good, in every clone — the first
//! time the portal refuses anything for its rate limit while uncounted downloads ran. Downloads from other hosts
//! (Voximplant storage, PBXs) never take a token.
//!
//! While uncounted, a download still takes a token when the local bucket has one free (it never waits for one);
//! when the bucket is empty, at most [`OVER_BUDGET_IN_FLIGHT`] such downloads are on their way to the portal at
//! once. On a portal that does not count downloads this costs little (the bucket refills, and a few requests at a
//! time keep the link busy); on one that does, the requests that can be refused before the client learns it are
//! those few, not every download the workers hold (measured on the bench's `realistic-2k-counted`: 29 refusals
//! with no bound, all within one round trip).

use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;

use super::{bump, Bitrix24Client};

/// Uncounted portal downloads sent at once while the local bucket is empty: the most refusals one round trip can
/// bring before the client switches to counting.
pub(super) const OVER_BUDGET_IN_FLIGHT: usize = 3;

impl Bitrix24Client {
    /// Whether downloads from the portal's own host take a limiter token now.
    pub fn counts_portal_downloads(&self) -> bool {
        *self.inner.downloads_counted.borrow()
    }

    /// Counts downloads from the portal's own host from now on (e.g. the ledger remembers that this portal
    /// counts them). There is no way back: a portal that counted downloads once is assumed to keep doing so.
    pub fn count_portal_downloads(&self) {
        self.switch_to_counted();
    }

    /// Whether this call switched (false: downloads were counted already).
    fn switch_to_counted(&self) -> bool {
        self.inner.downloads_counted.send_if_modified(|counted| {
            let changed = !*counted;
            *counted = true;
            changed
        })
    }

    /// Room for one uncounted download from the portal's host: `None` when the local bucket had a token free,
    /// else one of the few over-budget slots, held until the portal has answered the request.
    pub(super) async fn uncounted_download_slot(&self) -> Option<OwnedSemaphorePermit> {
        let inner = &self.inner;
        if inner.limiter.try_acquire() {
            return None;
        }
        // The semaphore is never closed.
        inner.over_budget.clone().acquire_owned().await.ok()
    }

    /// Resolves once downloads from the portal's own host are counted (at once if they already are), so that a
    /// caller can remember the switch as soon as it happens.
    pub async fn portal_downloads_now_counted(&self) {
        let mut rx = self.inner.downloads_counted.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = rx.wait_for(|counted| *counted).await;
    }

    /// The portal refused a request for its rate limit (`QUERY_LIMIT_EXCEEDED`, 429): counts it, empties the local
    /// bucket, and switches to counting downloads if uncounted ones ran (or are running) — they are the suspects.
    pub(super) fn note_rate_limited(&self) {
        let inner = &self.inner;
        bump(&inner.counters.rate_limited);
        inner.limiter.drain();
        if inner
            .counters
            .uncounted_portal_downloads
            .load(Ordering::Relaxed)
            == 0
        {
            return;
        }
        if self.switch_to_counted() {
            tracing::info!(
                "the portal refused a request for its rate limit while recording downloads from its own host \
                 were not counted; counting them from now on"
            );
        }
    }
}

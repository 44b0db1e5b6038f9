//! Download accounting across runs. Whether a portal counts recording downloads from its own host against its
//! request bucket is not documented; the source learns it (its first rate-limit refusal while downloads ran
//! uncounted) and the ledger remembers it per portal: a run starts in the mode the ledger remembers, writes a switch
//! down as soon as it happens (so a crash right after does not forget it), and its summary names the mode.

use tokio::task::JoinHandle;

use super::Run;
use crate::ports::{CallSource, TalkSink};
use crate::report::DownloadAccounting;

impl<S: CallSource, K: TalkSink> Run<S, K> {
    /// Applies what the ledger remembers about the portal and starts watching for a switch; `None` when there is
    /// nothing to watch (the source has no such notion, or counts downloads already).
    pub(super) async fn start_download_accounting(&self) -> Option<JoinHandle<()>> {
        let portal = &self.config.portal;
        if self.source.downloads_counted()? {
            return None;
        }
        match self.store.portal_counts_downloads(portal).await {
            Ok(true) => {
                tracing::info!(portal = %portal, "the ledger remembers that this portal counts recording downloads");
                self.source.count_downloads();
                return None;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read the portal's download accounting; starting uncounted")
            }
        }
        let (source, store, portal) = (self.source.clone(), self.store.clone(), portal.clone());
        Some(tokio::spawn(async move {
            source.downloads_now_counted().await;
            if let Err(e) = store.remember_portal_counts_downloads(&portal, true).await {
                tracing::warn!(error = %e, "could not remember that the portal counts recording downloads");
            }
        }))
    }

    /// Ends the watch (letting a switch that just happened be written down) and puts the mode in the summary.
    pub(super) async fn finish_download_accounting(&self, watch: Option<JoinHandle<()>>) {
        let Some(counted) = self.source.downloads_counted() else {
            return;
        };
        if let Some(watch) = watch {
            if counted {
                let _ = watch.await;
            } else {
                watch.abort();
            }
        }
        self.summary.lock().unwrap().download_accounting =
            Some(DownloadAccounting::from_counted(counted));
    }
}

//! The dry run: lists the calls and counts what a real run would upload, writing nothing.

use b24sense_core::LedgerState;

use super::Run;
use crate::ports::{CallSource, TalkSink};
use crate::report::{DryRunTotals, ProgressEvent};
use crate::EngineError;

impl<S: CallSource, K: TalkSink> Run<S, K> {
    pub(super) async fn dry_run(&self) -> Result<(), EngineError> {
        let mut totals = DryRunTotals::default();
        let mut after = 0u64;
        let mut found = 0u64;
        loop {
            let Some(page) = self.next_page(after).await else {
                break;
            };
            found += page.calls.len() as u64;
            for call in &page.calls {
                let done = self.store.entry(&self.config.portal, call.id).await?;
                if done.is_some_and(|e| e.state == LedgerState::Uploaded) {
                    totals.already_uploaded += 1;
                } else if !call.has_recording() {
                    totals.without_recording += 1;
                } else {
                    totals.calls += 1;
                    totals.minutes += call.recording_seconds();
                }
            }
            match page.last_id {
                Some(last) if !page.exhausted => after = last,
                _ => break,
            }
        }
        totals.minutes = totals.minutes.div_ceil(60);
        (self.progress)(&ProgressEvent::ListingDone { total: found });
        let mut summary = self.summary.lock().unwrap();
        summary.found = found;
        summary.would_upload = Some(totals);
        Ok(())
    }
}

//! What a run does around the engine: one cheap SpeechSense check before any call is touched (a wrong key or
//! connection stops the run at once, with one message saying what to do), the words for a run the engine
//! stopped early, the portal's count of the calls a full run will go through (for the time left), and the
//! continuous-sync totals the run carries on from the portal's last run.

use std::time::Duration;

use b24sense_bitrix24::Bitrix24Client;
use b24sense_core::CallFilter;
use b24sense_speechsense::{ConnectionCheck, SpeechSenseClient};
use b24sense_store::{PortalSettings, Store};
use serde_json::json;

use super::progress::Progress;
use super::sync_totals::SyncTotals;
use crate::i18n::Stop;

/// How long the check before a run may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long counting the calls may take before the export starts without an estimate.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// Before a run (and after an early stop): SpeechSense's answer to the metadata-only probe, `Ok` when the key
/// and the connection are accepted.
pub(super) async fn probe(speech: &SpeechSenseClient, connection_id: &str) -> Result<(), Stop> {
    match tokio::time::timeout(CHECK_TIMEOUT, speech.check_connection(connection_id)).await {
        Ok(Ok(ConnectionCheck::Ok)) => Ok(()),
        Ok(Ok(refused)) => Err(Stop::SpeechSense(refused)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "SpeechSense check before the run failed");
            Err(Stop::SpeechSenseUnreachable)
        }
        Err(_) => {
            tracing::warn!("SpeechSense check before the run timed out");
            Err(Stop::SpeechSenseUnreachable)
        }
    }
}

/// Why the engine stopped a run early (`reason`: its own words, which go to the log): SpeechSense is asked
/// again, so a refused key or connection is named exactly; else the side the reason names.
pub(super) async fn classify_stop(
    speech: &SpeechSenseClient,
    connection_id: &str,
    reason: &str,
) -> Stop {
    tracing::warn!(%reason, "the export stopped early");
    match probe(speech, connection_id).await {
        Err(stop @ Stop::SpeechSense(_)) => stop,
        Err(unreachable) if reason.starts_with("SpeechSense") => unreachable,
        _ if reason.contains("Bitrix24") => Stop::Bitrix24,
        _ => Stop::Other,
    }
}

/// How many calls the portal has for `filter` (one `voximplant.statistic.get` that asks for the total).
pub(super) async fn count_calls(client: &Bitrix24Client, filter: &CallFilter) -> Option<u64> {
    let params = json!({"FILTER": filter.to_bitrix_filter(0), "SORT": "ID", "ORDER": "ASC"});
    match tokio::time::timeout(
        COUNT_TIMEOUT,
        client.call("voximplant.statistic.get", params),
    )
    .await
    {
        Ok(Ok(r)) => r.total,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not count the calls; no time estimate until the listing ends");
            None
        }
        Err(_) => None,
    }
}

/// The continuous-sync totals a run starts from: the portal's last run's, when they belong to the current
/// `sync_since`; `None` while sync is off.
pub(super) async fn sync_totals(
    store: &Store,
    member_id: &str,
    settings: &PortalSettings,
    stale_after: Duration,
) -> Option<SyncTotals> {
    let since = settings
        .sync_since
        .as_deref()
        .filter(|_| settings.sync_enabled)?;
    let last = tokio::time::timeout(
        Duration::from_secs(5),
        store.last_run_progress(member_id, stale_after),
    )
    .await;
    let previous = match last {
        Ok(Ok(Some(run))) => serde_json::from_value::<Progress>(run.progress)
            .ok()
            .and_then(|p| p.sync),
        _ => None,
    };
    Some(SyncTotals::carried(previous, since))
}

//! Runs that a restart interrupted. A server that shuts down stops its exports (uploads in flight finish) and
//! journals them as `shutdown`; a server that crashed leaves them marked running, and their heartbeat stops.
//! When `serve` starts, and periodically after that, every portal whose latest run is one of these is taken
//! over (a compare-and-swap in the store: one replica wins, and a run whose heartbeat still beats — another
//! live replica's — is never taken) and started again with the portal's stored settings. The engine's ledger
//! makes that safe: uploaded calls are skipped, uploads left in doubt are resolved, nothing is duplicated.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::i18n::lang_of;
use crate::runner::Progress;
use crate::sync::start_for;
use crate::trigger::Trigger;
use crate::AppState;

/// How long the runs of a shutting-down server may take to stop: the engine lets uploads in flight finish
/// within its 30 s grace, then the end is journaled.
const STOP_GRACE: Duration = Duration::from_secs(40);
/// How long reading the interrupted runs may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// A pass at once, then one every half staleness limit (between 1 s and 60 s) until `shutdown`.
pub(crate) async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
    let every =
        (state.config.run_stale_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        pass(&state).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Takes over and restarts every interrupted run; returns how many were started.
pub(crate) async fn pass(state: &Arc<AppState>) -> usize {
    let stale_after = state.config.run_stale_after;
    let runs =
        match tokio::time::timeout(LIST_TIMEOUT, state.store.runs_to_resume(stale_after)).await {
            Ok(Ok(runs)) => runs,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the runs to resume");
                return 0;
            }
            Err(_) => {
                tracing::warn!("reading the runs to resume timed out");
                return 0;
            }
        };
    let mut started = 0;
    for run in runs {
        // A run of this process beats its heartbeat; one that is still stopping is left to end.
        if state.runner.has_run(&run.portal) {
            continue;
        }
        let portal = match state.store.portal(&state.key, &run.portal).await {
            Ok(Some(p)) if p.status == b24sense_store::PortalStatus::Installed => p,
            _ => continue,
        };
        let progress = serde_json::from_value::<Progress>(run.progress)
            .unwrap_or_default()
            .into_interrupted(lang_of(portal.lang.as_deref()));
        let progress = serde_json::to_value(progress).unwrap_or_default();
        match state
            .store
            .take_over_run(run.id, stale_after, &progress)
            .await
        {
            Ok(true) => {}
            // Another replica took it over first, or its heartbeat came back.
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(run_id = run.id, error = %e, "cannot take over the interrupted run");
                continue;
            }
        }
        let member = portal.member_id.clone();
        match start_for(state, portal, Trigger::Resume, false).await {
            Ok(()) => {
                started += 1;
                state.metrics.runs_resumed.inc();
                tracing::info!(member_id = %member, run_id = run.id, "resumed an export that a restart interrupted");
            }
            // Shown as interrupted on the page (the journal says so); the user can start it again.
            Err(e) => {
                tracing::warn!(member_id = %member, run_id = run.id, reason = %e, "cannot resume the interrupted export")
            }
        }
    }
    started
}

/// Stops every run of this process for a server shutdown and waits (bounded) until their ends are journaled.
pub(crate) async fn stop_runs(state: &AppState) {
    let ended = state.runner.shutdown_all();
    if ended.is_empty() {
        return;
    }
    tracing::info!(runs = ended.len(), "shutdown: stopping the running exports");
    let all = futures::future::join_all(ended.iter().map(|t| t.cancelled()));
    if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
        tracing::warn!(
            "shutdown: exports still running after the grace period; the next start resumes them"
        );
    }
}

//! Keep-alive refresh of idle installations: a refresh token may expire 28 days after
//! it was issued, or be single-use, so an installation nobody used for weeks would lose its access. Every
//! `keepalive_interval` this task refreshes, through the single-flight [`StoreTokenSource`] path (rotation is a
//! compare-and-swap in the store), each installed portal whose tokens were last rotated at least
//! `keepalive_age` ago. Portals that are in use rotate on their own and are not touched; nothing is refreshed on
//! a tight schedule. A refresh the OAuth server refuses is recorded on the portal (the settings page asks the
//! administrator to reopen or reinstall), counted and logged without secrets.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::oauth::StoreTokenSource;
use crate::{AppState, Error};

/// How long reading the due portals may take. (A refresh itself is never cut short from outside: cancelled
/// between the OAuth server's answer and the store's rotation it would lose the only valid refresh token; the
/// OAuth request times out after 30 s and the store's statements have their own timeouts.)
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Installed portals whose tokens were old enough.
    pub due: usize,
    /// Refreshed by this pass.
    pub refreshed: usize,
    /// The OAuth server refused (the administrator must reopen or reinstall the application).
    pub refused: usize,
    /// Could not refresh for another reason (OAuth server unreachable, store error); tried again next pass.
    pub failed: usize,
}

/// Passes every `keepalive_interval` until `shutdown`, the first one at once (a server restarted more often
/// than the interval still keeps its installations alive). A pass in progress finishes its current portal.
pub(crate) async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        pass(&state, &shutdown).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(state.config.keepalive_interval) => {}
        }
    }
}

/// One pass over the due portals, in order; stops between portals once `shutdown` is cancelled.
pub(crate) async fn pass(state: &AppState, shutdown: &CancellationToken) -> PassReport {
    let mut report = PassReport::default();
    let due = match tokio::time::timeout(
        LIST_TIMEOUT,
        state
            .store
            .portals_due_for_refresh(state.config.keepalive_age),
    )
    .await
    {
        Ok(Ok(due)) => due,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "keep-alive: cannot list the installations");
            return report;
        }
        Err(_) => {
            tracing::warn!("keep-alive: listing the installations timed out");
            return report;
        }
    };
    report.due = due.len();
    for d in due {
        if shutdown.is_cancelled() {
            break;
        }
        let source = match token_source(state, &d.member_id).await {
            Ok(Some(s)) => s,
            // Uninstalled since the list was read.
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(member_id = %d.member_id, error = %e, "keep-alive: cannot read the installation");
                report.failed += 1;
                continue;
            }
        };
        match source.refresh_if_current(d.token_version).await {
            Ok(true) => {
                report.refreshed += 1;
                state.metrics.token_keepalives.inc();
                tracing::info!(member_id = %d.member_id, "keep-alive: refreshed the tokens of an idle installation");
            }
            // Rotated meanwhile (a run, a page open, another replica): alive anyway.
            Ok(false) => {}
            // Already logged and recorded (without secrets) where the refusal was seen.
            Err(Error::RefreshRefused { .. }) => report.refused += 1,
            Err(e) => {
                tracing::warn!(member_id = %d.member_id, error = %e, "keep-alive: refresh failed; retried next pass");
                report.failed += 1;
            }
        }
    }
    if report.due > 0 {
        tracing::info!(
            due = report.due,
            refreshed = report.refreshed,
            refused = report.refused,
            failed = report.failed,
            "keep-alive pass"
        );
    }
    report
}

async fn token_source(
    state: &AppState,
    member_id: &str,
) -> Result<Option<StoreTokenSource>, Error> {
    let Some(portal) = state
        .store
        .portal(&state.key, member_id)
        .await?
        .filter(|p| p.status == b24sense_store::PortalStatus::Installed)
    else {
        return Ok(None);
    };
    state
        .run_env()
        .token_source(&portal)
        .map(Some)
        .map_err(Error::Config)
}

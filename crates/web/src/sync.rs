//! Continuous sync's schedule: a run with the portal's stored settings ([`start_for`], also what a call-end
//! event and a resumption start), the periodic catch-up pass over idle portals with sync on (a missed event
//! loses nothing), and the rechecks of late recordings the ledger says are due.

use std::sync::Arc;

use b24sense_store::{Portal, PortalStatus};
use tokio_util::sync::CancellationToken;

use crate::i18n::{lang_of, Msg};
use crate::trigger::Trigger;
use crate::AppState;

/// Starts a run with the stored settings; `only_sync`: only when continuous sync is on.
pub async fn start_for(
    state: &AppState,
    portal: Portal,
    trigger: Trigger,
    only_sync: bool,
) -> Result<(), String> {
    let lang = lang_of(portal.lang.as_deref());
    let stored = state
        .store
        .settings(&state.key, &portal.member_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| Msg::SaveSettingsFirst.text(lang).to_string())?;
    if only_sync && !stored.settings.sync_enabled {
        return Err("continuous sync is off".into());
    }
    let api_key = stored
        .api_key
        .ok_or_else(|| Msg::EnterApiKeyShort.text(lang).to_string())?;
    state.runner.start(
        state.run_env(),
        portal,
        stored.settings,
        api_key,
        trigger,
        lang,
    )
}

/// Starts an export for every installed portal with continuous sync that is idle.
pub async fn sync_once(state: &Arc<AppState>) -> usize {
    let Ok(portals) = state.store.installed_portals(&state.key).await else {
        return 0;
    };
    let mut started = 0;
    for p in portals {
        if state.runner.is_running(&p.member_id) {
            continue;
        }
        let member = p.member_id.clone();
        if start_for(state, p, Trigger::Schedule, true).await.is_ok() {
            tracing::info!(member_id = %member, "catch-up pass started");
            started += 1;
        }
    }
    started
}

/// Portals with a call whose late recording is due: an incremental pass each (its first step reads those calls
/// again by ID). The ledger holds the schedule, so it survives restarts and needs no timer per call.
pub async fn recheck_once(state: &Arc<AppState>) -> usize {
    let due = match state.store.portals_due().await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read which recordings are due for a check");
            return 0;
        }
    };
    let mut started = 0;
    for member in due {
        if state.runner.is_running(&member) {
            continue;
        }
        let Ok(Some(portal)) = state.store.portal(&state.key, &member).await else {
            continue;
        };
        if portal.status != PortalStatus::Installed {
            continue;
        }
        if start_for(state, portal, Trigger::Recheck, true)
            .await
            .is_ok()
        {
            tracing::info!(member_id = %member, "checking late recordings");
            started += 1;
        }
    }
    started
}

/// The catch-up pass every `sync_interval` and the recheck every `recheck_interval`, until `shutdown`.
pub async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
    let start = tokio::time::Instant::now();
    let mut catch_up = tokio::time::interval_at(
        start + state.config.sync_interval,
        state.config.sync_interval,
    );
    let mut recheck = tokio::time::interval_at(
        start + state.config.recheck_interval,
        state.config.recheck_interval,
    );
    // A pass that takes longer than the interval is not followed by a burst of passes.
    catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = catch_up.tick() => { sync_once(&state).await; }
            _ = recheck.tick() => { recheck_once(&state).await; }
        }
    }
}

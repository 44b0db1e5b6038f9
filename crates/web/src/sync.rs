//! Continuous sync's schedule: a run with the portal's stored settings ([`start_for`], also what a resumption
//! starts; with a chat connection it exports the Open Lines sessions too), call-end events ([`on_call_end`]) and
//! CRM activity updates ([`on_activity_update`]: maybe an Open Lines session closed) — replays are cheap: passes
//! per portal are coalesced and stale events do nothing —, the periodic catch-up pass over idle portals with sync
//! on (a missed event loses nothing; it runs the chats too), and the rechecks of late recordings the ledger says
//! are due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24sense_store::{Portal, PortalStatus};
use chrono::Utc;
use tokio::time::Instant;
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
        .map_err(|e| {
            tracing::error!(member_id = %portal.member_id, error = %e, "cannot read the settings");
            Msg::CannotStart.text(lang).to_string()
        })?
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

/// When each portal's last event-started pass began and whether another one waits: events (and replays of them)
/// start at most one pass per `event_pass_spacing`, and at most one more waits behind it.
#[derive(Default)]
pub struct EventPasses(Mutex<HashMap<String, EventPass>>);

struct EventPass {
    started: Instant,
    queued: bool,
}

/// Whether a call-end event is older than `max_age` by its `ts` (Unix seconds): acknowledged without work, since
/// the periodic catch-up pass has covered its call by then (and a replayed old event must cost nothing). An event
/// without a readable `ts` is taken as fresh.
pub fn is_stale(ts: Option<&str>, max_age: Duration) -> bool {
    ts.and_then(|t| t.trim().parse::<i64>().ok())
        .is_some_and(|ts| {
            // Saturating: a `ts` near `i64::MIN` (found by the `bitrix_form` fuzz target) is simply very old.
            let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
            Utc::now().timestamp().saturating_sub(ts) > max_age
        })
}

/// A call-end event of an installed portal (its application token checked): the running pass is asked for one
/// more; else a pass starts unless one started less than `event_pass_spacing` ago, in which case one pass is
/// queued for when the spacing is over. Further events while one is queued add nothing.
pub async fn on_call_end(state: &Arc<AppState>, portal: Portal) {
    let member = portal.member_id.clone();
    // During a run: the runner keeps one bit, "run again", so any number of events queue one pass.
    if state.runner.poke(&member) {
        return;
    }
    let spacing = state.config.event_pass_spacing;
    let wait = {
        let mut passes = state
            .event_passes
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match passes.get_mut(&member) {
            Some(p) if p.queued => return,
            Some(p) if now < p.started + spacing => {
                p.queued = true;
                Some(p.started + spacing)
            }
            _ => {
                passes.insert(
                    member.clone(),
                    EventPass {
                        started: now,
                        queued: false,
                    },
                );
                None
            }
        }
    };
    let Some(at) = wait else {
        event_pass(state, portal).await;
        return;
    };
    let state = state.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = state.stopping.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {}
        }
        if let Some(p) = state
            .event_passes
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&member)
        {
            p.queued = false;
            p.started = Instant::now();
        }
        if state.runner.poke(&member) {
            return;
        }
        // Read again: the portal may have been uninstalled while the pass waited.
        match state.store.portal(&state.key, &member).await {
            Ok(Some(portal)) if portal.status == PortalStatus::Installed => {
                event_pass(&state, portal).await
            }
            _ => {}
        }
    });
}

/// `ONCRMACTIVITYUPDATE` of an installed portal (its application token checked): some CRM activity changed, maybe
/// an Open Lines session that closed. When the portal exports chats with continuous sync on, it starts (or asks
/// for) an incremental pass like a call-end event; otherwise it does nothing (the event comes for every activity).
pub async fn on_activity_update(state: &Arc<AppState>, portal: Portal) {
    let chats = match state.store.settings(&state.key, &portal.member_id).await {
        Ok(Some(st)) => st.settings.sync_enabled && st.settings.chat_connection_id.is_some(),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(member_id = %portal.member_id, error = %e, "activity event: cannot read the settings");
            false
        }
    };
    if chats {
        on_call_end(state, portal).await;
    }
}

async fn event_pass(state: &AppState, portal: Portal) {
    let member = portal.member_id.clone();
    if let Err(e) = start_for(state, portal, Trigger::Event, true).await {
        tracing::debug!(member_id = ?member, reason = %e, "call-end event: no run started");
    }
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
            tracing::info!(member_id = ?member, "catch-up pass started");
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
            tracing::info!(member_id = ?member, "checking late recordings");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_event_by_ts_survives_extreme_values() {
        let age = Duration::from_secs(300);
        let now = Utc::now().timestamp();
        assert!(!is_stale(Some(&now.to_string()), age));
        assert!(is_stale(Some(&(now - 3600).to_string()), age));
        assert!(!is_stale(None, age));
        assert!(!is_stale(Some("soon"), age));
        // Regression (fuzz): `now - i64::MIN` overflowed and panicked the events handler.
        assert!(is_stale(Some("-9223372036854775808"), age));
        assert!(!is_stale(Some("9223372036854775807"), age));
        assert!(!is_stale(Some("0"), Duration::from_secs(u64::MAX)));
    }
}

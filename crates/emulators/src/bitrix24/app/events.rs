//! Events from the portal to the application's handlers: form-encoded POSTs, at most once per handler, only after
//! the installation is finished — `ONAPPINSTALL` right after it (the application token and the installing
//! user's token pair, refresh token included), `ONVOXIMPLANTCALLEND` for a call, `ONCRMACTIVITYUPDATE` when an
//! Open Lines session closes (its CRM activity goes `COMPLETED=Y`) and `ONAPPUNINSTALL` on uninstall.

use std::sync::Arc;

use serde_json::Value;

use super::frame::http;
use super::state::{client_endpoint, domain, server_endpoint, Binding, SCOPE};
use crate::bitrix24::clock::now_unix_secs;
use crate::bitrix24::emulator::Bitrix24Emulator;
use crate::bitrix24::state::PortalState;

/// Sends `event` with `data` to every handler bound to it (see [`Bitrix24Emulator::send_event`]); a function of the
/// portal's state, so that a change made outside a task (closing a session) can send its event from one.
pub(crate) async fn send_event_in(
    inner: Arc<PortalState>,
    event: &str,
    data: &[(String, String)],
) -> Vec<u16> {
    let event = event.to_ascii_uppercase();
    let targets: Vec<Binding> = {
        let s = inner.app.lock();
        if !s.installed {
            return Vec::new();
        }
        s.bindings
            .iter()
            .filter(|b| b.event == event)
            .cloned()
            .collect()
    };
    let mut out = Vec::new();
    for b in targets {
        let (access, refresh) = inner.app.issue(inner.config.webhook_user);
        // Only the install event hands the refresh token over.
        let refresh = (event == "ONAPPINSTALL").then_some(refresh.as_str());
        let form = event_form(&inner, &event, b.id, data, Some((&access, refresh)));
        out.push(post_form(&b.handler, &form).await);
    }
    out
}

/// The `data` of `ONCRMACTIVITYUPDATE` as the portal sends it: only the activity's ID (`data[FIELDS][ID]`).
pub(crate) fn activity_update_data(activity_id: u64) -> Vec<(String, String)> {
    vec![("FIELDS][ID".to_string(), activity_id.to_string())]
}

impl Bitrix24Emulator {
    /// Sends `event` with `data` to every handler bound to it, at most once each, form-encoded as the
    /// portal's queue does. Returns the handlers' HTTP statuses (0 = unreachable). Nothing is sent before
    /// the installation is finished.
    pub async fn send_event(&self, event: &str, data: &[(String, String)]) -> Vec<u16> {
        send_event_in(self.inner.clone(), event, data).await
    }

    /// `ONCRMACTIVITYUPDATE` for the CRM activity `activity_id` (`data[FIELDS][ID]`, nothing else), as the portal
    /// sends it when an activity changes — an Open Lines session closing among others. Returns the handlers'
    /// statuses.
    pub async fn send_activity_update(&self, activity_id: u64) -> Vec<u16> {
        self.send_event("ONCRMACTIVITYUPDATE", &activity_update_data(activity_id))
            .await
    }

    /// What the portal does on `BX24.installFinish()`: the installation counts as finished and `ONAPPINSTALL`
    /// goes to its handlers. Returns their HTTP statuses.
    pub async fn finish_app_install(&self, lang: &str) -> Vec<u16> {
        self.inner.app.lock().installed = true;
        let data: Vec<(String, String)> = [
            ("VERSION", "1"),
            ("ACTIVE", "Y"),
            ("INSTALLED", "Y"),
            ("LANGUAGE_ID", lang),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        self.send_event("ONAPPINSTALL", &data).await
    }

    /// `ONVOXIMPLANTCALLEND` for the call with statistic `ID` `call_stat_id` (its `data` as the portal sends it:
    /// no statistic `ID`, no recording fields). `None` when there is no such call.
    pub async fn send_call_end(&self, call_stat_id: u64) -> Option<Vec<u16>> {
        let row = self
            .call_rows()
            .into_iter()
            .find(|r| field(r, "ID") == call_stat_id.to_string())?;
        let keys = [
            "CALL_ID",
            "CALL_TYPE",
            "PHONE_NUMBER",
            "PORTAL_NUMBER",
            "PORTAL_USER_ID",
            "CALL_DURATION",
            "CALL_START_DATE",
            "COST",
            "COST_CURRENCY",
            "CALL_FAILED_CODE",
            "CALL_FAILED_REASON",
            "CRM_ACTIVITY_ID",
        ];
        let data: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.to_string(), field(&row, k)))
            .collect();
        Some(self.send_event("ONVOXIMPLANTCALLEND", &data).await)
    }

    /// Uninstalls the application: `ONAPPUNINSTALL` (no tokens, `data[CLEAN]`) goes to its handlers, then
    /// every token and binding is gone. Returns the handlers' statuses.
    pub async fn uninstall_app(&self, clean: bool) -> Vec<u16> {
        let targets: Vec<Binding> = {
            let mut s = self.inner.app.lock();
            let t = s
                .bindings
                .iter()
                .filter(|b| b.event == "ONAPPUNINSTALL")
                .cloned()
                .collect();
            s.installed = false;
            s.bindings.clear();
            s.access.clear();
            s.refresh.clear();
            t
        };
        let data = vec![
            ("LANGUAGE_ID".to_string(), "ru".to_string()),
            (
                "CLEAN".to_string(),
                if clean { "1" } else { "0" }.to_string(),
            ),
        ];
        let mut out = Vec::new();
        for b in targets {
            let form = event_form(&self.inner, "ONAPPUNINSTALL", b.id, &data, None);
            out.push(post_form(&b.handler, &form).await);
        }
        out
    }
}

fn event_form(
    inner: &PortalState,
    event: &str,
    handler_id: u64,
    data: &[(String, String)],
    tokens: Option<(&str, Option<&str>)>,
) -> Vec<(String, String)> {
    let s = |v: &str| v.to_string();
    let mut form = vec![
        (s("event"), s(event)),
        (s("event_handler_id"), handler_id.to_string()),
    ];
    for (k, v) in data {
        form.push((format!("data[{k}]"), v.clone()));
    }
    form.push((s("ts"), now_unix_secs().to_string()));
    if let Some((a, refresh)) = tokens {
        form.push((s("auth[access_token]"), s(a)));
        if let Some(r) = refresh {
            form.push((s("auth[refresh_token]"), s(r)));
        }
        form.push((s("auth[expires_in]"), inner.app.ttl().as_secs().to_string()));
        form.push((s("auth[scope]"), s(SCOPE)));
    }
    form.extend([
        (s("auth[domain]"), domain(inner)),
        (s("auth[server_endpoint]"), server_endpoint(inner)),
        (s("auth[status]"), s("L")),
        (s("auth[client_endpoint]"), client_endpoint(inner)),
        (s("auth[member_id]"), inner.app.member_id.clone()),
        (
            s("auth[application_token]"),
            inner.app.application_token.clone(),
        ),
    ]);
    form
}

fn field(row: &Value, key: &str) -> String {
    match row.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => if *b { "1" } else { "0" }.to_string(),
        _ => String::new(),
    }
}

async fn post_form(url: &str, form: &[(String, String)]) -> u16 {
    match http().post(url).form(form).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

//! The application's life on a portal: the install (the iframe install of a UI application, or the
//! `ONAPPINSTALL` event — which an API-only application gets at `/install` and a UI application gets there too,
//! bound during its iframe install), and the events Bitrix24 sends afterwards, each checked against the portal's
//! application token: a call end starts continuous sync's pass, an uninstall stops the portal's work and
//! deletes its secrets.
//!
//! An install is believed only once the OAuth server vouched for it ([`install_proof`]): the portal's identity
//! and endpoint come from its answer, never from the request. The iframe carries no application token (Bitrix24
//! documents only `DOMAIN`, `PROTOCOL`, `LANG`, `APP_SID`, `AUTH_ID`, `AUTH_EXPIRES`, `REFRESH_ID`, `member_id`,
//! `status`), so the installation learns it from `ONAPPINSTALL`; until then the page works and events are
//! refused. A frame that does carry `APPLICATION_TOKEN` sets it at once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use b24sense_store::{Installation, PortalStatus};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::api_error::TextError;
use crate::frame::{page_response, BitrixForm};
use crate::i18n::{self, lang_of, Lang, Msg};
use crate::install_proof::{self, Claim, Refusal};
use crate::session::same_secret;
use crate::{sync, AppState};

/// The install data, from either form of the install.
pub(crate) struct InstallForm {
    /// The `ONAPPINSTALL` event; else the iframe install.
    event: bool,
    member_id: String,
    domain: String,
    refresh: String,
    /// Optional in both forms (the frame does not document them).
    server: String,
    client_endpoint: String,
    app_token: String,
    lang: Lang,
}

impl InstallForm {
    pub(crate) fn read(f: &BitrixForm) -> InstallForm {
        let g = |k: &str| f.field(k);
        let event = g("event").eq_ignore_ascii_case("ONAPPINSTALL");
        // The event's field names, then the iframe's.
        let name = |in_event: &'static str, in_frame: &'static str| {
            g(if event { in_event } else { in_frame })
        };
        InstallForm {
            event,
            member_id: name("auth[member_id]", "member_id"),
            domain: name("auth[domain]", "DOMAIN"),
            refresh: name("auth[refresh_token]", "REFRESH_ID"),
            server: name("auth[server_endpoint]", "SERVER_ENDPOINT"),
            client_endpoint: if event {
                g("auth[client_endpoint]")
            } else {
                String::new()
            },
            app_token: name("auth[application_token]", "APPLICATION_TOKEN"),
            lang: lang_of(Some(&name("data[LANGUAGE_ID]", "LANG"))),
        }
    }
}

pub async fn install(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, TextError> {
    let f = BitrixForm::parse(query.as_deref(), &body);
    let i = InstallForm::read(&f);
    let lang = i.lang;
    let refuse = |status: StatusCode, msg: &str| TextError::new(status, msg);
    // The event exists to hand over the application token; the frame may lack it.
    let mut required = vec![&i.member_id, &i.domain, &i.refresh];
    if i.event {
        required.push(&i.app_token);
    }
    if required.iter().any(|v| v.is_empty()) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            Msg::InstallIncomplete.text(lang),
        ));
    }
    let claim = Claim {
        member_id: &i.member_id,
        domain: &i.domain,
        refresh_token: &i.refresh,
        server_endpoint: &i.server,
        client_endpoint: &i.client_endpoint,
    };
    let proven = match install_proof::prove(&state, &claim).await {
        Ok(p) => p,
        Err(r) => {
            if i.event {
                state.metrics.events_rejected.inc();
            }
            tracing::warn!(member_id = ?i.member_id, domain = ?i.domain, event = i.event, refusal = %r,
                "install refused: not confirmed by the OAuth server");
            let (status, msg) = match r {
                Refusal::UnknownServer => (
                    StatusCode::FORBIDDEN,
                    "SERVER_ENDPOINT is not a Bitrix24 OAuth server",
                ),
                Refusal::NotAdmin => (StatusCode::FORBIDDEN, Msg::InstallAdminOnly.text(lang)),
                Refusal::NotConfirmed(_) | Refusal::Mismatch(_) => {
                    (StatusCode::FORBIDDEN, Msg::InstallNotConfirmed.text(lang))
                }
            };
            return Err(refuse(status, msg));
        }
    };
    let before = match state.store.portal(&state.key, &proven.member_id).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "install: cannot read the portal");
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the installation",
            ));
        }
    };
    let was_installed = before
        .as_ref()
        .is_some_and(|p| p.status == PortalStatus::Installed);
    if let Some(p) = before.as_ref().filter(|p| p.domain != proven.domain) {
        tracing::info!(member_id = ?proven.member_id, from = ?p.domain, to = ?proven.domain,
            "the OAuth server names a new domain for the portal (renamed)");
    }
    let inst = Installation {
        member_id: proven.member_id.clone(),
        domain: proven.domain.clone(),
        client_endpoint: proven.client_endpoint.to_string(),
        server_endpoint: proven.server_endpoint.to_string(),
        // Empty = not known yet: kept as stored (none after an uninstall) until `ONAPPINSTALL` brings it.
        application_token: SecretString::from(i.app_token.clone()),
        access_token: proven.access_token,
        refresh_token: proven.refresh_token,
        expires_at: Utc::now() + chrono::Duration::seconds(proven.expires_in),
        lang: Some(i18n::code(lang).to_string()),
    };
    if let Err(e) = state.store.install_portal(&state.key, &inst).await {
        tracing::error!(error = %e, "install: cannot store the portal");
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot store the installation",
        ));
    }
    // New tokens, maybe a new endpoint: the portal's shared client is built again from the store.
    state.runner.forget_client(&inst.member_id);
    if !was_installed {
        state.metrics.installs.inc();
    }
    tracing::info!(member_id = ?inst.member_id, domain = ?inst.domain, event = i.event,
        application_token = !i.app_token.is_empty(), "installation confirmed by the OAuth server");
    if i.event {
        // An API-only application is installed by this event alone; after an iframe install it is bound already.
        if !was_installed {
            bind_events(&state, &inst.member_id, false).await;
        }
        return Ok((StatusCode::OK, "OK").into_response());
    }
    bind_events(&state, &inst.member_id, true).await;
    let sdk = &state.config.bitrix24_sdk;
    Ok(page_response(
        &inst.domain,
        &proven.client_endpoint,
        Html(crate::page::install_page(lang, sdk)).into_response(),
        sdk,
        true,
    ))
}

/// Binds the call-end, CRM activity update (Open Lines sessions closing) and uninstall events to `/events` and, for an iframe install (`with_install`),
/// `ONAPPINSTALL` to `/install`: the portal sends it after `BX24.installFinish()` with the application token.
/// Re-binding an existing handler is an idempotent error.
async fn bind_events(state: &AppState, member_id: &str, with_install: bool) {
    let Ok(Some(portal)) = state.store.portal(&state.key, member_id).await else {
        return;
    };
    let client = match state.portal_client(&portal) {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "install: no REST client");
            return;
        }
    };
    let handler = |path: &str| {
        state
            .config
            .public_url
            .join(path)
            .map(|u| u.to_string())
            .unwrap_or_default()
    };
    let mut bindings = vec![
        ("ONVOXIMPLANTCALLEND", handler("events")),
        // Open Lines sessions closing (their CRM activity goes `COMPLETED=Y`): scope `crm`.
        ("ONCRMACTIVITYUPDATE", handler("events")),
        ("ONAPPUNINSTALL", handler("events")),
    ];
    if with_install {
        bindings.push(("ONAPPINSTALL", handler("install")));
    }
    for (ev, handler) in bindings {
        if let Err(e) = client
            .call("event.bind", json!({"event": ev, "handler": handler}))
            .await
        {
            let msg = e.to_string();
            if !msg.contains("already binded") {
                tracing::warn!(event = ev, error = ?msg, "install: event.bind failed");
            }
        }
    }
}

pub async fn events(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, TextError> {
    let f = BitrixForm::parse(None, &body);
    let g = |k: &str| f.raw(k).unwrap_or("").to_string();
    let member_id = g("auth[member_id]");
    let token = g("auth[application_token]");
    // A stale call-end or activity event (a replay, or one held up for minutes) is acknowledged without work: the
    // catch-up pass covers its call or session anyway.
    let nudge = ["ONVOXIMPLANTCALLEND", "ONCRMACTIVITYUPDATE"]
        .iter()
        .any(|e| g("event").eq_ignore_ascii_case(e));
    if nudge && sync::is_stale(f.raw("ts"), state.config.event_max_age) {
        tracing::debug!(member_id = ?member_id, "stale call-end event acknowledged without work");
        return Ok((StatusCode::OK, "OK").into_response());
    }
    let portal = match state.store.portal(&state.key, &member_id).await {
        Ok(Some(p)) if p.status == PortalStatus::Installed => p,
        _ => {
            state.metrics.events_rejected.inc();
            tracing::debug!(member_id = ?member_id, "event for an unknown installation refused");
            return Err(TextError::new(
                StatusCode::FORBIDDEN,
                "unknown installation",
            ));
        }
    };
    let valid = portal
        .application_token
        .as_ref()
        .is_some_and(|t| same_secret(t.expose_secret(), &token));
    if !valid {
        state.metrics.events_rejected.inc();
        tracing::warn!(member_id = ?member_id, "event with a wrong application token rejected");
        return Err(TextError::new(
            StatusCode::FORBIDDEN,
            "wrong application token",
        ));
    }
    state.metrics.events_accepted.inc();
    match g("event").to_ascii_uppercase().as_str() {
        "ONAPPUNINSTALL" => {
            state.runner.stop(&member_id);
            state.runner.forget_client(&member_id);
            match state.store.uninstall_portal(&member_id).await {
                Ok(_) => {
                    state.metrics.uninstalls.inc();
                    tracing::info!(member_id = ?member_id, "application uninstalled; secrets deleted");
                }
                Err(e) => tracing::error!(member_id = %member_id, error = %e, "uninstall failed"),
            }
        }
        "ONVOXIMPLANTCALLEND" => {
            // The event carries no statistic ID or recording: a run reads the call back (and the ledger skips
            // what is done); passes are coalesced per portal.
            sync::on_call_end(&state, portal).await;
        }
        "ONCRMACTIVITYUPDATE" => {
            // Any CRM activity changed, maybe an Open Lines session that closed. Only a nudge: the pass reads the
            // sessions from the portal's REST (the ones the ledger holds open by ID, then those after the mark),
            // never from the event's fields; passes are coalesced per portal as for calls.
            tracing::debug!(member_id = ?member_id, activity = ?g("data[FIELDS][ID]"), "activity update");
            sync::on_activity_update(&state, portal).await;
        }
        other => tracing::debug!(event = ?other, "event ignored"),
    }
    Ok((StatusCode::OK, "OK").into_response())
}

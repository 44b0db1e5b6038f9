//! The application's life on a portal: the install (the iframe install of a UI application or the
//! `ONAPPINSTALL` event of an API-only one: the portal, its tokens and application token are stored, the call-end
//! and uninstall events bound, `BX24.installFinish()` answered), and the events Bitrix24 sends afterwards, each
//! checked against the portal's application token: a call end starts continuous sync's pass, an uninstall stops
//! the portal's work and deletes its secrets.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use b24sense_store::{Installation, PortalStatus};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use url::Url;

use crate::api_error::TextError;
use crate::frame::{
    client_endpoint_for, endpoint_allowed, expires_in, page_response, verify_user, BitrixForm,
};
use crate::i18n::{self, lang_of, Lang, Msg};
use crate::session::same_secret;
use crate::trigger::Trigger;
use crate::{sync, AppState};

/// The install data, from either form of the install.
struct InstallForm {
    /// The `ONAPPINSTALL` event (an API-only application); else the iframe install.
    event: bool,
    member_id: String,
    domain: String,
    access: String,
    refresh: String,
    server: String,
    app_token: String,
    expires_in: String,
    lang: Lang,
}

impl InstallForm {
    fn read(f: &BitrixForm) -> InstallForm {
        let g = |k: &str| f.field(k);
        let event = g("event") == "ONAPPINSTALL";
        // The event's field names, then the iframe's.
        let name = |in_event: &'static str, in_frame: &'static str| {
            g(if event { in_event } else { in_frame })
        };
        InstallForm {
            event,
            member_id: name("auth[member_id]", "member_id"),
            domain: name("auth[domain]", "DOMAIN"),
            access: name("auth[access_token]", "AUTH_ID"),
            refresh: name("auth[refresh_token]", "REFRESH_ID"),
            server: name("auth[server_endpoint]", "SERVER_ENDPOINT"),
            app_token: name("auth[application_token]", "APPLICATION_TOKEN"),
            expires_in: name("auth[expires_in]", "AUTH_EXPIRES"),
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
    if [
        &i.member_id,
        &i.domain,
        &i.access,
        &i.refresh,
        &i.server,
        &i.app_token,
    ]
    .iter()
    .any(|v| v.is_empty())
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            Msg::InstallIncomplete.text(lang),
        ));
    }
    let client_endpoint = if i.event {
        Url::parse(&f.field("auth[client_endpoint]"))
            .ok()
            .filter(|u| endpoint_allowed(&state, u))
    } else {
        client_endpoint_for(&state, &i.domain, f.raw("PROTOCOL"))
    };
    let client_endpoint = client_endpoint
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "bad DOMAIN / client_endpoint"))?;
    let server_endpoint = Url::parse(&i.server)
        .ok()
        .filter(|u| endpoint_allowed(&state, u))
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "bad SERVER_ENDPOINT"))?;
    let oauth_host = match (server_endpoint.host_str(), server_endpoint.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    if !state
        .config
        .oauth_servers
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&oauth_host))
    {
        tracing::warn!(server = %oauth_host, "install refused: SERVER_ENDPOINT is not a known OAuth server");
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "SERVER_ENDPOINT is not a Bitrix24 OAuth server",
        ));
    }
    // An installed portal keeps its domain: a request naming another one cannot take it over.
    if let Ok(Some(p)) = state.store.portal(&state.key, &i.member_id).await {
        if p.status == PortalStatus::Installed && !p.domain.eq_ignore_ascii_case(&i.domain) {
            state.metrics.events_rejected.inc();
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "member_id is installed on another domain",
            ));
        }
    }
    // The token must work on the portal and belong to an administrator.
    match verify_user(&state, &client_endpoint, &i.access).await {
        Ok(p) if p.admin => {}
        Ok(_) => {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                Msg::InstallAdminOnly.text(lang),
            ))
        }
        Err(e) => {
            tracing::warn!(domain = %i.domain, error = %e, "install: the portal did not accept the token");
            return Err(refuse(
                StatusCode::FORBIDDEN,
                Msg::InstallNotConfirmed.text(lang),
            ));
        }
    }
    let inst = Installation {
        member_id: i.member_id.clone(),
        domain: i.domain.to_ascii_lowercase(),
        client_endpoint: client_endpoint.to_string(),
        server_endpoint: server_endpoint.to_string(),
        application_token: SecretString::from(i.app_token),
        access_token: SecretString::from(i.access),
        refresh_token: SecretString::from(i.refresh),
        expires_at: Utc::now() + chrono::Duration::seconds(expires_in(&i.expires_in)),
        lang: Some(i18n::code(lang).to_string()),
    };
    if let Err(e) = state.store.install_portal(&state.key, &inst).await {
        tracing::error!(error = %e, "install: cannot store the portal");
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot store the installation",
        ));
    }
    state.metrics.installs.inc();
    tracing::info!(member_id = %i.member_id, domain = %inst.domain, "application installed");
    bind_events(&state, &i.member_id).await;
    if i.event {
        return Ok((StatusCode::OK, "OK").into_response());
    }
    let title = Msg::Installed.text(lang);
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <script src=\"//api.bitrix24.com/api/v1/\"></script></head><body><p>{title}</p>\
         <script>if (window.BX24) {{ BX24.init(function () {{ BX24.installFinish(); }}); }}</script></body></html>"
    );
    Ok(page_response(
        &inst.domain,
        &client_endpoint,
        Html(html).into_response(),
        true,
    ))
}

/// Binds the call-end and uninstall events to our handler (re-binding an existing handler is an idempotent error).
async fn bind_events(state: &AppState, member_id: &str) {
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
    let handler = state
        .config
        .public_url
        .join("events")
        .map(|u| u.to_string())
        .unwrap_or_default();
    for ev in ["ONVOXIMPLANTCALLEND", "ONAPPUNINSTALL"] {
        if let Err(e) = client
            .call("event.bind", json!({"event": ev, "handler": handler}))
            .await
        {
            let msg = e.to_string();
            if !msg.contains("already binded") {
                tracing::warn!(event = ev, error = %msg, "install: event.bind failed");
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
    let portal = match state.store.portal(&state.key, &member_id).await {
        Ok(Some(p)) if p.status == PortalStatus::Installed => p,
        _ => {
            state.metrics.events_rejected.inc();
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
        tracing::warn!(member_id = %member_id, "event with a wrong application token rejected");
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
                    tracing::info!(member_id = %member_id, "application uninstalled; secrets deleted");
                }
                Err(e) => tracing::error!(member_id = %member_id, error = %e, "uninstall failed"),
            }
        }
        "ONVOXIMPLANTCALLEND" => {
            // The event carries no statistic ID or recording: a run reads the call back (and the ledger skips
            // what is done); an event during a run asks for one more pass.
            if !state.runner.poke(&member_id) {
                if let Err(e) = sync::start_for(&state, portal, Trigger::Event, true).await {
                    tracing::debug!(member_id = %member_id, reason = %e, "call-end event: no run started");
                }
            }
        }
        other => tracing::debug!(event = other, "event ignored"),
    }
    Ok((StatusCode::OK, "OK").into_response())
}

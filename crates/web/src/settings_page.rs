//! Opening the settings page: Bitrix24 POSTs the placement form into the portal's iframe; the portal must be
//! installed (everything is checked against what the store holds, never the request's domain), the user's
//! token must work and belong to an administrator. The answer is the page with a signed session token and its
//! CSRF token, framable only by the portal.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use b24sense_store::{Portal, PortalStatus};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::api_error::TextError;
use crate::frame::{expires_in, page_response, verify_user, BitrixForm};
use crate::i18n::{lang_of, Msg};
use crate::page;
use crate::session::{same_secret, Session};
use crate::AppState;

pub async fn app_page(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, TextError> {
    let f = BitrixForm::parse(query.as_deref(), &body);
    let g = |k: &str| f.field(k);
    let lang = lang_of(f.raw("LANG"));
    let deny = |msg: Msg| TextError::new(StatusCode::FORBIDDEN, msg.text(lang));
    let portal = match state.store.portal(&state.key, &g("member_id")).await {
        Ok(Some(p)) if p.status == PortalStatus::Installed => p,
        Ok(_) => return Err(deny(Msg::NotInstalledHere)),
        Err(e) => {
            tracing::error!(error = %e, "settings page: store error");
            return Err(TextError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
            ));
        }
    };
    if !portal.domain.eq_ignore_ascii_case(&g("DOMAIN")) {
        return Err(deny(Msg::PortalMismatch));
    }
    let app_token = g("APPLICATION_TOKEN");
    if !app_token.is_empty()
        && !portal
            .application_token
            .as_ref()
            .is_some_and(|t| same_secret(t.expose_secret(), &app_token))
    {
        return Err(deny(Msg::WrongAppToken));
    }
    let Ok(client_endpoint) = Url::parse(&portal.client_endpoint) else {
        return Err(TextError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored client_endpoint is unusable",
        ));
    };
    let user = match verify_user(&state, &client_endpoint, &g("AUTH_ID")).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(member_id = ?portal.member_id, error = ?e, "settings page: session not confirmed");
            return Err(deny(Msg::SessionNotConfirmed));
        }
    };
    if !user.admin {
        return Err(deny(Msg::SettingsAdminOnly));
    }
    keep_frame_tokens(&state, &portal, &f).await;
    let session = Session {
        member_id: portal.member_id.clone(),
        user_id: user.id,
        lang,
        generation: portal.generation,
        expires: 0,
    };
    let (token, csrf) = issue(&state, session);
    let sdk = &state.config.bitrix24_sdk;
    let html = page::render(lang, &token, &csrf, &portal.domain, sdk);
    Ok(page_response(
        &portal.domain,
        &client_endpoint,
        Html(html).into_response(),
        sdk,
        false,
    ))
}

/// Signs `session` with a fresh idle expiry (now + `session_ttl`): the session token and its CSRF token.
pub fn issue(state: &AppState, mut session: Session) -> (String, String) {
    session.expires = Utc::now().timestamp() + state.config.session_ttl.as_secs() as i64;
    let token = state.signer.sign(&session);
    let csrf = state.signer.csrf(&token);
    (token, csrf)
}

/// The frame brought a fresh, verified token pair of an administrator: keep it, so an installation whose
/// stored refresh token aged out (idle for weeks) recovers whenever an admin opens the page.
async fn keep_frame_tokens(state: &AppState, portal: &Portal, f: &BitrixForm) {
    let refresh_id = f.field("REFRESH_ID");
    if refresh_id.is_empty() {
        return;
    }
    let Ok(Some(current)) = state
        .store
        .portal_tokens(&state.key, &portal.member_id)
        .await
    else {
        return;
    };
    let stored = state
        .store
        .rotate_tokens(
            &state.key,
            &portal.member_id,
            current.version,
            &SecretString::from(f.field("AUTH_ID")),
            &SecretString::from(refresh_id),
            Utc::now() + chrono::Duration::seconds(expires_in(&f.field("AUTH_EXPIRES"))),
        )
        .await;
    if let Err(e) = stored {
        tracing::warn!(member_id = %portal.member_id, error = %e, "could not keep the page's tokens");
    }
}

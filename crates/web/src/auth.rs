//! Who an API call comes from, as extractors: [`PageSession`] (the page's signed session token in
//! `Authorization: Bearer`, and its installed portal) for reads, [`WriteSession`] (the same plus the session's
//! CSRF token in `X-CSRF-Token`) for changes. A handler that takes one never runs for a caller without it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use b24sense_store::{Portal, PortalStatus};
use chrono::Utc;

use crate::api_error::ApiError;
use crate::session::Session;
use crate::AppState;

/// A valid, unexpired session of an installed portal, issued for its current installation (generation).
pub struct PageSession {
    pub session: Session,
    pub portal: Portal,
}

/// A [`PageSession`] whose request also carries the session's CSRF token: allowed to change things.
pub struct WriteSession(pub PageSession);

fn bearer(parts: &Parts) -> &str {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// The session of `token`, then (with `csrf`) the CSRF check, then the portal from the store.
async fn authorize(
    state: &AppState,
    token: &str,
    csrf: Option<&str>,
) -> Result<PageSession, ApiError> {
    let session = state
        .signer
        .check(token, Utc::now().timestamp())
        .ok_or(ApiError::SessionExpired)?;
    if let Some(csrf) = csrf {
        if !state.signer.check_csrf(token, csrf) {
            return Err(ApiError::BadCsrf);
        }
    }
    match state.store.portal(&state.key, &session.member_id).await {
        // Issued for an installation that is gone (reinstalled since, or uninstalled and installed again).
        Ok(Some(portal))
            if portal.status == PortalStatus::Installed
                && portal.generation != session.generation =>
        {
            Err(ApiError::SessionExpired)
        }
        Ok(Some(portal)) if portal.status == PortalStatus::Installed => {
            Ok(PageSession { session, portal })
        }
        Ok(_) => Err(ApiError::NotInstalled),
        Err(e) => {
            tracing::warn!(error = %e, "api: cannot read the session's portal");
            Err(ApiError::StoreUnavailable)
        }
    }
}

impl FromRequestParts<Arc<AppState>> for PageSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authorize(state, bearer(parts), None).await
    }
}

impl FromRequestParts<Arc<AppState>> for WriteSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let csrf = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        authorize(state, bearer(parts), Some(csrf))
            .await
            .map(WriteSession)
    }
}

//! The emulator as the application's OAuth server: `GET /oauth/token/` with `grant_type=refresh_token` and
//! refresh-token rotation (a used refresh token and the access token issued with it die). As the real one, the
//! answer names the portal the refresh token belongs to (`member_id`, `client_endpoint`, `server_endpoint`;
//! `domain` is the OAuth server's host): applications prove an install with it. A token this server did not
//! issue (another portal's, a made-up one) is `invalid_grant`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::Response;
use serde_json::json;

use super::state::{client_endpoint, server_endpoint, CLIENT_ID, CLIENT_SECRET, SCOPE};
use crate::bitrix24::clock::now_unix_secs;
use crate::bitrix24::error::ApiError;
use crate::bitrix24::params;
use crate::bitrix24::reply::{error_response, json_response};
use crate::bitrix24::state::PortalState;

/// `GET /oauth/token/?grant_type=refresh_token&client_id=…&client_secret=…&refresh_token=…`
pub(crate) async fn oauth_token(
    State(inner): State<Arc<PortalState>>,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    let p = params::from_form(query.as_deref().unwrap_or(""));
    let text = |name: &str| p.text_ci(name);
    let err = |status: u16, code: &str, desc: &str| {
        error_response(&inner, &ApiError::new(status, code, desc))
    };
    if text("client_id") != CLIENT_ID || text("client_secret") != CLIENT_SECRET {
        return err(401, "invalid_client", "Invalid client credentials");
    }
    if text("grant_type") != "refresh_token" {
        return err(400, "invalid_request", "Unsupported grant_type");
    }
    let old = text("refresh_token");
    let user_id = {
        let mut s = inner.app.lock();
        match s.refresh.remove(&old) {
            Some(u) => {
                // Rotation: the used refresh token and the access token issued with it are gone.
                s.access.retain(|_, t| t.refresh != old);
                s.refreshes += 1;
                u
            }
            None => {
                s.refresh_rejected += 1;
                drop(s);
                return err(400, "invalid_grant", "Invalid grant");
            }
        }
    };
    let (access, refresh) = inner.app.issue(user_id);
    let ttl = inner.app.ttl().as_secs();
    let now = now_unix_secs();
    json_response(
        &inner,
        200,
        &json!({
            "access_token": access, "refresh_token": refresh, "expires_in": ttl, "expires": now + ttl,
            "client_endpoint": client_endpoint(&inner), "server_endpoint": server_endpoint(&inner),
            "domain": "oauth.bitrix.info", "member_id": inner.app.member_id, "scope": SCOPE,
            "status": "L", "user_id": user_id,
        }),
    )
}

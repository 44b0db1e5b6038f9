//! The REST routes: `/rest/{uid}/{secret}/{method}` (webhook) and `/rest/{method}` (OAuth token) — who is
//! calling, the parameters (query + body), the leaky bucket, the method and the portal's envelope around its
//! result (`result`, `next`, `total`, `time`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::app;
use super::error::ApiError;
use super::methods::{normalize_method, Ctx};
use super::params::{self, P};
use super::recordings::webhook_download_auth;
use super::reply::{error_response, json_response};
use super::state::PortalState;

/// One REST request as it arrived.
struct RestRequest {
    method: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

impl RestRequest {
    /// Query + body, body wins; JSON only for `Content-Type: application/json`, PHP form decoding otherwise.
    fn params(&self) -> P {
        let mut p = self
            .query
            .as_deref()
            .map_or_else(P::empty_map, params::from_form);
        if self.body.is_empty() {
            return p;
        }
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body_p = if ct.starts_with("application/json") {
            params::from_json(&self.body).unwrap_or_else(P::empty_map)
        } else if ct.starts_with("multipart/") {
            P::empty_map()
        } else {
            params::from_form(&String::from_utf8_lossy(&self.body))
        };
        p.merge(body_p);
        p
    }
}

/// The token of `Authorization: Bearer …`, if any.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|s| s.trim().to_string())
}

/// `/rest/{uid}/{secret}/{method}`
pub(crate) async fn rest_webhook(
    State(inner): State<Arc<PortalState>>,
    Path((uid, secret, method)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let auth = if uid.parse::<u64>().ok() == Some(inner.config.webhook_user)
        && secret == inner.config.webhook_secret
    {
        Ok(Ctx {
            cred: format!("webhook:{uid}"),
            user_id: inner.config.webhook_user,
            webhook: true,
            download_auth: webhook_download_auth(&inner.config),
        })
    } else {
        Err(ApiError::new(
            401,
            "INVALID_CREDENTIALS",
            "Invalid request credentials",
        ))
    };
    let req = RestRequest {
        method,
        query,
        headers,
        body,
    };
    rest(inner, auth, req).await
}

/// `/rest/{method}` with an OAuth access token (`auth`/`access_token` parameter or `Authorization: Bearer`).
pub(crate) async fn rest_token(
    State(inner): State<Arc<PortalState>>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req = RestRequest {
        method,
        query,
        headers,
        body,
    };
    let p = req.params();
    let token = p
        .get_ci("auth")
        .or_else(|| p.get_ci("access_token"))
        .and_then(P::as_text)
        .or_else(|| bearer_token(&req.headers));
    let issued = token.as_deref().and_then(|t| app::authorize(&inner, t));
    let auth = match token.filter(|t| !t.is_empty()) {
        _ if issued.is_some() => issued.unwrap_or_else(|| Err(ApiError::method_not_found())),
        _ if inner.config.access_tokens.is_empty() => Err(ApiError::no_auth()),
        None => Err(ApiError::no_auth()),
        Some(t) if inner.config.access_tokens.contains(&t) => Ok(Ctx {
            cred: format!("token:{}", hex::encode(&Sha256::digest(t.as_bytes())[..6])),
            user_id: inner.config.webhook_user,
            webhook: false,
            download_auth: t,
        }),
        Some(_) => Err(ApiError::new(
            401,
            "invalid_token",
            "The access token provided is invalid.",
        )),
    };
    rest(inner, auth, req).await
}

/// Answers, then waits out the configured latency.
async fn rest(
    inner: Arc<PortalState>,
    auth: Result<Ctx, ApiError>,
    req: RestRequest,
) -> Response<Body> {
    let response = answer(&inner, auth, &req);
    if !inner.config.latency.is_zero() {
        tokio::time::sleep(inner.config.latency).await;
    }
    response
}

fn answer(inner: &PortalState, auth: Result<Ctx, ApiError>, req: &RestRequest) -> Response<Body> {
    if !inner.admit() {
        return error_response(inner, &ApiError::query_limit());
    }
    let ctx = match auth {
        Ok(c) => c,
        Err(e) => return error_response(inner, &e),
    };
    let method = normalize_method(&req.method);
    let p = req.params();
    inner.stats().count_method(&method);
    match inner.call_method(&ctx, &method, &p) {
        Ok((res, time)) => {
            let mut env = json!({"result": res.result});
            if let Some(n) = res.next {
                env["next"] = json!(n);
            }
            if let Some(t) = res.total {
                env["total"] = json!(t);
            }
            env["time"] = time;
            json_response(inner, 200, &env)
        }
        Err(e) => error_response(inner, &e),
    }
}

//! HTTP answers in the portal's shape: JSON with its content type, counted in the bytes sent when the portal
//! itself answers (injected faults are not counted).

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use serde_json::Value;

use super::error::ApiError;
use super::state::PortalState;

/// A JSON answer (`application/json; charset=utf-8`) of these bytes, not counted.
pub(crate) fn json_bytes(status: u16, bytes: impl Into<Body>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(bytes.into())
        .unwrap_or_default()
}

/// The portal's JSON answer, counted in [`PortalStats::bytes_sent`](super::PortalStats::bytes_sent).
pub(crate) fn json_response(inner: &PortalState, status: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    inner
        .bytes_sent
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    json_bytes(status, bytes)
}

/// The portal's error envelope with its status.
pub(crate) fn error_response(inner: &PortalState, e: &ApiError) -> Response<Body> {
    json_response(inner, e.status, &e.body())
}

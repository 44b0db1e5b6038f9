//! How a request fails, as an HTTP answer: [`ApiError`] for the JSON API (`{"error": …}` or field errors),
//! [`TextError`] for what Bitrix24 posts (install, the settings page) and the probes. Internal causes are
//! logged where they happen; the answer carries only what the caller can act on.

use std::collections::BTreeMap;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A failed API call.
#[derive(Debug)]
pub enum ApiError {
    /// No session, a forged or an expired one.
    SessionExpired,
    /// A change without the session's CSRF token.
    BadCsrf,
    /// The session's portal uninstalled the application.
    NotInstalled,
    /// The store could not be read.
    StoreUnavailable,
    /// Fields the user must fix: `field → message` (422).
    Fields(BTreeMap<String, String>),
    /// Settings not saved because SpeechSense refused them and the administrator did not confirm "save anyway"
    /// (422): the check's words next to `field`, and what to do.
    Unverified {
        field: &'static str,
        check: String,
        message: String,
    },
    /// A failure with a message meant for the page.
    Status(StatusCode, String),
}

impl ApiError {
    pub fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::Status(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Fields(errors) => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({"errors": errors})),
                )
                    .into_response()
            }
            ApiError::Unverified {
                field,
                check,
                message,
            } => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({"errors": {field: check}, "unverified": true, "error": message})),
                )
                    .into_response()
            }
            ApiError::SessionExpired => (
                StatusCode::UNAUTHORIZED,
                "session expired: open the application again".to_string(),
            ),
            ApiError::BadCsrf => (StatusCode::FORBIDDEN, "missing or wrong CSRF token".into()),
            ApiError::NotInstalled => (
                StatusCode::FORBIDDEN,
                "the application is not installed".into(),
            ),
            ApiError::StoreUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "store unavailable".into())
            }
            ApiError::Status(status, message) => (status, message),
        };
        (status, Json(json!({"error": message}))).into_response()
    }
}

/// A plain-text failure.
#[derive(Debug)]
pub struct TextError(pub StatusCode, pub String);

impl TextError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> TextError {
        TextError(status, message.into())
    }
}

impl IntoResponse for TextError {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

//! The crate's one error enum and the typed Bitrix24 API error.
//!
//! *What* an error means for the work is [`Error::class`] (core's [`ErrorClass`]); *when* to retry inside one
//! request is the client's retry loop. Nothing here ever contains a webhook secret, an access token or a
//! `DOWNLOAD_URL` query: reqwest errors are stored without their URL.

use std::fmt;
use std::time::Duration;

use b24sense_core::ErrorClass;

/// A Bitrix24 error code the client acts on, or the raw code for anything else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ApiErrorKind {
    QueryLimitExceeded,
    OperationTimeLimit,
    OverloadLimit,
    ExpiredToken,
    InvalidToken,
    NoAuthFound,
    InvalidCredentials,
    InvalidRequest,
    InsufficientScope,
    UserAccessError,
    AuthorizationError,
    ApplicationNotFound,
    ConnectionError,
    AccessDenied,
    WrongAuthType,
    WrongLicense,
    MethodConfirmWaiting,
    MethodConfirmDenied,
    MethodNotFound,
    Argument,
    Core,
    NotFound,
    InternalServerError,
    UnexpectedAnswer,
    PortalDeleted,
    BatchLengthExceeded,
    BatchMethodNotAllowed,
    WrongEncoding,
    Other(String),
}

impl ApiErrorKind {
    /// Reads a code; an empty code (some CRM methods) is classified by its description.
    pub fn from_code(code: &str, description: &str) -> ApiErrorKind {
        use ApiErrorKind::*;
        let code = code.trim();
        if code.is_empty() {
            let d = description.trim().to_ascii_lowercase();
            return if d.starts_with("not found") {
                NotFound
            } else if d.starts_with("access denied") {
                AccessDenied
            } else if d.contains("not defined or invalid") {
                Argument
            } else {
                Other(String::new())
            };
        }
        match code.to_ascii_uppercase().as_str() {
            "QUERY_LIMIT_EXCEEDED" => QueryLimitExceeded,
            "OPERATION_TIME_LIMIT" => OperationTimeLimit,
            "OVERLOAD_LIMIT" => OverloadLimit,
            "EXPIRED_TOKEN" => ExpiredToken,
            "INVALID_TOKEN" => InvalidToken,
            "NO_AUTH_FOUND" => NoAuthFound,
            "INVALID_CREDENTIALS" => InvalidCredentials,
            "INVALID_REQUEST" => InvalidRequest,
            "INSUFFICIENT_SCOPE" => InsufficientScope,
            "USER_ACCESS_ERROR" => UserAccessError,
            "AUTHORIZATION_ERROR" => AuthorizationError,
            "APPLICATION_NOT_FOUND" => ApplicationNotFound,
            "CONNECTION_ERROR" => ConnectionError,
            "ACCESS_DENIED" => AccessDenied,
            "WRONG_AUTH_TYPE" => WrongAuthType,
            "WRONG_LICENSE" => WrongLicense,
            "METHOD_CONFIRM_WAITING" => MethodConfirmWaiting,
            "METHOD_CONFIRM_DENIED" => MethodConfirmDenied,
            "ERROR_METHOD_NOT_FOUND" => MethodNotFound,
            "ERROR_ARGUMENT" => Argument,
            "ERROR_CORE" => Core,
            "ERROR_NOT_FOUND" | "NOT_FOUND" => NotFound,
            "INTERNAL_SERVER_ERROR" => InternalServerError,
            "ERROR_UNEXPECTED_ANSWER" => UnexpectedAnswer,
            "PORTAL_DELETED" => PortalDeleted,
            "ERROR_BATCH_LENGTH_EXCEEDED" => BatchLengthExceeded,
            "ERROR_BATCH_METHOD_NOT_ALLOWED" => BatchMethodNotAllowed,
            "WRONG_ENCODING" => WrongEncoding,
            _ => Other(code.to_string()),
        }
    }

    /// Server-side faults worth repeating the same request for.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiErrorKind::QueryLimitExceeded
                | ApiErrorKind::OperationTimeLimit
                | ApiErrorKind::InternalServerError
                | ApiErrorKind::UnexpectedAnswer
                | ApiErrorKind::ConnectionError
        )
    }
}

/// A Bitrix24 error envelope `{"error": CODE, "error_description": TEXT}` with the HTTP status it came with
/// (200 for errors inside a batch's `result_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub description: String,
    pub status: u16,
}

impl ApiError {
    pub fn new(code: impl Into<String>, description: impl Into<String>, status: u16) -> ApiError {
        ApiError {
            code: code.into(),
            description: description.into(),
            status,
        }
    }

    pub fn kind(&self) -> ApiErrorKind {
        ApiErrorKind::from_code(&self.code, &self.description)
    }

    /// What this error means for the work (classified by code, never by HTTP status alone).
    pub fn class(&self) -> ErrorClass {
        use ApiErrorKind::*;
        match self.kind() {
            QueryLimitExceeded | InternalServerError | UnexpectedAnswer | ConnectionError => {
                ErrorClass::Retryable { after: None }
            }
            OperationTimeLimit => ErrorClass::Retryable {
                after: Some(Duration::from_secs(60)),
            },
            // Nothing else can work on this portal with these credentials.
            OverloadLimit | ExpiredToken | InvalidToken | NoAuthFound | InvalidCredentials
            | InvalidRequest | InsufficientScope | UserAccessError | AuthorizationError
            | ApplicationNotFound | WrongAuthType | MethodConfirmWaiting | MethodConfirmDenied
            | MethodNotFound | PortalDeleted => ErrorClass::Fatal,
            AccessDenied if self.description.to_ascii_lowercase().contains("commercial") => {
                ErrorClass::Fatal
            }
            _ => ErrorClass::Permanent,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = if self.code.is_empty() {
            "(no code)"
        } else {
            &self.code
        };
        write!(
            f,
            "Bitrix24 error {code} (HTTP {}): {}",
            self.status, self.description
        )
    }
}

impl std::error::Error for ApiError {}

/// Everything that can go wrong talking to a Bitrix24 portal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The webhook URL is unusable; the message says why (never the secret).
    #[error("invalid Bitrix24 webhook URL: {0}")]
    InvalidWebhook(String),
    /// Client configuration or arguments are unusable (bad method name, >50 batch commands, …).
    #[error("invalid Bitrix24 request: {0}")]
    InvalidArgument(String),
    /// The portal answered with an error envelope.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The portal answered with a non-JSON body (proxy HTML page, empty body) and status `status`.
    #[error("Bitrix24 answered HTTP {status} without a JSON envelope: {detail}")]
    Http { status: u16, detail: String },
    /// The body looked like JSON but was truncated or not an envelope.
    #[error("malformed Bitrix24 response: {0}")]
    Malformed(String),
    /// Connection refused/reset, timeout, TLS failure … (the URL is never included).
    #[error("transport error talking to Bitrix24: {message}")]
    Transport { message: String, timeout: bool },
    /// The portal redirected in a way we do not follow (loop, missing `Location`, foreign path).
    #[error("Bitrix24 redirect not followed: {0}")]
    Redirect(String),
    /// A recording download got an HTTP error status.
    #[error("recording download failed with HTTP {status}")]
    Download { status: u16 },
    /// The portal refused a download link (`expired_token` for a `DOWNLOAD_URL` minted with an old access token, a
    /// deleted file …): the link is dead, not the portal — ask `disk.file.get` for a new one.
    #[error("recording link refused: {0}")]
    DownloadLink(ApiError),
    /// The OAuth token source failed.
    #[error("Bitrix24 OAuth token unavailable: {0}")]
    Token(String),
}

impl Error {
    /// What this error means for the work (retry later, skip the item, stop the run).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidWebhook(_) | Error::Token(_) | Error::Redirect(_) => ErrorClass::Fatal,
            Error::InvalidArgument(_) => ErrorClass::Permanent,
            Error::Api(e) => e.class(),
            Error::Http { status, .. } => match status {
                429 | 500..=599 | 200..=299 => ErrorClass::Retryable { after: None },
                // An HTML 401/403/404 means the URL does not point at a Bitrix24 REST endpoint at all.
                401 | 403 | 404 => ErrorClass::Fatal,
                _ => ErrorClass::Permanent,
            },
            Error::Malformed(_) | Error::Transport { .. } => ErrorClass::Retryable { after: None },
            Error::DownloadLink(_) => ErrorClass::Permanent,
            Error::Download { status } => match status {
                403 | 404 | 410 => ErrorClass::Permanent,
                _ => ErrorClass::Retryable { after: None },
            },
        }
    }

    /// The Bitrix24 error code, when the portal sent one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Error::Api(e) | Error::DownloadLink(e) => Some(e.code.as_str()),
            _ => None,
        }
    }

    pub(crate) fn transport(e: reqwest::Error) -> Error {
        // `without_url`: the URL holds the webhook secret or a download token.
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error::Transport {
            message,
            timeout: e.is_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_by_code_and_description() {
        for (code, description, status, kind) in [
            (
                "QUERY_LIMIT_EXCEEDED",
                "x",
                503,
                ApiErrorKind::QueryLimitExceeded,
            ),
            ("", "Not found", 400, ApiErrorKind::NotFound),
            ("", "Access denied", 400, ApiErrorKind::AccessDenied),
            ("expired_token", "", 401, ApiErrorKind::ExpiredToken),
            ("FOO", "", 400, ApiErrorKind::Other("FOO".into())),
        ] {
            assert_eq!(
                ApiError::new(code, description, status).kind(),
                kind,
                "{code} {description:?}"
            );
        }
        for (code, status, class) in [
            ("INVALID_CREDENTIALS", 401, ErrorClass::Fatal),
            ("ERROR_NOT_FOUND", 400, ErrorClass::Permanent),
        ] {
            assert_eq!(ApiError::new(code, "", status).class(), class, "{code}");
        }
        assert!(ApiError::new("INTERNAL_SERVER_ERROR", "", 500)
            .class()
            .is_retryable());
        assert_eq!(
            Error::Download { status: 410 }.class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            Error::Api(ApiError::new("X", "", 400)).api_code(),
            Some("X")
        );
    }
}

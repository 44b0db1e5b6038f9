//! The web crate's one error type.

/// What went wrong while serving the application. Messages never contain tokens or keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] b24sense_store::Error),
    #[error(transparent)]
    Bitrix24(#[from] b24sense_bitrix24::Error),
    #[error(transparent)]
    SpeechSense(#[from] b24sense_speechsense::Error),
    /// The request is not from an installed portal or its session is invalid.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The OAuth server refused to refresh the portal's tokens (`invalid_grant`: the refresh token expired or
    /// was used; `invalid_client`, `PAYMENT_REQUIRED`, …). Only opening the application or reinstalling it helps.
    #[error("the OAuth server refused the refresh: {code} ({description}) — open the application in Bitrix24 again or reinstall it")]
    RefreshRefused { code: String, description: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

//! Client configuration and credentials.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// The production gRPC endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://api.speechsense.yandexcloud.net:443";

/// How the client authenticates. `Debug` shows only the kind, never the secret.
#[derive(Clone)]
pub enum Credentials {
    /// Service-account API key secret: `authorization: Api-Key <secret>`.
    ApiKey(SecretString),
    /// IAM token: `authorization: Bearer <token>`.
    Bearer(SecretString),
}

impl Credentials {
    pub fn api_key(secret: impl Into<String>) -> Self {
        Credentials::ApiKey(SecretString::from(secret.into()))
    }

    pub fn bearer(token: impl Into<String>) -> Self {
        Credentials::Bearer(SecretString::from(token.into()))
    }

    /// The `authorization` header value. Only called when building a request.
    pub(crate) fn header_value(&self) -> String {
        match self {
            Credentials::ApiKey(s) => format!("Api-Key {}", s.expose_secret()),
            Credentials::Bearer(s) => format!("Bearer {}", s.expose_secret()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey([REDACTED])"),
            Credentials::Bearer(_) => f.write_str("Bearer([REDACTED])"),
        }
    }
}

/// Where and how to reach SpeechSense.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:port` (TLS with webpki + native roots) or `http://host:port` (plaintext h2c, emulator).
    pub endpoint: String,
    pub credentials: Credentials,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Deadline of unary calls (UploadText, Search) and of the wait for the answer after a stream was fully sent.
    pub unary_timeout: Duration,
    /// Deadline of the whole connection check.
    pub check_timeout: Duration,
}

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>, credentials: Credentials) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            credentials,
            connect_timeout: Duration::from_secs(10),
            unary_timeout: Duration::from_secs(30),
            check_timeout: Duration::from_secs(15),
        }
    }

    /// The production endpoint with these credentials.
    pub fn production(credentials: Credentials) -> Self {
        ClientConfig::new(DEFAULT_ENDPOINT, credentials)
    }
}

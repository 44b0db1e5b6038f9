//! b24sense-bitrix24 — a plain Bitrix24 REST client. It knows nothing of SpeechSense, the ledger or the engine.
//!
//! It owns (facts in `shared/spec/bitrix24-api.md`):
//! - transport and auth: incoming webhook or OAuth token source (§1.1), JSON bodies, PHP query encoding for
//!   batch commands (§1.2), lenient envelopes and typed errors (§1.3–1.5);
//! - limits: one GCRA request limiter per client with headroom, the per-method operating-time tracker, and the
//!   retry policy of §2.4 (backoff with jitter, token refresh once, 302 portal renames);
//! - the calls b24sense needs: keyset-paged call history in one batch ([`Bitrix24Client::list_calls`]),
//!   name lookups, `disk.file.get` download links, `profile`, and streaming recording downloads.

mod auth;
mod client;
mod envelope;
mod error;
mod limits;
mod methods;
mod php;

pub use auth::{AccessToken, Credentials, TokenSource, WebhookUrl};
pub use client::{Bitrix24Client, ClientConfig, ClientStats, Download};
pub use envelope::{ApiResponse, BatchResponse, ResponseTime};
pub use error::{ApiError, ApiErrorKind, Error};
pub use limits::{RatePlan, RequestLimiter};
pub use methods::{CallChunk, Lookup, Profile};
pub use php::encode_php_query;

/// Re-exported so implementors of [`TokenSource`] need no direct `futures` dependency.
pub use futures::future::BoxFuture;

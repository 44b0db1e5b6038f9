//! b24sense-bitrix24 — a plain Bitrix24 REST client. It knows nothing of SpeechSense, the ledger or the engine.
//!
//! It owns:
//! - transport and auth (`auth`): an incoming webhook or an OAuth token source; JSON bodies; PHP query encoding
//!   for batch commands (`php`); lenient response envelopes (`envelope`) and typed errors (`error`);
//! - limits (`limits`): one GCRA request limiter per client with headroom, the per-method operating-time tracker;
//! - the client (`client`): the retry policy (backoff with jitter, token refresh once, 302 portal renames) and
//!   streaming recording downloads;
//! - the calls b24sense needs (`methods`): keyset-paged call history in one batch ([`Bitrix24Client::list_calls`]),
//!   name lookups, `disk.file.get` download links, `profile`;
//! - Open Lines chats (`openlines`): finished sessions from their CRM activities, batched like the call listing
//!   ([`Bitrix24Client::list_chat_sessions`]), and their histories 50 per request ([`Bitrix24Client::chat_sessions`]).

mod auth;
mod client;
mod envelope;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod limits;
mod methods;
mod openlines;
mod php;

pub use auth::{AccessToken, Credentials, TokenSource, WebhookUrl};
pub use client::{is_public, Bitrix24Client, ClientConfig, ClientStats, Download, PublicOnly};
pub use envelope::{ApiResponse, BatchResponse, ResponseTime};
pub use error::{ApiError, ApiErrorKind, Error};
pub use limits::{RatePlan, RequestLimiter};
pub use methods::{CallChunk, Lookup, Profile};
pub use openlines::{SessionPage, SessionRead, ACTIVITY_SELECT};
pub use php::encode_php_query;

/// Re-exported so implementors of [`TokenSource`] need no direct `futures` dependency.
pub use futures::future::BoxFuture;

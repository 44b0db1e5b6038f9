//! b24sense-emulators — faithful stand-ins for the two services b24sense talks to, for tests, the demo and benchmarks.
//!
//! - [`bitrix24`]: a Bitrix24 portal's REST API (axum) over a generated, deterministic portal, with the portal's leaky
//!   bucket, batch, keyset paging, recordings and fault injection.
//! - [`speechsense`]: Yandex SpeechSense's `TalkService` (tonic) that checks key and connection in the real
//!   service's order, validates metadata and stream order, keeps talks in memory for assertions, and injects faults
//!   (statuses before or after the store, server stream resets). Its server stub is generated here (`build.rs`) over
//!   the client crate's wire types, so the production client ships no server code.
//!
//! Never a dependency of production library crates; only the binary (for `emulate`/`demo`) and tests use it.

pub mod bitrix24;
pub mod speechsense;

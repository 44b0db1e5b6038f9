//! b24sense-emulators — faithful stand-ins for the two services b24sense talks to, for tests, the demo and benchmarks.
//!
//! - [`bitrix24`]: a Bitrix24 portal's REST API (axum) over a generated, deterministic portal, with the portal's leaky
//!   bucket, batch, keyset paging, recordings and fault injection.
//! - [`speechsense`]: Yandex SpeechSense's `TalkService` (tonic) that checks key and connection in the spec's order,
//!   validates metadata and stream order, keeps talks in memory for assertions, and injects faults (statuses before
//!   or after the store, server stream resets).
//!
//! Never a dependency of production library crates; only the binary (for `emulate`/`demo`) and tests use it.

pub mod bitrix24;
pub mod speechsense;

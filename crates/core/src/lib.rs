//! b24sense-core — the product's own vocabulary, with no I/O.
//!
//! It owns:
//! - [`Call`]: one typed row of Bitrix24's `voximplant.statistic.get`, parsed leniently (numbers as strings,
//!   `null`/`""`/`"0"` for "no value");
//! - [`CallFilter`]: which calls qualify (the settings form's filters);
//! - [`mapping`]: how a call becomes SpeechSense talk metadata (`docs/mapping.md`);
//! - [`chat`]: Open Lines sessions and how one becomes a SpeechSense chat talk (`UploadText`);
//! - [`audio`]: container and channel detection from a recording's first bytes;
//! - [`outcome`]: ledger states and the per-call outcome with its reasons;
//! - [`ErrorClass`]: the retry taxonomy every adapter error maps onto.
//!
//! Adapters (Bitrix24, SpeechSense, store) depend on this crate; it depends on none of them.

pub mod audio;
pub mod call;
pub mod chat;
pub mod error;
pub mod filter;
pub mod lenient;
pub mod mapping;
pub mod outcome;

pub use audio::{AudioProbe, Container, ProbeError};
pub use call::{Call, CallType, CrmEntityType, CrmInfo, CrmRef, UserInfo};
pub use error::ErrorClass;
pub use filter::{CallFilter, FilterError, TimeBound};
pub use mapping::{MonoPolicy, TalkFields};
pub use outcome::{FailReason, LedgerState, Outcome, SkipReason};

//! b24sense-engine — the export engine, with no terminal, web or storage-backend concerns.
//!
//! It owns the journey of a call from the Bitrix24 call history to a SpeechSense talk ([`run_export`]): the
//! pipeline's stages and their concurrency, retries with backoff, the mapping of outcomes to the ledger, and the
//! in-doubt rule that keeps every call uploaded exactly once or reported. It reaches Bitrix24 and SpeechSense
//! through the [`ports`] traits, implemented for the real clients in [`adapters`].

pub mod adapters;
pub mod chats;
pub mod concurrency;
pub mod config;
pub mod holder;
mod pipeline;
pub mod ports;
pub mod report;
pub mod retry;
pub mod runtime;

pub use chats::{run_chat_export, ChatExportConfig, ChatSummary};
pub use concurrency::{Concurrency, LimitTrace};
pub use config::{ExportConfig, LateRecordings};
pub use pipeline::run_export;
pub use report::{
    CallReport, DownloadAccounting, DryRunTotals, LedgerFault, LedgerHealth, LedgerStats,
    ProgressEvent, ProgressFn, Summary,
};

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The run's settings are invalid (the message names the field).
    #[error("invalid settings: {0}")]
    Config(String),
    /// The ledger could not be read or written; the run stopped to avoid losing track of calls.
    #[error("ledger: {0}")]
    Store(#[from] b24sense_store::Error),
    /// A fatal error (wrong credentials, unknown connection, listing impossible) stopped the run early.
    #[error("{reason}")]
    Stopped {
        reason: String,
        summary: Box<Summary>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

//! b24sense-bench — benchmark scenarios for the export path.
//!
//! It owns the scenarios (portal size, REST and upload latencies, bucket, recordings), running one of them through
//! the real clients and `run_export` (or, for the chat scenarios, `run_chat_export`: [`chats`]) against both
//! emulators on loopback, and measuring the run: portal requests by
//! kind, rate-limit rejections, throughput, peak memory, CPU, and the lower bound the run is compared with.
//! The binary runs the emulators itself and each scenario's export in a child process of its own, so that the
//! peak RSS and CPU are the export's alone.

pub mod chats;
mod counting;
pub mod measure;
pub mod report;
pub mod run;
pub mod scenario;

pub use report::{render_table, Bound, BoundInputs, RunRow};
pub use run::{
    loopback, make_row, run_export_side, run_scenario, Emulators, ExportMeasure, Placement,
    RunOptions, Target,
};
pub use scenario::{scenario, Scenario, NAMES};

/// Why a benchmark run could not produce its row.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown scenario {0:?} (known: {names})", names = NAMES.join(", "))]
    UnknownScenario(String),
    #[error("cannot start an emulator: {0}")]
    Emulator(std::io::Error),
    #[error("setup: {0}")]
    Setup(String),
    #[error("export: {0}")]
    Engine(String),
    #[error("the run did not stop within 120 s of its {0:?} timeout")]
    Timeout(std::time::Duration),
    #[error("child process: {0}")]
    Child(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("internal: {0}")]
    Internal(String),
}

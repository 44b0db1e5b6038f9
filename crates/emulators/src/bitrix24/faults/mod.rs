//! Fault injection for the Bitrix24 emulator.
//!
//! Faults are decided per HTTP request before the portal logic runs (so an injected 503 costs no bucket token and
//! no operating time), except cut bodies, which wrap the portal's real answer, and vanished recordings, which the
//! routes and `disk.file.get` ask about.
//!
//! The parts:
//! - `config`: what a test asks for ([`FaultConfig`]) and the names fired faults are counted under ([`kind`]).
//! - `state`: the live state that applies it to each request ([`FaultState`], [`Verdict`]).
//! - `responses`: the answers faults give instead of the portal's.
//! - `cut`: bodies cut after half their length; `reset`: connections reset instead of closed.

mod config;
mod cut;
mod reset;
mod responses;
mod state;

pub use config::{kind, FaultConfig};
pub(crate) use cut::{body_len, cut_half};
pub(crate) use reset::ResetOnDrop;
pub(crate) use state::{FaultState, Verdict};

//! A fault-injecting layer under the store, for tests where the real fault cannot be made: every statement fails
//! as SQLite fails on a full disk (`SQLITE_FULL`) or a read-only database (`SQLITE_READONLY`), with SQLite's own
//! code and message, until the fault is switched off. Off (and free: one relaxed load) unless a [`LedgerFaults`]
//! is handed to [`crate::OpenOptions::faults`].
//!
//! Tests use it where the machine cannot mount a size-limited or read-only filesystem (they say so when they
//! do); where it can, they fill or freeze a real one instead. [`InjectedFault::AnswerLost`] makes every statement
//! take effect and then fail as a connection cut mid-answer does (a database server that went away after it
//! committed): the case a retry must not mistake for someone else's work.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::Error;

/// Which fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// `SQLITE_FULL` (13): "database or disk is full".
    DiskFull,
    /// `SQLITE_READONLY` (8): "attempt to write a readonly database".
    ReadOnly,
    /// The statement runs (and commits), then its answer is lost: the connection reset.
    AnswerLost,
    /// [`InjectedFault::AnswerLost`] for claims only (the statements that take leases on calls and chat
    /// sessions), the other statements unharmed: the moment of a cut that matters most, made certain.
    ClaimAnswerLost,
}

/// A switch shared by the test and the store it opened.
#[derive(Clone, Default)]
pub struct LedgerFaults(Arc<AtomicU8>);

impl LedgerFaults {
    pub fn new() -> LedgerFaults {
        LedgerFaults::default()
    }

    /// Switches a fault on (`Some`) or off (`None`).
    pub fn set(&self, fault: Option<InjectedFault>) {
        let v = match fault {
            None => 0,
            Some(InjectedFault::DiskFull) => 1,
            Some(InjectedFault::ReadOnly) => 2,
            Some(InjectedFault::AnswerLost) => 3,
            Some(InjectedFault::ClaimAnswerLost) => 4,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    /// The error a statement fails with before it runs.
    pub(crate) fn error(&self) -> Option<Error> {
        let (code, message) = match self.0.load(Ordering::Relaxed) {
            1 => ("13", "database or disk is full"),
            2 => ("8", "attempt to write a readonly database"),
            _ => return None,
        };
        Some(Error::Database(sqlx::Error::Database(Box::new(Injected {
            code,
            message,
        }))))
    }

    /// The error a statement that ran fails with afterwards.
    pub(crate) fn lost_answer(&self) -> Option<Error> {
        (self.0.load(Ordering::Relaxed) == 3).then(connection_reset)
    }

    /// The error a claim that ran fails with afterwards.
    pub(crate) fn lost_claim_answer(&self) -> Option<Error> {
        (self.0.load(Ordering::Relaxed) == 4).then(connection_reset)
    }
}

fn connection_reset() -> Error {
    Error::Database(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer (injected: the statement ran, its answer was lost)",
    )))
}

impl std::fmt::Debug for LedgerFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LedgerFaults")
            .field(&self.0.load(Ordering::Relaxed))
            .finish()
    }
}

/// The error a faulty SQLite would return.
#[derive(Debug)]
struct Injected {
    code: &'static str,
    message: &'static str,
}

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message)
    }
}

impl std::error::Error for Injected {}

impl sqlx::error::DatabaseError for Injected {
    fn message(&self) -> &str {
        self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.code))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

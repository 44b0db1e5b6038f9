//! The store's one error type, with the retry class the engine acts on.

use std::path::PathBuf;

use b24sense_core::ErrorClass;
use sqlx::migrate::MigrateError;

/// What went wrong with the ledger database. Messages never contain passwords (URLs are redacted).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database server cannot be reached (refused, timed out, DNS) or the SQLite file cannot be opened.
    #[error("ledger database unreachable: {0}")]
    Unreachable(String),
    /// The SQLite file exists but is not a database (or is damaged). Nothing was written to it.
    #[error("{} is not a usable SQLite database ({reason}); nothing was changed — restore it from a backup or point b24sense at another file", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// The ledger was migrated by a newer b24sense; this build refuses to touch it.
    #[error("the ledger was created by a newer b24sense (it has schema migration {found}, this build knows up to {known}); upgrade b24sense")]
    TooNew { found: i64, known: i64 },
    #[error("invalid ledger database URL: {0}")]
    InvalidUrl(String),
    /// Applying the schema failed; each migration runs in a transaction, so the data is as it was.
    #[error("ledger schema migration failed (the data was left as it was): {0}")]
    Migration(#[source] MigrateError),
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A value that cannot be stored or a stored value that cannot be read.
    #[error("ledger data error: {0}")]
    Data(String),
    /// The key that encrypts stored secrets is missing or wrong (the message names the setting).
    #[error("secret key: {0}")]
    SecretKey(String),
    /// The database refused a grouped statement as a whole (full, read-only, locked, unreachable): each write of
    /// the group gets this copy of that error at once, rather than waiting its turn to fail alone.
    #[error("{message}")]
    Grouped { fault: LedgerFault, message: String },
    /// The recovery journal (outcomes the ledger could not take) could not be written or read.
    #[error("recovery journal {}: {reason}", path.display())]
    RecoveryJournal { path: PathBuf, reason: String },
}

/// What kind of trouble a ledger error is, for telling people what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerFault {
    /// No space left for the database (SQLite `SQLITE_FULL`, PostgreSQL `disk_full`).
    DiskFull,
    /// The database or its filesystem refuses writes.
    ReadOnly,
    /// Another process holds the SQLite write lock (`SQLITE_BUSY`) or a lock the statement waits for.
    Locked,
    /// The database server cannot be reached, or it ended the connection.
    Unreachable,
    /// Anything else.
    Other,
}

impl Error {
    /// How the engine should treat this error: connection trouble and lock contention are retryable,
    /// bad data is permanent for that call, everything else stops the run.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Unreachable(_) => ErrorClass::Retryable { after: None },
            Error::Grouped {
                fault: LedgerFault::Locked | LedgerFault::Unreachable,
                ..
            } => ErrorClass::Retryable { after: None },
            Error::Database(e) if is_transient(e) => ErrorClass::Retryable { after: None },
            Error::Data(_) => ErrorClass::Permanent,
            _ => ErrorClass::Fatal,
        }
    }
}

impl Error {
    /// What kind of trouble this is (see [`LedgerFault`]).
    pub fn fault(&self) -> LedgerFault {
        match self {
            Error::Grouped { fault, .. } => *fault,
            Error::Unreachable(_) => LedgerFault::Unreachable,
            Error::Database(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                if let Ok(n) = code.parse::<i64>() {
                    // SQLite primary codes (the low byte of extended ones); an I/O error on a filesystem that
                    // turned read-only is SQLITE_IOERR (10) with "readonly" or "read-only" in its message.
                    return match n & 0xff {
                        13 => LedgerFault::DiskFull,
                        8 => LedgerFault::ReadOnly,
                        5 | 6 => LedgerFault::Locked,
                        10 | 14 if db.message().contains("read") => LedgerFault::ReadOnly,
                        _ => LedgerFault::Other,
                    };
                }
                match &*code {
                    "53100" => LedgerFault::DiskFull,
                    "25006" => LedgerFault::ReadOnly,
                    "55P03" | "40P01" => LedgerFault::Locked,
                    c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                        LedgerFault::Unreachable
                    }
                    _ => LedgerFault::Other,
                }
            }
            Error::Database(sqlx::Error::Io(io)) if io.raw_os_error() == Some(28) => {
                LedgerFault::DiskFull
            }
            // A connection that broke mid-answer (or a server that answered nonsense): the server went away.
            Error::Database(e) if is_transient(e) => LedgerFault::Unreachable,
            Error::Database(sqlx::Error::Protocol(_)) => LedgerFault::Unreachable,
            _ => LedgerFault::Other,
        }
    }

    /// Whether the same write can succeed later: false for a value that cannot be stored (it never will be).
    pub fn may_pass_later(&self) -> bool {
        !matches!(self, Error::Data(_))
    }
}

/// Errors that say "try again later" rather than "this is wrong".
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // SQLite: 5 BUSY, 6 LOCKED (and their extended codes, low byte). PostgreSQL: serialization
            // failure, deadlock, connection exceptions (08…), admin/crash shutdown, too many connections.
            if let Ok(n) = code.parse::<i64>() {
                return matches!(n & 0xff, 5 | 6);
            }
            matches!(
                &*code,
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
            ) || code.starts_with("08")
        }
        _ => false,
    }
}

/// SQLite result codes that mean "this file is not (or no longer) a database".
pub(crate) fn is_not_a_database(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 26 SQLITE_NOTADB, 11 SQLITE_CORRUPT (low byte of extended codes).
            matches!(code.parse::<i64>().map(|n| n & 0xff), Ok(26) | Ok(11))
                || db.message().contains("file is not a database")
        }
        _ => false,
    }
}

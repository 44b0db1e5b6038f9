//! b24sense-store — b24sense's durable state on SQLite or PostgreSQL.
//!
//! The parts, one file (or folder) each:
//! - `sql` — declared first: the SQL that differs between the backends (`sql::Dialect`), the macro that runs one
//!   body on either backend (`on_db!`), the macros that read rows, and conversions to and from SQL values;
//! - `ledger` — one row per (portal, call `ID`) with its state (`pending` → `uploading` → `uploaded` |
//!   `skipped` | `failed`), the stored call, and a *lease* with a *fence* so that only the worker holding the
//!   current lease can commit an outcome (`docs/mapping.md`, "Once and only once");
//!   `group` writes coinciding writes (fenced marks and outcomes; settlements of unheld calls) as one statement;
//! - `cursors` — the listing cursors (keyset high-water marks per portal and filter);
//! - `download_accounting` — per portal, whether it counts recording downloads against its request bucket;
//! - `journal` — the runs journal: the CLI's runs, and the application server's with live progress and heartbeat;
//! - `portal_lease` — so that with several replicas on one PostgreSQL only one calls a given portal;
//! - `portals`, `portal_settings`, `secret_key` — installed applications: tokens and settings per portal,
//!   secrets encrypted ([`SecretKey`]); `key_rotation` re-encrypts them under a new key;
//! - `open` — URLs, connections and migrations; `error` — the crate's one error type.
//!
//! Both backends share one API and the same SQL shape; the differences (clock expressions, row locking,
//! column types) live in `sql::Dialect`. All of b24sense's SQL is in this crate. Schema changes are embedded
//! migrations (`migrations/sqlite`, `migrations/postgres`). Ledger rows are never deleted — the migrations even
//! forbid it with a trigger.

#[macro_use]
mod sql;

mod chat_ledger;
mod cursors;
mod download_accounting;
mod error;
mod faults;
mod group;
mod journal;
mod key_rotation;
mod ledger;
mod open;
mod portal_lease;
mod portal_settings;
mod portals;
mod recovery;
mod secret_key;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Sqlite, SqlitePool};

pub use chat_ledger::{ChatClaim, ChatEntry, ChatVerdict, ListedSession};
pub use error::{Error, LedgerFault};
pub use faults::{InjectedFault, LedgerFaults};
pub use journal::{run_status, RunProgress, RunRecord};
pub use key_rotation::{Reseal, RotationReport, SecretCensus, StoredSecret};
pub use ledger::{claim_owner, Claim, LedgerEntry, StateCount};
pub use open::OpenOptions;
pub use portal_lease::{PortalHolder, PortalLease};
pub use portal_settings::{PortalSettings, StoredSettings};
pub use portals::{DueRefresh, Installation, Portal, PortalStatus, PortalTokens};
pub use recovery::{read_recovery_journal, RecoveryEntry, RecoveryImport};
pub use secret_key::SecretKey;

use group::Group;
use ledger::{FencedWrite, UnheldWrite};

/// The ledger store. Cheap to clone (it shares its connections); share one per process.
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// The writes every upload makes (its `uploading` mark and its outcome), grouped when they coincide
    /// ([`group`]).
    fenced: Arc<Group<FencedWrite>>,
    /// Outcomes of calls nobody holds ([`Store::settle_unheld`]), grouped when they coincide.
    unheld: Arc<Group<UnheldWrite>>,
    /// Statements sent to the database ([`Store::statements`]).
    statements: Arc<AtomicU64>,
    /// Where the ledger is, as shown to people, and its recovery journal ([`recovery`]).
    place: Arc<Place>,
}

/// Where a store's data lives.
#[derive(Debug, Default)]
struct Place {
    /// `sqlite:PATH`, or the PostgreSQL URL without its password (and the schema, if any).
    shown: String,
    /// The recovery journal: beside a SQLite file; for PostgreSQL, in the directory given by
    /// [`Store::with_recovery_dir`] (`None` until then).
    recovery: Option<PathBuf>,
    /// Identifies a PostgreSQL ledger (URL without password, schema) for its journal's file name.
    key: String,
    /// Injected faults (tests), see [`LedgerFaults`].
    faults: Option<LedgerFaults>,
    /// PostgreSQL: see [`OpenOptions::answer_timeout`].
    answer_timeout: std::time::Duration,
}

#[derive(Clone)]
enum Db {
    Sqlite(Arc<SqliteDb>),
    Postgres(PgPool),
}

/// SQLite runs on one connection (one writer at a time, one page cache), which the store takes from its pool once
/// and keeps: statements wait for it in turn. Going through the pool for each statement would cost a round trip
/// to sqlx's connection thread every time a statement gives the connection back (the pool pings it on release).
struct SqliteDb {
    pool: SqlitePool,
    /// `None` once the store is closed.
    connection: tokio::sync::Mutex<Option<PoolConnection<Sqlite>>>,
}

impl SqliteDb {
    /// sqlx counts a connection's transactions itself. When SQLite ends one on its own (it rolls back after
    /// `SQLITE_FULL`, an I/O error, a failed `COMMIT`), sqlx's `ROLLBACK` fails, its count stays up, and every
    /// later `BEGIN` is refused: the ledger would stay broken after the disk was freed. Such a connection is
    /// replaced by a new one.
    async fn heal(&self, held: &mut Option<PoolConnection<Sqlite>>) -> Result<(), Error> {
        use sqlx::Connection;
        let Some(conn) = held.as_mut() else {
            return Ok(());
        };
        if !conn.is_in_transaction() {
            return Ok(());
        }
        // A rollback queued by a transaction dropped on an error runs before the ping.
        let _ = conn.ping().await;
        if !conn.is_in_transaction() {
            return Ok(());
        }
        tracing::warn!(
            "the SQLite connection lost track of a transaction SQLite ended; opening a new one"
        );
        if let Some(stale) = held.take() {
            let _ = stale.close().await;
        }
        *held = Some(self.pool.acquire().await?);
        Ok(())
    }
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Store {
    fn with_db(db: Db, place: Place) -> Store {
        Store {
            db,
            fenced: Arc::new(Group::new()),
            unheld: Arc::new(Group::new()),
            statements: Arc::default(),
            place: Arc::new(place),
        }
    }

    /// The ledger as shown to people: `sqlite:PATH`, or the PostgreSQL URL without its password (with the schema).
    pub fn describe(&self) -> &str {
        &self.place.shown
    }

    /// An injected fault's error, if one is switched on (tests; see [`LedgerFaults`]).
    fn injected(&self) -> Option<Error> {
        self.place.faults.as_ref().and_then(LedgerFaults::error)
    }

    /// An injected lost answer, for a statement that ran (tests; see [`LedgerFaults`]).
    fn lost_answer(&self) -> Option<Error> {
        self.place
            .faults
            .as_ref()
            .and_then(LedgerFaults::lost_answer)
    }

    /// An injected lost answer, for a claim that ran (tests; see [`LedgerFaults`]).
    fn lost_claim_answer(&self) -> Result<(), Error> {
        match self
            .place
            .faults
            .as_ref()
            .and_then(LedgerFaults::lost_claim_answer)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// How many statements this store (and its clones) has sent to the database: what the ledger costs a run,
    /// for benchmarks and for tests that keep it low.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    fn count_statement(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes the database connections, waiting for statements in progress to finish. Later calls fail.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(sqlite) => {
                drop(sqlite.connection.lock().await.take());
                sqlite.pool.close().await
            }
            Db::Postgres(p) => p.close().await,
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

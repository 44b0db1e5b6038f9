//! b24sense-store — b24sense's durable state on SQLite or PostgreSQL.
//!
//! It owns:
//! - the **ledger**: one row per (portal, call `ID`) with its state (`pending` → `uploading` → `uploaded` |
//!   `skipped` | `failed`), the stored call, and a *lease* with a *fence* so that only the worker holding the
//!   current lease can commit an outcome (`shared/spec/mapping.md`, "Once and only once");
//! - the listing **cursors** (keyset high-water marks per portal and filter);
//! - the **runs** journal, with the application server's live progress and heartbeat per run;
//! - **portal leases**, so that with several replicas on one PostgreSQL only one calls a given portal.
//! - **installed applications** (`portals`): tokens and settings per portal, secrets encrypted ([`SecretKey`]).
//!
//! Both backends share one API and the same SQL shape; the differences (clock expressions, row locking,
//! column types) live in [`Dialect`]. Schema changes are embedded migrations (`migrations/sqlite`,
//! `migrations/postgres`). Ledger rows are never deleted — the migrations even forbid it with a trigger.

mod error;
mod group;
mod open;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use b24sense_core::{Call, LedgerState, Outcome};
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::types::Json;
use sqlx::{Connection, PgPool, QueryBuilder, Row, Sqlite, SqlitePool};

pub use error::Error;
pub use open::OpenOptions;

use group::{Group, GroupWrite};

/// The ledger store. Cheap to clone (it shares its connections); share one per process.
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// The writes every upload makes (its `uploading` mark and its outcome), grouped when they coincide
    /// ([`group`]).
    fenced: Arc<Group<FencedWrite>>,
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

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A lease on one ledger row. Every fenced operation checks `fence`: once another worker claims the row
/// (after this lease expired), the fence moves on and this claim can change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub portal: String,
    pub call_id: u64,
    pub owner: String,
    pub fence: i64,
    /// The row was `uploading` when claimed: an earlier upload may have stored the talk.
    pub in_doubt: bool,
    /// Finished attempts before this claim.
    pub attempts: u32,
    /// The row's state when it was claimed (claiming does not change it).
    pub previous: LedgerState,
    /// When the ledger first saw the call: how long a recording has been awaited is counted from here, not from
    /// the call's own date (external PBXs backdate calls).
    pub first_seen: DateTime<Utc>,
}

/// The lease that makes one replica the only caller of a portal (see [`Store::claim_portal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalLease {
    pub portal: String,
    pub owner: String,
    pub fence: i64,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub portal: String,
    pub call_id: u64,
    pub state: LedgerState,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub talk_id: Option<String>,
    pub attempts: u32,
    pub mono: bool,
    pub reuploaded_after_crash: bool,
    /// The call as last registered (`None` only for rows written by hand).
    pub call: Option<Call>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    /// A call awaiting its recording: when it is checked next.
    pub retry_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// How many calls are in one (state, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    pub state: LedgerState,
    pub reason: Option<String>,
    pub count: u64,
}

/// One run of the exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: i64,
    pub portal: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: Option<String>,
    pub params: serde_json::Value,
    pub summary: Option<serde_json::Value>,
}

/// The SQL that differs between the backends. Templates use `{now}` and `{lease_until}` (the latter reads
/// the lease length in seconds from parameter `$1`).
struct Dialect {
    now: &'static str,
    lease_until: &'static str,
    /// `lease_until` up to its span, for queries that bind the span themselves; closed by `))`.
    lease_until_open: &'static str,
    /// Appended to row-picking subqueries so that replicas skip each other's rows instead of waiting.
    skip_locked: &'static str,
    /// SQLite: take the write lock up front so the busy timeout applies (a deferred transaction that
    /// upgrades from read to write can fail with SQLITE_BUSY at once).
    begin: &'static str,
}

impl Dialect {
    const SQLITE: Dialect = Dialect {
        now: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        lease_until: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', $1))",
        lease_until_open: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', ",
        skip_locked: "",
        begin: "BEGIN IMMEDIATE",
    };
    // PostgreSQL: the database's clock, so that replicas on several machines agree on lease expiry.
    const POSTGRES: Dialect = Dialect {
        now: "now()",
        lease_until: "(now() + make_interval(secs => $1))",
        lease_until_open: "(now() + make_interval(secs => ",
        skip_locked: "FOR UPDATE SKIP LOCKED",
        begin: "BEGIN",
    };

    fn sql(&self, template: &str) -> String {
        template
            .replace("{now}", self.now)
            .replace("{lease_until}", self.lease_until)
            .replace("{skip_locked}", self.skip_locked)
    }
}

/// Runs `$body` with `$conn` bound to a connection of the store's database and `$d` to its dialect. The body is
/// written once and compiled for each backend (no `dyn`, no `Any` driver).
macro_rules! on_db {
    ($self:expr, |$conn:ident, $d:ident| $body:expr) => {
        match &$self.db {
            Db::Sqlite(sqlite) => {
                let mut held = sqlite.connection.lock().await;
                let $conn: &mut sqlx::SqliteConnection = match held.as_mut() {
                    Some(c) => &mut **c,
                    None => return Err(Error::Database(sqlx::Error::PoolClosed)),
                };
                let $d = &Dialect::SQLITE;
                $body
            }
            Db::Postgres(pool) => {
                let mut held = pool.acquire().await?;
                let $conn: &mut sqlx::PgConnection = &mut *held;
                let $d = &Dialect::POSTGRES;
                $body
            }
        }
    };
}

const ENTRY_COLUMNS: &str = "portal, call_id, state, reason, detail, talk_id, attempts, mono, \
     reuploaded_after_crash, call_json, lease_owner, lease_until, retry_at, updated_at";

/// Reads a [`LedgerEntry`] from a row of `SELECT {ENTRY_COLUMNS}` (a macro because the row types differ).
macro_rules! entry_from_row {
    ($row:expr) => {{
        let row = &$row;
        let call_id: i64 = row.try_get("call_id")?;
        let call_json: Option<Json<Call>> = row.try_get("call_json").map_err(|e| match e {
            sqlx::Error::ColumnDecode { .. } => {
                Error::Data(format!("stored call {call_id} cannot be read: {e}"))
            }
            other => Error::Database(other),
        })?;
        LedgerEntry {
            portal: row.try_get("portal")?,
            call_id: to_u64(call_id)?,
            state: parse_state(row.try_get("state")?)?,
            reason: row.try_get("reason")?,
            detail: row.try_get("detail")?,
            talk_id: row.try_get("talk_id")?,
            attempts: to_u32(row.try_get("attempts")?)?,
            mono: row.try_get("mono")?,
            reuploaded_after_crash: row.try_get("reuploaded_after_crash")?,
            call: call_json.map(|j| j.0),
            lease_owner: row.try_get("lease_owner")?,
            lease_until: row.try_get("lease_until")?,
            retry_at: row.try_get("retry_at")?,
            updated_at: row.try_get("updated_at")?,
        }
    }};
}

/// Every row of a `SELECT {ENTRY_COLUMNS}` as a [`LedgerEntry`]; the first unreadable row is the error.
macro_rules! entries_from_rows {
    ($rows:expr) => {
        $rows
            .iter()
            .map(|row| -> Result<LedgerEntry, Error> { Ok(entry_from_row!(row)) })
            .collect::<Result<Vec<LedgerEntry>, Error>>()
    };
}

macro_rules! claim_from_row {
    ($row:expr, $portal:expr, $call_id:expr, $owner:expr) => {{
        let row = &$row;
        let previous = parse_state(row.try_get("state")?)?;
        Claim {
            portal: $portal.to_owned(),
            call_id: $call_id,
            owner: $owner.to_owned(),
            fence: row.try_get("fence")?,
            in_doubt: previous == LedgerState::Uploading,
            attempts: to_u32(row.try_get("attempts")?)?,
            previous,
            first_seen: row.try_get("created_at")?,
        }
    }};
}

/// The `SET` of a release: the row becomes `pending` again, except an `uploading` row, which stays in doubt.
const RELEASE: &str = "UPDATE ledger SET \
     state = CASE WHEN state = 'uploading' THEN 'uploading' ELSE 'pending' END, \
     reason = CASE WHEN state = 'uploading' THEN reason ELSE NULL END, \
     detail = CASE WHEN state = 'uploading' THEN detail ELSE NULL END, \
     lease_owner = NULL, lease_until = NULL, retry_at = NULL, updated_at = {now}";

/// Rows per multi-row statement in `register` (3 parameters each, far below both backends' limits).
const REGISTER_CHUNK: usize = 500;

/// A fenced write queued for a grouped statement: [`Store::mark_uploading`] or [`Store::finish`] of one claim.
struct FencedWrite {
    portal: String,
    call_id: i64,
    fence: i64,
    owner: String,
    /// `uploading` for a mark; the outcome's state otherwise.
    state: &'static str,
    /// A mark's lease, in seconds from now (0 for an outcome, which clears the lease).
    lease_secs: f64,
    reason: Option<&'static str>,
    detail: Option<String>,
    talk_id: Option<String>,
    mono: bool,
    reuploaded: bool,
}

impl GroupWrite for FencedWrite {
    type Target = Store;
    fn write_all(
        store: &Store,
        batch: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<bool>, Error>> + Send {
        store.write_fenced(batch)
    }
}

/// Marks and outcomes in one statement. `v` is the `VALUES` list: (1) portal, (2) call ID, (3) fence, (4) owner,
/// (5) state — `uploading` marks, anything else is an outcome —, (6) lease seconds, (7) reason, (8) detail,
/// (9) talk ID, (10) mono, (11) re-uploaded after a crash. A mark sets the state and renews the lease, and needs the
/// row not `uploaded`; an outcome sets its fields, counts the attempt and clears the lease. `{mark}` is
/// `v.column5 = 'uploading'`; `{lease_until_v}` is now + column 6.
const FENCED_SET: &str = "UPDATE ledger SET state = v.column5, \
     reason = CASE WHEN {mark} THEN ledger.reason ELSE v.column7 END, \
     detail = CASE WHEN {mark} THEN ledger.detail ELSE v.column8 END, \
     talk_id = COALESCE(v.column9, ledger.talk_id), \
     mono = CASE WHEN {mark} THEN ledger.mono ELSE v.column10 END, \
     reuploaded_after_crash = CASE WHEN {mark} THEN ledger.reuploaded_after_crash ELSE v.column11 END, \
     attempts = CASE WHEN {mark} THEN ledger.attempts ELSE ledger.attempts + 1 END, \
     lease_owner = CASE WHEN {mark} THEN ledger.lease_owner ELSE NULL END, \
     lease_until = CASE WHEN {mark} THEN {lease_until_v} ELSE NULL END, \
     retry_at = CASE WHEN {mark} THEN ledger.retry_at ELSE NULL END, \
     updated_at = {now} FROM (";
const FENCED_WHERE: &str = ") AS v WHERE ledger.portal = v.column1 AND ledger.call_id = v.column2 \
     AND ledger.fence = v.column3 AND ledger.lease_owner = v.column4 \
     AND NOT ({mark} AND ledger.state = 'uploaded') \
     RETURNING ledger.portal, ledger.call_id, ledger.fence";

/// An outcome's own columns: talk ID, detail, mono, re-uploaded after a crash.
fn outcome_columns(outcome: &Outcome) -> (Option<&str>, Option<&str>, bool, bool) {
    match outcome {
        Outcome::Uploaded {
            talk_id,
            mono,
            reuploaded_after_crash,
        } => (Some(talk_id), None, *mono, *reuploaded_after_crash),
        Outcome::Skipped { .. } => (None, None, false, false),
        Outcome::Failed { detail, .. } => (None, Some(detail), false, false),
    }
}

impl Store {
    fn with_db(db: Db) -> Store {
        Store {
            db,
            fenced: Arc::new(Group::new()),
        }
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

    /// Inserts each call as `pending` unless its row exists; refreshes the stored call of existing rows that
    /// are not `uploaded` (a recording may have appeared). One transaction. Returns the entries in input order.
    pub async fn register(&self, portal: &str, calls: &[Call]) -> Result<Vec<LedgerEntry>, Error> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        // One row per ID (the last occurrence wins): an upsert may not touch the same row twice.
        let mut position: HashMap<u64, usize> = HashMap::with_capacity(calls.len());
        let mut unique: Vec<(i64, &Call)> = Vec::with_capacity(calls.len());
        for call in calls {
            let id = to_i64(call.id)?;
            match position.get(&call.id) {
                Some(&i) => unique[i].1 = call,
                None => {
                    position.insert(call.id, unique.len());
                    unique.push((id, call));
                }
            }
        }
        // Ascending IDs: concurrent registrations (replicas) lock rows in the same order, so they cannot deadlock.
        unique.sort_unstable_by_key(|(id, _)| *id);
        for (i, (id, _)) in unique.iter().enumerate() {
            position.insert(*id as u64, i);
        }
        let mut found: HashMap<u64, LedgerEntry> = HashMap::with_capacity(unique.len());
        on_db!(self, |conn, d| {
            let mut tx = conn.begin_with(d.begin).await?;
            let upsert_tail = d.sql(
                " ON CONFLICT (portal, call_id) DO UPDATE SET call_json = excluded.call_json, \
                 updated_at = {now} WHERE ledger.state <> 'uploaded' \
                 AND ledger.call_json IS DISTINCT FROM excluded.call_json",
            );
            for chunk in unique.chunks(REGISTER_CHUNK) {
                let mut qb = QueryBuilder::new("INSERT INTO ledger (portal, call_id, call_json) ");
                qb.push_values(chunk, |mut b, (id, call)| {
                    b.push_bind(portal).push_bind(*id).push_bind(Json(*call));
                });
                qb.push(&upsert_tail);
                qb.build().persistent(false).execute(&mut *tx).await?;
            }
            for chunk in unique.chunks(REGISTER_CHUNK) {
                // Only uploaded rows may hold another call than the one just written: skip decoding the rest.
                let columns = ENTRY_COLUMNS.replace(
                    "call_json",
                    "CASE WHEN state = 'uploaded' THEN call_json ELSE NULL END AS call_json",
                );
                let mut qb =
                    QueryBuilder::new(format!("SELECT {columns} FROM ledger WHERE portal = "));
                qb.push_bind(portal).push(" AND call_id IN (");
                let mut ids = qb.separated(", ");
                for (id, _) in chunk {
                    ids.push_bind(*id);
                }
                qb.push(")");
                for row in qb.build().persistent(false).fetch_all(&mut *tx).await? {
                    let mut entry = entry_from_row!(row);
                    if entry.state != LedgerState::Uploaded {
                        entry.call = position.get(&entry.call_id).map(|&i| unique[i].1.clone());
                    }
                    found.insert(entry.call_id, entry);
                }
            }
            tx.commit().await?;
        });
        // Each entry is moved out, unless the page lists its call more than once.
        let repeated = unique.len() != calls.len();
        calls
            .iter()
            .map(|c| {
                let entry = if repeated {
                    found.get(&c.id).cloned()
                } else {
                    found.remove(&c.id)
                };
                entry
                    .ok_or_else(|| Error::Data(format!("call {} vanished while registering", c.id)))
            })
            .collect()
    }

    /// Takes the lease on one call for `owner` until now + `lease`, if the call is not `uploaded` and its lease
    /// is free or expired. Bumps the fence. `None` when someone else holds it (or it is uploaded/unknown).
    pub async fn claim(
        &self,
        portal: &str,
        call_id: u64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, Error> {
        let id = to_i64(call_id)?;
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE ledger SET lease_owner = $4, lease_until = {lease_until}, fence = fence + 1, \
                 updated_at = {now} \
                 WHERE portal = $2 AND call_id = $3 AND state <> 'uploaded' \
                 AND (lease_until IS NULL OR lease_until <= {now}) \
                 RETURNING fence, state, attempts, created_at",
            );
            let row = sqlx::query(&sql)
                .bind(lease.as_secs_f64())
                .bind(portal)
                .bind(id)
                .bind(owner)
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(row) => Ok(Some(claim_from_row!(row, portal, call_id, owner))),
                None => Ok(None),
            }
        })
    }

    /// Claims and commits at once: records `outcome` for a call nobody holds, in one statement (the fence moves on,
    /// as with a claim, so no earlier claim can commit afterwards). For outcomes reached without an upload. False,
    /// and nothing changed, when the call is `uploaded`, unknown or leased to someone: then take the usual way
    /// ([`Store::claim`], then [`Store::finish`]).
    pub async fn settle_unheld(
        &self,
        portal: &str,
        call_id: u64,
        outcome: &Outcome,
    ) -> Result<bool, Error> {
        let id = to_i64(call_id)?;
        let (talk_id, detail, mono, reuploaded) = outcome_columns(outcome);
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE ledger SET state = $3, reason = $4, detail = $5, talk_id = COALESCE($6, talk_id), \
                 mono = $7, reuploaded_after_crash = $8, attempts = attempts + 1, fence = fence + 1, \
                 lease_owner = NULL, lease_until = NULL, retry_at = NULL, updated_at = {now} \
                 WHERE portal = $1 AND call_id = $2 AND state <> 'uploaded' \
                 AND (lease_until IS NULL OR lease_until <= {now})",
            );
            let done = sqlx::query(&sql)
                .bind(portal)
                .bind(id)
                .bind(outcome.state().as_str())
                .bind(outcome.reason())
                .bind(detail)
                .bind(talk_id)
                .bind(mono)
                .bind(reuploaded)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Claims up to `limit` calls of `portal` in `states` (never `uploaded`) whose lease is free or expired,
    /// lowest call ID first. Replicas on PostgreSQL skip rows another replica is claiming at that moment.
    pub async fn claim_next(
        &self,
        portal: &str,
        states: &[LedgerState],
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Claim>, Error> {
        let states: Vec<LedgerState> = states
            .iter()
            .copied()
            .filter(|s| *s != LedgerState::Uploaded)
            .collect();
        if states.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut claims = on_db!(self, |conn, d| {
            let sql = d.sql(&format!(
                "WITH pick AS (SELECT call_id AS pick_id FROM ledger \
                 WHERE portal = $2 AND state IN ({states}) AND (lease_until IS NULL OR lease_until <= {{now}}) \
                 ORDER BY call_id LIMIT $4 {{skip_locked}}) \
                 UPDATE ledger SET lease_owner = $3, lease_until = {{lease_until}}, fence = fence + 1, \
                 updated_at = {{now}} \
                 FROM pick WHERE portal = $2 AND call_id = pick.pick_id \
                 RETURNING call_id, fence, state, attempts, created_at",
                states = state_list(&states)
            ));
            let rows = sqlx::query(&sql)
                .bind(lease.as_secs_f64())
                .bind(portal)
                .bind(owner)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            let mut claims = Vec::with_capacity(rows.len());
            for row in rows {
                let call_id = to_u64(row.try_get("call_id")?)?;
                claims.push(claim_from_row!(row, portal, call_id, owner));
            }
            claims
        });
        claims.sort_by_key(|c| c.call_id);
        Ok(claims)
    }

    /// [`Store::claim`] for many calls in one statement: those of `call_ids` that are not `uploaded` and whose lease
    /// is free or expired, ascending by call ID. Calls left out are held by someone else, uploaded or unknown (ask
    /// again one by one). Replicas on PostgreSQL skip rows another replica is claiming at that moment.
    pub async fn claim_many(
        &self,
        portal: &str,
        call_ids: &[u64],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, Error> {
        let mut ids = call_ids
            .iter()
            .map(|&id| to_i64(id))
            .collect::<Result<Vec<i64>, Error>>()?;
        ids.sort_unstable();
        ids.dedup();
        let mut claims = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(REGISTER_CHUNK) {
            on_db!(self, |conn, d| {
                let mut qb = QueryBuilder::new(
                    "WITH pick AS (SELECT call_id AS pick_id FROM ledger WHERE portal = ",
                );
                qb.push_bind(portal).push(" AND call_id IN (");
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                qb.push(d.sql(
                    ") AND state <> 'uploaded' AND (lease_until IS NULL OR lease_until <= {now}) \
                     ORDER BY call_id {skip_locked}) \
                     UPDATE ledger SET lease_owner = ",
                ));
                qb.push_bind(owner).push(", lease_until = ");
                // `{lease_until}` with its span bound here: a built query numbers its binds as they are pushed.
                qb.push(d.lease_until_open).push_bind(lease.as_secs_f64());
                qb.push(d.sql(
                    ")), fence = fence + 1, updated_at = {now} \
                     FROM pick WHERE portal = ",
                ));
                qb.push_bind(portal).push(
                    " AND call_id = pick.pick_id RETURNING call_id, fence, state, attempts, created_at",
                );
                // Prepared once per batch length: the engine claims a worker's worth at a time, so a run uses a few.
                for row in qb.build().fetch_all(&mut *conn).await? {
                    let call_id = to_u64(row.try_get("call_id")?)?;
                    claims.push(claim_from_row!(row, portal, call_id, owner));
                }
            });
        }
        claims.sort_by_key(|c| c.call_id);
        Ok(claims)
    }

    /// Fenced: the row becomes `uploading` and the lease runs until now + `lease`. Written at the upload's fence,
    /// right before the half-close: SpeechSense stores a talk only once the client half-closes the stream, and an
    /// abandoned stream stores nothing, so a talk can exist only for rows marked here. False when the claim is
    /// stale (another worker took the call over, or it was released). An expired lease nobody took over is still
    /// this claim's: the fence has not moved.
    ///
    /// Marks that coincide are written together, as one statement ([`group`]).
    pub async fn mark_uploading(&self, claim: &Claim, lease: Duration) -> Result<bool, Error> {
        let mark = FencedWrite {
            portal: claim.portal.clone(),
            call_id: to_i64(claim.call_id)?,
            fence: claim.fence,
            owner: claim.owner.clone(),
            state: LedgerState::Uploading.as_str(),
            lease_secs: lease.as_secs_f64(),
            reason: None,
            detail: None,
            talk_id: None,
            mono: false,
            reuploaded: false,
        };
        self.fenced.submit(self, mark).await
    }

    /// Fenced: extends the lease to now + `lease` during a long upload.
    pub async fn renew(&self, claim: &Claim, lease: Duration) -> Result<bool, Error> {
        self.fenced_in(
            claim,
            lease,
            "UPDATE ledger SET lease_until = {lease_until}, updated_at = {now} \
             WHERE portal = $2 AND call_id = $3 AND fence = $4 AND lease_owner = $5 \
             AND state <> 'uploaded'",
        )
        .await
    }

    /// Fenced commit of the outcome; clears the lease and counts the attempt. False (and nothing changed) when
    /// another worker took the lease since. An expired lease nobody took over still commits: the work is done.
    ///
    /// Outcomes that coincide are written together, as one statement ([`group`]).
    pub async fn finish(&self, claim: &Claim, outcome: &Outcome) -> Result<bool, Error> {
        let (talk_id, detail, mono, reuploaded) = outcome_columns(outcome);
        let write = FencedWrite {
            portal: claim.portal.clone(),
            call_id: to_i64(claim.call_id)?,
            fence: claim.fence,
            owner: claim.owner.clone(),
            state: outcome.state().as_str(),
            lease_secs: 0.0,
            reason: outcome.reason(),
            detail: detail.map(str::to_owned),
            talk_id: talk_id.map(str::to_owned),
            mono,
            reuploaded,
        };
        self.fenced.submit(self, write).await
    }

    /// One statement for a batch of [`FencedWrite`]s; answers, in order, whether each changed its row.
    async fn write_fenced(&self, batch: &[FencedWrite]) -> Result<Vec<bool>, Error> {
        on_db!(self, |conn, d| {
            let mark = "v.column5 = 'uploading'";
            let lease_until = format!("{}v.column6))", d.lease_until_open);
            let fill = |sql: &str| {
                d.sql(sql)
                    .replace("{mark}", mark)
                    .replace("{lease_until_v}", &lease_until)
            };
            let mut qb = QueryBuilder::new(fill(FENCED_SET));
            qb.push_values(batch, |mut row, w| {
                row.push_bind(&w.portal)
                    .push_bind(w.call_id)
                    .push_bind(w.fence)
                    .push_bind(&w.owner)
                    .push_bind(w.state)
                    .push_bind(w.lease_secs)
                    .push_bind(w.reason)
                    .push_bind(&w.detail)
                    .push_bind(&w.talk_id)
                    .push_bind(w.mono)
                    .push_bind(w.reuploaded);
            });
            qb.push(fill(FENCED_WHERE));
            let rows = qb.build().fetch_all(&mut *conn).await?;
            let done: HashSet<(String, i64, i64)> = rows
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get("portal")?,
                        r.try_get("call_id")?,
                        r.try_get("fence")?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()?;
            Ok(batch
                .iter()
                .map(|w| done.contains(&(w.portal.clone(), w.call_id, w.fence)))
                .collect())
        })
    }

    /// Fenced: the call has no recording yet and is checked again in `delay` (continuous sync): it stays `pending`
    /// with reason `awaiting_recording` and `retry_at`; the lease is released. A row in doubt (`uploading`) stays
    /// in doubt, so that once its recording is back the duplicate check still runs. False when the claim is stale.
    pub async fn wait_for_recording(&self, claim: &Claim, delay: Duration) -> Result<bool, Error> {
        // `{lease_until}` is "now + $1 seconds": here the time of the next check.
        self.fenced_in(
            claim,
            delay,
            "UPDATE ledger SET state = CASE WHEN state = 'uploading' THEN 'uploading' ELSE 'pending' END, \
             reason = 'awaiting_recording', detail = NULL, \
             retry_at = {lease_until}, lease_owner = NULL, lease_until = NULL, updated_at = {now} \
             WHERE portal = $2 AND call_id = $3 AND fence = $4 AND lease_owner = $5 \
             AND state <> 'uploaded'",
        )
        .await
    }

    /// A fenced statement with a time span: `$1` seconds (for `{lease_until}` = now + `$1`), `$2` portal, `$3` call
    /// ID, `$4` fence, `$5` owner.
    async fn fenced_in(
        &self,
        claim: &Claim,
        span: Duration,
        template: &str,
    ) -> Result<bool, Error> {
        let id = to_i64(claim.call_id)?;
        on_db!(self, |conn, d| {
            let done = sqlx::query(&d.sql(template))
                .bind(span.as_secs_f64())
                .bind(&claim.portal)
                .bind(id)
                .bind(claim.fence)
                .bind(&claim.owner)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Calls of `portal` a continuous sync must take up again, ascending, with `after_id < ID ≤ up_to`, at most
    /// `limit`: `pending` or `uploading` rows (left by a stopped or crashed run) except those awaiting a recording
    /// whose next check is still ahead.
    pub async fn due(
        &self,
        portal: &str,
        after_id: u64,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, Error> {
        let (after, up_to) = (to_i64(after_id)?, to_i64(up_to)?);
        on_db!(self, |conn, d| {
            let sql = d.sql(&format!(
                "SELECT {ENTRY_COLUMNS} FROM ledger WHERE portal = $1 AND state IN ('pending', 'uploading') \
                 AND call_id > $2 AND call_id <= $3 AND (retry_at IS NULL OR retry_at <= {{now}}) \
                 ORDER BY call_id LIMIT $4"
            ));
            let rows = sqlx::query(&sql)
                .bind(portal)
                .bind(after)
                .bind(up_to)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            entries_from_rows!(rows)
        })
    }

    /// Portals with a call whose recording is due for another check now.
    pub async fn portals_due(&self) -> Result<Vec<String>, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "SELECT DISTINCT portal FROM ledger WHERE retry_at IS NOT NULL AND retry_at <= {now} \
                 AND state = 'pending' ORDER BY portal",
            );
            Ok(sqlx::query_scalar(&sql).fetch_all(&mut *conn).await?)
        })
    }

    /// Fenced: gives the lease back without an outcome (shutdown before the upload began). The row becomes
    /// `pending` again (due at once, also if it was awaiting a recording), except an `uploading` row, which stays
    /// in doubt.
    pub async fn release(&self, claim: &Claim) -> Result<bool, Error> {
        self.fenced(
            claim,
            &format!(
                "{RELEASE} WHERE portal = $1 AND call_id = $2 AND fence = $3 AND lease_owner = $4"
            ),
        )
        .await
    }

    /// [`Store::release`] for every call of `portal` that `owner` still holds: the end of a run gives back what it
    /// claimed and did not finish (calls claimed ahead of the workers when it stopped). Only for the holder of the
    /// portal's lease, which is the only one claiming this portal's calls. Returns how many were released.
    pub async fn release_held(&self, portal: &str, owner: &str) -> Result<u64, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(&format!(
                "{RELEASE} WHERE portal = $1 AND lease_owner = $2 AND state <> 'uploaded'"
            ));
            let done = sqlx::query(&sql)
                .bind(portal)
                .bind(owner)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// A fenced statement with parameters `$1` portal, `$2` call ID, `$3` fence, `$4` owner.
    async fn fenced(&self, claim: &Claim, template: &str) -> Result<bool, Error> {
        let id = to_i64(claim.call_id)?;
        on_db!(self, |conn, d| {
            let done = sqlx::query(&d.sql(template))
                .bind(&claim.portal)
                .bind(id)
                .bind(claim.fence)
                .bind(&claim.owner)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn entry(&self, portal: &str, call_id: u64) -> Result<Option<LedgerEntry>, Error> {
        let id = to_i64(call_id)?;
        on_db!(self, |conn, _d| {
            let sql =
                format!("SELECT {ENTRY_COLUMNS} FROM ledger WHERE portal = $1 AND call_id = $2");
            let row = sqlx::query(&sql)
                .bind(portal)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(row) => Ok(Some(entry_from_row!(row))),
                None => Ok(None),
            }
        })
    }

    /// Entries of `portal` in `states`, ascending call ID, at most `limit`.
    pub async fn entries(
        &self,
        portal: &str,
        states: &[LedgerState],
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, Error> {
        if states.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        on_db!(self, |conn, _d| {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM ledger WHERE portal = $1 AND state IN ({}) \
                 ORDER BY call_id LIMIT $2",
                state_list(states)
            );
            let rows = sqlx::query(&sql)
                .bind(portal)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            entries_from_rows!(rows)
        })
    }

    /// Counts by (state, reason), for one portal or all, ordered by state name then reason (none first).
    pub async fn counts(&self, portal: Option<&str>) -> Result<Vec<StateCount>, Error> {
        on_db!(self, |conn, _d| {
            let rows = sqlx::query(
                "SELECT state, reason, COUNT(*) AS n FROM ledger WHERE ($1 IS NULL OR portal = $1) \
                 GROUP BY state, reason",
            )
            .bind(portal)
            .fetch_all(&mut *conn)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(StateCount {
                    state: parse_state(row.try_get("state")?)?,
                    reason: row.try_get("reason")?,
                    count: to_u64(row.try_get("n")?)?,
                });
            }
            // Sorted here: NULL placement and text collation differ between the backends.
            out.sort_by(|a, b| (a.state.as_str(), &a.reason).cmp(&(b.state.as_str(), &b.reason)));
            Ok(out)
        })
    }

    /// Makes `failed` calls (of one portal or all; optionally only those with `reason`) `pending` again.
    /// Returns how many. Attempts are kept.
    pub async fn reset_failed(
        &self,
        portal: Option<&str>,
        reason: Option<&str>,
    ) -> Result<u64, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE ledger SET state = 'pending', reason = NULL, detail = NULL, updated_at = {now} \
                 WHERE state = 'failed' AND ($1 IS NULL OR portal = $1) AND ($2 IS NULL OR reason = $2)",
            );
            let done = sqlx::query(&sql)
                .bind(portal)
                .bind(reason)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// The keyset high-water mark of (portal, filter key).
    pub async fn cursor(&self, portal: &str, key: &str) -> Result<Option<u64>, Error> {
        on_db!(self, |conn, _d| {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT last_id FROM cursors WHERE portal = $1 AND key = $2")
                    .bind(portal)
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await?;
            last.map(to_u64).transpose()
        })
    }

    /// Moves the cursor forward to `last_id`; a lower value leaves it where it is.
    pub async fn set_cursor(&self, portal: &str, key: &str, last_id: u64) -> Result<(), Error> {
        let last = to_i64(last_id)?;
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO cursors (portal, key, last_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (portal, key) DO UPDATE SET last_id = excluded.last_id, updated_at = {now} \
                 WHERE excluded.last_id > cursors.last_id",
            );
            sqlx::query(&sql)
                .bind(portal)
                .bind(key)
                .bind(last)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    /// Records the start of a run; returns its ID.
    pub async fn start_run(&self, portal: &str, params: &serde_json::Value) -> Result<i64, Error> {
        on_db!(self, |conn, _d| {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO runs (portal, params) VALUES ($1, $2) RETURNING id",
            )
            .bind(portal)
            .bind(Json(params))
            .fetch_one(&mut *conn)
            .await?;
            Ok(id)
        })
    }

    pub async fn finish_run(
        &self,
        run_id: i64,
        status: &str,
        summary: &serde_json::Value,
    ) -> Result<(), Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE runs SET finished_at = {now}, status = $2, summary = $3 WHERE id = $1",
            );
            let done = sqlx::query(&sql)
                .bind(run_id)
                .bind(status)
                .bind(Json(summary))
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(Error::Data(format!("run {run_id} does not exist")));
            }
            Ok(())
        })
    }

    /// The most recent run (of one portal or any).
    pub async fn last_run(&self, portal: Option<&str>) -> Result<Option<RunRecord>, Error> {
        on_db!(self, |conn, _d| {
            let row = sqlx::query(
                "SELECT id, portal, started_at, finished_at, status, params, summary FROM runs \
                 WHERE ($1 IS NULL OR portal = $1) ORDER BY id DESC LIMIT 1",
            )
            .bind(portal)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let params: Json<serde_json::Value> = row.try_get("params")?;
            let summary: Option<Json<serde_json::Value>> = row.try_get("summary")?;
            Ok(Some(RunRecord {
                id: row.try_get("id")?,
                portal: row.try_get("portal")?,
                started_at: row.try_get("started_at")?,
                finished_at: row.try_get("finished_at")?,
                status: row.try_get("status")?,
                params: params.0,
                summary: summary.map(|s| s.0),
            }))
        })
    }
}

/// Portal leases: with several replicas on one PostgreSQL, one replica at a time lists and exports a portal
/// (the portal's REST limits are per portal, not per replica).
impl Store {
    /// Takes the portal's lease for `owner` until now + `lease` when it is free, expired, or already `owner`'s.
    pub async fn claim_portal(
        &self,
        portal: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<PortalLease>, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO portal_leases (portal, owner, fence, lease_until, updated_at) \
                 VALUES ($2, $3, 1, {lease_until}, {now}) \
                 ON CONFLICT (portal) DO UPDATE SET owner = excluded.owner, fence = portal_leases.fence + 1, \
                 lease_until = excluded.lease_until, updated_at = excluded.updated_at \
                 WHERE portal_leases.lease_until <= {now} OR portal_leases.owner = excluded.owner \
                 RETURNING fence",
            );
            let fence: Option<i64> = sqlx::query_scalar(&sql)
                .bind(lease.as_secs_f64())
                .bind(portal)
                .bind(owner)
                .fetch_optional(&mut *conn)
                .await?;
            Ok(fence.map(|fence| PortalLease {
                portal: portal.to_owned(),
                owner: owner.to_owned(),
                fence,
            }))
        })
    }

    /// Fenced: extends the portal lease. False when another replica has taken it over.
    pub async fn renew_portal(
        &self,
        lease: &PortalLease,
        duration: Duration,
    ) -> Result<bool, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE portal_leases SET lease_until = {lease_until}, updated_at = {now} \
                 WHERE portal = $2 AND owner = $3 AND fence = $4",
            );
            let done = sqlx::query(&sql)
                .bind(duration.as_secs_f64())
                .bind(&lease.portal)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Fenced: gives the portal lease up (it expires now) so another replica can take over at once.
    pub async fn release_portal(&self, lease: &PortalLease) -> Result<bool, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE portal_leases SET lease_until = {now}, updated_at = {now} \
                 WHERE portal = $1 AND owner = $2 AND fence = $3",
            );
            let done = sqlx::query(&sql)
                .bind(&lease.portal)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

/// `'pending', 'failed'` — built from the enum's fixed names, never from input.
fn state_list(states: &[LedgerState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_state(s: String) -> Result<LedgerState, Error> {
    s.parse()
        .map_err(|e| Error::Data(format!("stored ledger state: {e}")))
}

fn to_i64(n: u64) -> Result<i64, Error> {
    i64::try_from(n)
        .map_err(|_| Error::Data(format!("ID {n} does not fit the ledger's 63-bit integers")))
}

fn to_u64(n: i64) -> Result<u64, Error> {
    u64::try_from(n).map_err(|_| Error::Data(format!("negative stored value {n}")))
}

fn to_u32(n: i64) -> Result<u32, Error> {
    u32::try_from(n).map_err(|_| Error::Data(format!("stored count {n} out of range")))
}

// Installed applications; declared here, after `Dialect`, because it reuses the store's private parts.
mod portals;
pub use portals::{
    DueRefresh, Installation, Portal, PortalSettings, PortalStatus, PortalTokens, SecretKey,
    StoredSettings,
};
// The application server's progress journal and report pages; after the macros it uses.
mod journal;
pub use journal::{run_status, RunProgress};

//! The ledger: one row per (portal, call `ID`) with its state (`pending` → `uploading` → `uploaded` | `skipped` |
//! `failed`), the stored call, and a lease with a fence so that only the worker holding the current lease can commit
//! an outcome (`docs/mapping.md`, "Once and only once"). Rows are never deleted.
//!
//! - [`register`] — new calls in, stored calls refreshed;
//! - [`claim`] — taking leases on calls, one or many;
//! - [`commit`] — what a lease holder writes: the upload mark, renewals, outcomes, releases;
//! - [`settle`] — outcomes for calls nobody holds, claimed and committed at once;
//! - this file — the row types and the reads (single rows, pages, counts, what is due).

mod claim;
mod commit;
mod register;
mod settle;

use b24sense_core::{Call, LedgerState};
use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::sql::{parse_state, state_list, to_i64, to_u64};
use crate::{Error, Store};

pub use claim::claim_owner;
pub(crate) use commit::FencedWrite;
pub(crate) use settle::UnheldWrite;

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

const ENTRY_COLUMNS: &str = "portal, call_id, state, reason, detail, talk_id, attempts, mono, \
     reuploaded_after_crash, call_json, lease_owner, lease_until, retry_at, updated_at";
impl Store {
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

    /// Up to `limit` ledger rows of `portal` with a call ID above `after` (all when `None`), ascending: a
    /// keyset page, so a report over any number of calls is read in bounded pieces. The stored call is not
    /// read (`call` is `None`).
    pub async fn ledger_page(
        &self,
        portal: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, Error> {
        let after = after.map(to_i64).transpose()?.unwrap_or(-1);
        let columns = ENTRY_COLUMNS.replace("call_json", "NULL AS call_json");
        on_db!(self, |conn, _d| {
            let sql = format!(
                "SELECT {columns} FROM ledger WHERE portal = $1 AND call_id > $2 ORDER BY call_id LIMIT $3"
            );
            let rows = sqlx::query(&sql)
                .bind(portal)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            entries_from_rows!(rows)
        })
    }
}

//! The runs journal: one row per run of the exporter, for the CLI (start, finish with a summary, the last run)
//! and for the application server, which also keeps the run's live progress (JSON) with a heartbeat, so that
//! progress survives a restart and a replica can tell a run another live replica is running from one whose
//! process is gone.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::Row;

use crate::{Error, Store};

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

/// A run's stored progress.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProgress {
    pub id: i64,
    pub portal: String,
    /// `None` while it runs; `shutdown` (stopped by a server shutdown, to be resumed), `interrupted` (its
    /// process was gone; taken over by [`Store::take_over_run`]), `finished`, `stopped`.
    pub status: Option<String>,
    pub progress: serde_json::Value,
    /// The last heartbeat (progress write).
    pub updated_at: DateTime<Utc>,
    /// Still marked running, but without a heartbeat for the `stale_after` asked for: its process is gone.
    pub stale: bool,
}

/// The run statuses the journal gives a meaning to.
pub mod run_status {
    /// Stopped because the server shut down; the next server start resumes it.
    pub const SHUTDOWN: &str = "shutdown";
    /// Its process was gone (crash, or shut down); another server took it over and resumed it.
    pub const INTERRUPTED: &str = "interrupted";
}

/// `{lease_until}` is now + `$1` seconds: bound to minus `stale_after` it is the oldest live heartbeat.
const STALE: &str = "(status IS NULL AND COALESCE(updated_at, started_at) <= {lease_until})";

fn progress_columns() -> String {
    format!(
        "id, portal, status, progress, COALESCE(updated_at, started_at) AS heartbeat, {STALE} AS stale"
    )
}

/// Finishing a run that has no row is an error: the caller holds a run ID the journal never gave out.
fn run_found(run_id: i64, rows_affected: u64) -> Result<(), Error> {
    if rows_affected == 0 {
        return Err(Error::Data(format!("run {run_id} does not exist")));
    }
    Ok(())
}

impl Store {
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
            run_found(run_id, done.rows_affected())
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

    /// Records the start of a run of the application server with its first progress; returns its ID.
    pub async fn start_web_run(
        &self,
        portal: &str,
        params: &serde_json::Value,
        progress: &serde_json::Value,
    ) -> Result<i64, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO runs (portal, params, progress, updated_at) VALUES ($1, $2, $3, {now}) \
                 RETURNING id",
            );
            let id: i64 = sqlx::query_scalar(&sql)
                .bind(portal)
                .bind(Json(params))
                .bind(Json(progress))
                .fetch_one(&mut *conn)
                .await?;
            Ok(id)
        })
    }

    /// Stores the run's progress and beats its heartbeat, while the run is still marked running. False when
    /// it is not (another server declared it interrupted, or it ended).
    pub async fn set_run_progress(
        &self,
        run_id: i64,
        progress: &serde_json::Value,
    ) -> Result<bool, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE runs SET progress = $2, updated_at = {now} WHERE id = $1 AND status IS NULL",
            );
            let done = sqlx::query(&sql)
                .bind(run_id)
                .bind(Json(progress))
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Ends a run with its status, the engine's summary and the final progress, in one statement.
    pub async fn finish_web_run(
        &self,
        run_id: i64,
        status: &str,
        summary: &serde_json::Value,
        progress: &serde_json::Value,
    ) -> Result<(), Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE runs SET finished_at = {now}, status = $2, summary = $3, progress = $4, \
                 updated_at = {now} WHERE id = $1",
            );
            let done = sqlx::query(&sql)
                .bind(run_id)
                .bind(status)
                .bind(Json(summary))
                .bind(Json(progress))
                .execute(&mut *conn)
                .await?;
            run_found(run_id, done.rows_affected())
        })
    }

    /// The portal's latest run that has progress; `stale` says whether it is marked running without a
    /// heartbeat for `stale_after`.
    pub async fn last_run_progress(
        &self,
        portal: &str,
        stale_after: Duration,
    ) -> Result<Option<RunProgress>, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(&format!(
                "SELECT {} FROM runs WHERE portal = $2 AND progress IS NOT NULL ORDER BY id DESC LIMIT 1",
                progress_columns()
            ));
            let row = sqlx::query(&sql)
                .bind(-stale_after.as_secs_f64())
                .bind(portal)
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(row) => Ok(Some(progress_from_row!(row))),
                None => Ok(None),
            }
        })
    }

    /// Every portal's latest run that needs resuming, by run ID: stopped by a server shutdown, or marked
    /// running with no heartbeat for `stale_after` (its process is gone; a run another live replica is
    /// running keeps beating).
    pub async fn runs_to_resume(&self, stale_after: Duration) -> Result<Vec<RunProgress>, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(&format!(
                "SELECT {} FROM runs r WHERE progress IS NOT NULL \
                 AND id = (SELECT MAX(q.id) FROM runs q WHERE q.portal = r.portal AND q.progress IS NOT NULL) \
                 AND (status = '{}' OR {STALE}) ORDER BY id",
                progress_columns(),
                run_status::SHUTDOWN,
            ));
            let rows = sqlx::query(&sql)
                .bind(-stale_after.as_secs_f64())
                .fetch_all(&mut *conn)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(progress_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Compare-and-swap: marks the run `interrupted` with `progress` if it still needs resuming (as
    /// [`Store::runs_to_resume`] decides). True for exactly one caller, which then resumes it: replicas
    /// recovering at the same time never both resume one run, and a run whose heartbeat came back is left alone.
    pub async fn take_over_run(
        &self,
        run_id: i64,
        stale_after: Duration,
        progress: &serde_json::Value,
    ) -> Result<bool, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(&format!(
                "UPDATE runs SET status = '{}', finished_at = COALESCE(finished_at, {{now}}), progress = $3, \
                 updated_at = {{now}} WHERE id = $2 AND (status = '{}' OR {STALE})",
                run_status::INTERRUPTED,
                run_status::SHUTDOWN,
            ));
            let done = sqlx::query(&sql)
                .bind(-stale_after.as_secs_f64())
                .bind(run_id)
                .bind(Json(progress))
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

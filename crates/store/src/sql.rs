//! What every statement of the store shares, declared first so that the other modules can use its macros:
//! [`Dialect`] (the SQL that differs between SQLite and PostgreSQL), [`on_db!`] (one body compiled for each
//! backend), the macros that read rows into the store's types (row types differ per backend, hence macros), and
//! the conversions between the store's values and SQL's.
//!
//! The row macros name everything by full path, so they work wherever they are expanded.

use b24sense_core::LedgerState;

use crate::Error;

/// The SQL that differs between the backends. Templates use `{now}` and `{lease_until}` (the latter reads
/// the lease length in seconds from parameter `$1`).
pub(crate) struct Dialect {
    pub(crate) now: &'static str,
    pub(crate) lease_until: &'static str,
    /// `lease_until` up to its span, for queries that bind the span themselves; closed by `))`.
    pub(crate) lease_until_open: &'static str,
    /// Appended to row-picking subqueries so that replicas skip each other's rows instead of waiting.
    pub(crate) skip_locked: &'static str,
    /// SQLite: take the write lock up front so the busy timeout applies (a deferred transaction that
    /// upgrades from read to write can fail with SQLITE_BUSY at once).
    pub(crate) begin: &'static str,
}

impl Dialect {
    pub(crate) const SQLITE: Dialect = Dialect {
        now: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        lease_until: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', $1))",
        lease_until_open: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', ",
        skip_locked: "",
        begin: "BEGIN IMMEDIATE",
    };
    // PostgreSQL: the database's clock, so that replicas on several machines agree on lease expiry.
    pub(crate) const POSTGRES: Dialect = Dialect {
        now: "now()",
        lease_until: "(now() + make_interval(secs => $1))",
        lease_until_open: "(now() + make_interval(secs => ",
        skip_locked: "FOR UPDATE SKIP LOCKED",
        begin: "BEGIN",
    };

    pub(crate) fn sql(&self, template: &str) -> String {
        template
            .replace("{now}", self.now)
            .replace("{lease_until}", self.lease_until)
            .replace("{skip_locked}", self.skip_locked)
    }
}

/// Runs `$body` with `$conn` bound to a connection of the store's database and `$d` to its dialect. The body is
/// written once and compiled for each backend (no `dyn`, no `Any` driver).
macro_rules! on_db {
    ($self:expr, |$conn:ident, $d:ident| $body:expr) => {{
        if let Some(e) = $self.injected() {
            return Err(e);
        }
        $self.count_statement();
        let out = match &$self.db {
            $crate::Db::Sqlite(sqlite) => {
                let mut held = sqlite.connection.lock().await;
                sqlite.heal(&mut held).await?;
                let $conn: &mut sqlx::SqliteConnection = match held.as_mut() {
                    Some(c) => &mut **c,
                    None => return Err($crate::Error::Database(sqlx::Error::PoolClosed)),
                };
                let $d = &$crate::sql::Dialect::SQLITE;
                $body
            }
            $crate::Db::Postgres(pool) => {
                // Bounded (`OpenOptions::answer_timeout`); given up, the statement's connection is dropped.
                let limit = $self.place.answer_timeout;
                let answered = tokio::time::timeout(limit, async {
                    let mut held = pool.acquire().await?;
                    let $conn: &mut sqlx::PgConnection = &mut *held;
                    let $d = &$crate::sql::Dialect::POSTGRES;
                    $body
                })
                .await;
                match answered {
                    Ok(out) => out,
                    Err(_) => return Err($crate::Error::Unreachable(format!(
                        "the database did not answer within {limit:?}"
                    ))),
                }
            }
        };
        if let Some(e) = $self.lost_answer() {
            return Err(e);
        }
        out
    }};
}

/// Reads a [`crate::LedgerEntry`] from a row of `SELECT {ENTRY_COLUMNS}` (see [`crate::ledger`]).
macro_rules! entry_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = &$row;
        let call_id: i64 = row.try_get("call_id")?;
        let call_json: Option<sqlx::types::Json<b24sense_core::Call>> =
            row.try_get("call_json").map_err(|e| match e {
                sqlx::Error::ColumnDecode { .. } => {
                    $crate::Error::Data(format!("stored call {call_id} cannot be read: {e}"))
                }
                other => $crate::Error::Database(other),
            })?;
        $crate::LedgerEntry {
            portal: row.try_get("portal")?,
            call_id: $crate::sql::to_u64(call_id)?,
            state: $crate::sql::parse_state(row.try_get("state")?)?,
            reason: row.try_get("reason")?,
            detail: row.try_get("detail")?,
            talk_id: row.try_get("talk_id")?,
            attempts: $crate::sql::to_u32(row.try_get("attempts")?)?,
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

/// Every row of a `SELECT {ENTRY_COLUMNS}` as a [`crate::LedgerEntry`]; the first unreadable row is the error.
macro_rules! entries_from_rows {
    ($rows:expr) => {
        $rows
            .iter()
            .map(|row| -> Result<$crate::LedgerEntry, $crate::Error> { Ok(entry_from_row!(row)) })
            .collect::<Result<Vec<$crate::LedgerEntry>, $crate::Error>>()
    };
}

/// A [`crate::Claim`] from a row `RETURNING fence, state, attempts, created_at`.
macro_rules! claim_from_row {
    ($row:expr, $portal:expr, $call_id:expr, $owner:expr) => {{
        use sqlx::Row as _;
        let row = &$row;
        let previous = $crate::sql::parse_state(row.try_get("state")?)?;
        $crate::Claim {
            portal: $portal.to_owned(),
            call_id: $call_id,
            owner: $owner.to_owned(),
            fence: row.try_get("fence")?,
            in_doubt: previous == b24sense_core::LedgerState::Uploading,
            attempts: $crate::sql::to_u32(row.try_get("attempts")?)?,
            previous,
            first_seen: row.try_get("created_at")?,
        }
    }};
}

/// A [`crate::RunProgress`] from a row of the journal's progress columns.
macro_rules! progress_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = &$row;
        let progress: sqlx::types::Json<serde_json::Value> = row.try_get("progress")?;
        $crate::RunProgress {
            id: row.try_get("id")?,
            portal: row.try_get("portal")?,
            status: row.try_get("status")?,
            progress: progress.0,
            updated_at: row.try_get("heartbeat")?,
            stale: row.try_get("stale")?,
        }
    }};
}

/// A [`crate::Portal`] from a row of `SELECT {PORTAL_COLUMNS}`, its application token decrypted with `$key`.
macro_rules! portal_from_row {
    ($key:expr, $row:expr) => {{
        use sqlx::Row as _;
        let row = &$row;
        let member_id: String = row.try_get("member_id")?;
        let app_token: Option<String> = row.try_get("application_token")?;
        let application_token = match app_token {
            Some(s) => Some($key.open(
                &s,
                &$crate::secret_key::aad(&member_id, "application_token"),
            )?),
            None => None,
        };
        $crate::Portal {
            domain: row.try_get("domain")?,
            client_endpoint: row.try_get("client_endpoint")?,
            server_endpoint: row.try_get("server_endpoint")?,
            application_token,
            status: $crate::PortalStatus::parse(row.try_get("status")?)?,
            lang: row.try_get("lang")?,
            installed_at: row.try_get("installed_at")?,
            updated_at: row.try_get("updated_at")?,
            tokens_rotated_at: row.try_get("tokens_rotated_at")?,
            refresh_refused: row.try_get("refresh_refused")?,
            generation: row.try_get("generation")?,
            member_id,
        }
    }};
}

/// `'pending', 'failed'` — built from the enum's fixed names, never from input.
pub(crate) fn state_list(states: &[LedgerState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn parse_state(s: String) -> Result<LedgerState, Error> {
    s.parse()
        .map_err(|e| Error::Data(format!("stored ledger state: {e}")))
}

pub(crate) fn to_i64(n: u64) -> Result<i64, Error> {
    i64::try_from(n)
        .map_err(|_| Error::Data(format!("ID {n} does not fit the ledger's 63-bit integers")))
}

pub(crate) fn to_u64(n: i64) -> Result<u64, Error> {
    u64::try_from(n).map_err(|_| Error::Data(format!("negative stored value {n}")))
}

pub(crate) fn to_u32(n: i64) -> Result<u32, Error> {
    u32::try_from(n).map_err(|_| Error::Data(format!("stored count {n} out of range")))
}

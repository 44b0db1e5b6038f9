//! The chat ledger: one row per (portal, Open Lines session ID), in table `chat_ledger` — apart from the calls'
//! `ledger`, so that a session and a call with the same number never share a row. The state machine is the calls'
//! (`pending` → `uploading` → `uploaded` | `skipped` | `failed`), with a lease and a fence so that only the worker
//! holding the current lease can write ([`ChatClaim`]). A session too long for one `UploadText` goes out in
//! `parts` talks; `talk_ids` lists those stored so far, in part order. Rows are never deleted.
//!
//! - this file — the row types, registering listed sessions, the reads;
//! - [`lease`] — claims and the fenced writes of the lease holder.

mod lease;

use b24sense_core::LedgerState;
use chrono::{DateTime, Utc};
use sqlx::{Connection, QueryBuilder, Row};

use crate::sql::{parse_state, state_list, to_i64, to_u64};
use crate::{Error, StateCount, Store};

/// One chat ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatEntry {
    pub portal: String,
    pub session_id: u64,
    /// The session's CRM activity (`IMOPENLINES_SESSION`), by which it is read again.
    pub activity_id: u64,
    pub state: LedgerState,
    /// Skip or failure reason; for a `pending` row, why it waits (`session_open`).
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// The talks stored so far, in part order (all of them once `uploaded`).
    pub talk_ids: Vec<String>,
    /// How many talks the session goes out in (0 until its first upload began).
    pub parts: u32,
    pub attempts: u32,
    pub reuploaded_after_crash: bool,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A lease on one session's row; every write of its holder is fenced by `fence` (see the calls' `Claim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatClaim {
    pub portal: String,
    pub session_id: u64,
    pub owner: String,
    pub fence: i64,
    /// The row was `uploading` when claimed: the part after the last stored one may have been stored.
    pub in_doubt: bool,
    pub attempts: u32,
    pub previous: LedgerState,
    /// Talks stored before this claim, in part order.
    pub talk_ids: Vec<String>,
    pub parts: u32,
}

/// A session as listed: its ID and its activity's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedSession {
    pub session_id: u64,
    pub activity_id: u64,
}

/// What the holder of a session's lease records at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatVerdict<'a> {
    /// Every part is stored (their talk IDs were recorded part by part).
    Uploaded {
        reuploaded_after_crash: bool,
    },
    Skipped {
        reason: &'a str,
    },
    Failed {
        reason: &'a str,
        detail: &'a str,
    },
    /// Not uploadable yet (`session_open`): the row stays `pending` with this reason and is taken up again by a
    /// later run; no attempt is counted.
    Waiting {
        reason: &'a str,
    },
}

const CHAT_COLUMNS: &str =
    "portal, session_id, activity_id, state, reason, detail, talk_ids, parts, \
     attempts, reuploaded_after_crash, lease_owner, lease_until, updated_at";

/// Rows per multi-row statement (3 parameters each).
const CHUNK: usize = 500;

pub(crate) fn split_ids(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads a [`ChatEntry`] from a row of `SELECT {CHAT_COLUMNS}`.
macro_rules! chat_entry_from_row {
    ($row:expr) => {{
        let row = &$row;
        ChatEntry {
            portal: row.try_get("portal")?,
            session_id: to_u64(row.try_get("session_id")?)?,
            activity_id: to_u64(row.try_get("activity_id")?)?,
            state: parse_state(row.try_get("state")?)?,
            reason: row.try_get("reason")?,
            detail: row.try_get("detail")?,
            talk_ids: split_ids(&row.try_get::<String, _>("talk_ids")?),
            parts: crate::sql::to_u32(row.try_get("parts")?)?,
            attempts: crate::sql::to_u32(row.try_get("attempts")?)?,
            reuploaded_after_crash: row.try_get("reuploaded_after_crash")?,
            lease_owner: row.try_get("lease_owner")?,
            lease_until: row.try_get("lease_until")?,
            updated_at: row.try_get("updated_at")?,
        }
    }};
}

impl Store {
    /// Inserts each listed session as `pending` unless its row exists (an existing row keeps its state; its
    /// activity ID is brought up to date). One transaction. Returns the rows in input order (one per session).
    pub async fn register_chats(
        &self,
        portal: &str,
        sessions: &[ListedSession],
    ) -> Result<Vec<ChatEntry>, Error> {
        let mut unique: Vec<(i64, i64)> = sessions
            .iter()
            .map(|s| Ok((to_i64(s.session_id)?, to_i64(s.activity_id)?)))
            .collect::<Result<_, Error>>()?;
        // Ascending, one per session (the last listing wins): replicas lock rows in the same order.
        unique.reverse();
        unique.sort_by_key(|(s, _)| *s);
        unique.dedup_by_key(|(s, _)| *s);
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = std::collections::HashMap::with_capacity(unique.len());
        on_db!(self, |conn, d| {
            let mut tx = conn.begin_with(d.begin).await?;
            let tail = d.sql(
                " ON CONFLICT (portal, session_id) DO UPDATE SET activity_id = excluded.activity_id, \
                 updated_at = {now} WHERE chat_ledger.activity_id <> excluded.activity_id",
            );
            for chunk in unique.chunks(CHUNK) {
                let mut qb =
                    QueryBuilder::new("INSERT INTO chat_ledger (portal, session_id, activity_id) ");
                qb.push_values(chunk, |mut b, (s, a)| {
                    b.push_bind(portal).push_bind(*s).push_bind(*a);
                });
                qb.push(&tail);
                qb.build().persistent(false).execute(&mut *tx).await?;
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {CHAT_COLUMNS} FROM chat_ledger WHERE portal = "
                ));
                qb.push_bind(portal).push(" AND session_id IN (");
                let mut ids = qb.separated(", ");
                for (s, _) in chunk {
                    ids.push_bind(*s);
                }
                qb.push(")");
                for row in qb.build().persistent(false).fetch_all(&mut *tx).await? {
                    let entry = chat_entry_from_row!(row);
                    found.insert(entry.session_id, entry);
                }
            }
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        sessions
            .iter()
            .map(|s| {
                found.get(&s.session_id).cloned().ok_or_else(|| {
                    Error::Data(format!(
                        "session {} vanished while registering",
                        s.session_id
                    ))
                })
            })
            .collect()
    }

    /// The row of one session.
    pub async fn chat_entry(
        &self,
        portal: &str,
        session_id: u64,
    ) -> Result<Option<ChatEntry>, Error> {
        let id = to_i64(session_id)?;
        on_db!(self, |conn, _d| {
            let sql = format!(
                "SELECT {CHAT_COLUMNS} FROM chat_ledger WHERE portal = $1 AND session_id = $2"
            );
            let row = sqlx::query(&sql)
                .bind(portal)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(row) => Ok(Some(chat_entry_from_row!(row))),
                None => Ok(None),
            }
        })
    }

    /// The rows of these sessions that exist, read only (a dry run): in input order, `None` for a session the
    /// ledger does not know.
    pub async fn chat_entries_of(
        &self,
        portal: &str,
        session_ids: &[u64],
    ) -> Result<Vec<Option<ChatEntry>>, Error> {
        let ids = session_ids
            .iter()
            .map(|&s| to_i64(s))
            .collect::<Result<Vec<i64>, Error>>()?;
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            on_db!(self, |conn, _d| {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {CHAT_COLUMNS} FROM chat_ledger WHERE portal = "
                ));
                qb.push_bind(portal).push(" AND session_id IN (");
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                qb.push(")");
                for row in qb.build().persistent(false).fetch_all(&mut *conn).await? {
                    let entry = chat_entry_from_row!(row);
                    found.insert(entry.session_id, entry);
                }
                Ok::<(), Error>(())
            })?;
        }
        Ok(session_ids.iter().map(|s| found.get(s).cloned()).collect())
    }

    /// Rows of `portal` in `states` with a session ID above `after`, ascending, at most `limit`: a keyset page
    /// (a report, or the unfinished sessions a continuous sync takes up again).
    pub async fn chat_entries(
        &self,
        portal: &str,
        states: &[LedgerState],
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChatEntry>, Error> {
        if states.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let after = to_i64(after)?;
        on_db!(self, |conn, _d| {
            let sql = format!(
                "SELECT {CHAT_COLUMNS} FROM chat_ledger WHERE portal = $1 AND state IN ({}) \
                 AND session_id > $2 ORDER BY session_id LIMIT $3",
                state_list(states)
            );
            let rows = sqlx::query(&sql)
                .bind(portal)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(chat_entry_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Up to `limit` chat ledger rows of `portal`, whatever their state, with a session ID above `after` (all when
    /// `None`), ascending: a keyset page for the report, so any number of sessions is read in bounded pieces.
    pub async fn chat_ledger_page(
        &self,
        portal: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ChatEntry>, Error> {
        let after = after.map(to_i64).transpose()?.unwrap_or(-1);
        on_db!(self, |conn, _d| {
            let sql = format!(
                "SELECT {CHAT_COLUMNS} FROM chat_ledger WHERE portal = $1 AND session_id > $2 \
                 ORDER BY session_id LIMIT $3"
            );
            let rows = sqlx::query(&sql)
                .bind(portal)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(chat_entry_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Sessions by (state, reason), for one portal or all, ordered by state name then reason (none first).
    pub async fn chat_counts(&self, portal: Option<&str>) -> Result<Vec<StateCount>, Error> {
        on_db!(self, |conn, _d| {
            let rows = sqlx::query(
                "SELECT state, reason, COUNT(*) AS n FROM chat_ledger \
                 WHERE ($1 IS NULL OR portal = $1) GROUP BY state, reason",
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
            out.sort_by(|a, b| (a.state.as_str(), &a.reason).cmp(&(b.state.as_str(), &b.reason)));
            Ok(out)
        })
    }
}

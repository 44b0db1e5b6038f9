//! Registering listed calls: new ones become `pending` rows, existing ones not yet `uploaded` get the call as
//! listed now (a recording may have appeared). Pages are written in chunks, in one transaction.

use std::collections::HashMap;

use b24sense_core::{Call, LedgerState};
use sqlx::types::Json;
use sqlx::{Connection, QueryBuilder};

use super::{LedgerEntry, ENTRY_COLUMNS};
use crate::sql::to_i64;
use crate::{Error, Store};

/// Rows per multi-row statement in `register` (3 parameters each, far below both backends' limits).
pub(super) const REGISTER_CHUNK: usize = 500;

impl Store {
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
            Ok::<(), Error>(())
        })?;
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
}

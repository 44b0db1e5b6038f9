//! Taking leases on calls: one call ([`Store::claim`]), the next free ones in some states
//! ([`Store::claim_next`]), or a given list ([`Store::claim_many`]). A claim bumps the row's fence; the state
//! is not changed.
//!
//! A claim also takes rows whose lease `owner` itself holds: `owner` names one claim (the engine makes a new one
//! for each, see [`claim_owner`]), so when a claim took effect but its answer was lost (the connection cut after
//! the commit), its retry with the same `owner` gets those rows back instead of waiting a whole lease for them.

use std::time::Duration;

use b24sense_core::LedgerState;
use sqlx::{QueryBuilder, Row};

use super::register::REGISTER_CHUNK;
use super::Claim;
use crate::sql::{state_list, to_i64, to_u64};
use crate::{Error, Store};

/// The lease owner of one claim of run `run` (its worker ID): `run/n`, a new `n` for each claim (a retry of the
/// same claim keeps it). [`Store::release_held`] gives back every claim of the run.
pub fn claim_owner(run: &str, n: u64) -> String {
    format!("{run}/{n}")
}

impl Store {
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
        let claim = on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE ledger SET lease_owner = $4, lease_until = {lease_until}, fence = fence + 1, \
                 updated_at = {now} \
                 WHERE portal = $2 AND call_id = $3 AND state <> 'uploaded' \
                 AND (lease_until IS NULL OR lease_until <= {now} OR lease_owner = $4) \
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
                Some(row) => Ok::<_, Error>(Some(claim_from_row!(row, portal, call_id, owner))),
                None => Ok(None),
            }
        })?;
        self.lost_claim_answer()?;
        Ok(claim)
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
                 WHERE portal = $2 AND state IN ({states}) \
                 AND (lease_until IS NULL OR lease_until <= {{now}} OR lease_owner = $3) \
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
            Ok::<_, Error>(claims)
        })?;
        self.lost_claim_answer()?;
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
                    ") AND state <> 'uploaded' AND (lease_until IS NULL OR lease_until <= {now} \
                     OR lease_owner = ",
                ));
                qb.push_bind(owner).push(d.sql(
                    ") ORDER BY call_id {skip_locked}) \
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
                Ok::<(), Error>(())
            })?;
        }
        self.lost_claim_answer()?;
        claims.sort_by_key(|c| c.call_id);
        Ok(claims)
    }
}

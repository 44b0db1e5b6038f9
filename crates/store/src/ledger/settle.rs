//! [`Store::settle_unheld`]: an outcome for a call nobody holds, claimed and committed at once (a call without a
//! recording is skipped this way, without a lease of its own). Settlements that coincide — a listing page's calls
//! without recordings — are written together, as one statement ([`crate::group`]).

use std::collections::HashSet;

use b24sense_core::Outcome;
use sqlx::{QueryBuilder, Row};

use super::commit::outcome_columns;
use crate::group::GroupWrite;
use crate::sql::to_i64;
use crate::{Error, Store};

/// A settlement queued for a grouped statement.
pub(crate) struct UnheldWrite {
    portal: String,
    call_id: i64,
    state: &'static str,
    reason: Option<&'static str>,
    detail: Option<String>,
    talk_id: Option<String>,
    mono: bool,
    reuploaded: bool,
}

impl GroupWrite for UnheldWrite {
    type Target = Store;
    fn write_all(
        store: &Store,
        batch: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<bool>, Error>> + Send {
        store.write_unheld(batch)
    }
}

/// Settlements in one statement. `v` is the `VALUES` list: (1) portal, (2) call ID, (3) state, (4) reason,
/// (5) detail, (6) talk ID, (7) mono, (8) re-uploaded after a crash. The fence moves on, as with a claim, so that
/// no earlier claim can commit afterwards; a row `uploaded`, or leased to someone, is left alone.
const UNHELD_SET: &str = "UPDATE ledger SET state = v.column3, reason = v.column4, detail = v.column5, \
     talk_id = COALESCE(v.column6, ledger.talk_id), mono = v.column7, reuploaded_after_crash = v.column8, \
     attempts = ledger.attempts + 1, fence = ledger.fence + 1, \
     lease_owner = NULL, lease_until = NULL, retry_at = NULL, updated_at = {now} FROM (";
const UNHELD_WHERE: &str = ") AS v WHERE ledger.portal = v.column1 AND ledger.call_id = v.column2 \
     AND ledger.state <> 'uploaded' AND (ledger.lease_until IS NULL OR ledger.lease_until <= {now}) \
     RETURNING ledger.portal, ledger.call_id";

impl Store {
    /// Claims and commits at once: records `outcome` for a call nobody holds (the fence moves on, as with a claim,
    /// so no earlier claim can commit afterwards). For outcomes reached without an upload. False, and nothing
    /// changed, when the call is `uploaded`, unknown or leased to someone: then take the usual way
    /// ([`Store::claim`], then [`Store::finish`]).
    ///
    /// Settlements that coincide are written together, as one statement (module `group`).
    pub async fn settle_unheld(
        &self,
        portal: &str,
        call_id: u64,
        outcome: &Outcome,
    ) -> Result<bool, Error> {
        let (talk_id, detail, mono, reuploaded) = outcome_columns(outcome);
        let write = UnheldWrite {
            portal: portal.to_owned(),
            call_id: to_i64(call_id)?,
            state: outcome.state().as_str(),
            reason: outcome.reason(),
            detail: detail.map(str::to_owned),
            talk_id: talk_id.map(str::to_owned),
            mono,
            reuploaded,
        };
        self.unheld.submit(self, write).await
    }

    /// One statement for a batch of [`UnheldWrite`]s; answers, in order, whether each changed its row.
    async fn write_unheld(&self, batch: &[UnheldWrite]) -> Result<Vec<bool>, Error> {
        on_db!(self, |conn, d| {
            let mut qb = QueryBuilder::new(d.sql(UNHELD_SET));
            qb.push_values(batch, |mut row, w| {
                row.push_bind(&w.portal)
                    .push_bind(w.call_id)
                    .push_bind(w.state)
                    .push_bind(w.reason)
                    .push_bind(&w.detail)
                    .push_bind(&w.talk_id)
                    .push_bind(w.mono)
                    .push_bind(w.reuploaded);
            });
            qb.push(d.sql(UNHELD_WHERE));
            let rows = qb.build().fetch_all(&mut *conn).await?;
            let done: HashSet<(String, i64)> = rows
                .iter()
                .map(|r| Ok((r.try_get("portal")?, r.try_get("call_id")?)))
                .collect::<Result<_, sqlx::Error>>()?;
            Ok(batch
                .iter()
                .map(|w| done.contains(&(w.portal.clone(), w.call_id)))
                .collect())
        })
    }
}

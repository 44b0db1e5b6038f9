//! What the holder of a call's lease writes, each fenced (it changes nothing once the fence has moved on): the
//! `uploading` mark, lease renewals, the outcome, a wait for the recording, the release. Marks and outcomes are
//! grouped into one statement when they coincide ([`crate::group`]).

use std::collections::HashSet;
use std::time::Duration;

use b24sense_core::{LedgerState, Outcome};
use sqlx::{QueryBuilder, Row};

use super::Claim;
use crate::group::GroupWrite;
use crate::sql::to_i64;
use crate::{Error, Store};

/// The `SET` of a release: the row becomes `pending` again, except an `uploading` row, which stays in doubt.
const RELEASE: &str = "UPDATE ledger SET \
     state = CASE WHEN state = 'uploading' THEN 'uploading' ELSE 'pending' END, \
     reason = CASE WHEN state = 'uploading' THEN reason ELSE NULL END, \
     detail = CASE WHEN state = 'uploading' THEN detail ELSE NULL END, \
     lease_owner = NULL, lease_until = NULL, retry_at = NULL, updated_at = {now}";

/// A fenced write queued for a grouped statement: [`Store::mark_uploading`] or [`Store::finish`] of one claim.
pub(crate) struct FencedWrite {
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
pub(super) fn outcome_columns(outcome: &Outcome) -> (Option<&str>, Option<&str>, bool, bool) {
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
    /// Fenced: the row becomes `uploading` and the lease runs until now + `lease`. Written at the upload's fence,
    /// right before the half-close: SpeechSense stores a talk only once the client half-closes the stream, and an
    /// abandoned stream stores nothing, so a talk can exist only for rows marked here. False when the claim is
    /// stale (another worker took the call over, or it was released). An expired lease nobody took over is still
    /// this claim's: the fence has not moved.
    ///
    /// Marks that coincide are written together, as one statement (module `group`).
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
    /// Outcomes that coincide are written together, as one statement (module `group`).
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

    /// A fenced statement with a time span: `$1` seconds (for `{lease_until}` = now + `$1`; a statement without it
    /// leaves `$1` unused), `$2` portal, `$3` call ID, `$4` fence, `$5` owner.
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

    /// Fenced: gives the lease back without an outcome (shutdown before the upload began). The row becomes
    /// `pending` again (due at once, also if it was awaiting a recording), except an `uploading` row, which stays
    /// in doubt.
    pub async fn release(&self, claim: &Claim) -> Result<bool, Error> {
        self.fenced_in(
            claim,
            Duration::ZERO,
            &format!(
                "{RELEASE} WHERE portal = $2 AND call_id = $3 AND fence = $4 AND lease_owner = $5"
            ),
        )
        .await
    }

    /// [`Store::release`] for every call of `portal` that run `owner` still holds (as `owner` or through its
    /// [`crate::claim_owner`]s): the end of a run gives back what it claimed and did not finish (calls claimed
    /// ahead of the workers when it stopped). Only for the holder of the portal's lease, which is the only one
    /// claiming this portal's calls. Returns how many were released.
    pub async fn release_held(&self, portal: &str, owner: &str) -> Result<u64, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(&format!(
                "{RELEASE} WHERE portal = $1 AND state <> 'uploaded' \
                 AND (lease_owner = $2 OR substr(lease_owner, 1, length($2) + 1) = $2 || '/')"
            ));
            let done = sqlx::query(&sql)
                .bind(portal)
                .bind(owner)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })
    }
}

//! Claims on sessions and what their holder writes, each fenced (nothing changes once the fence has moved on):
//! the `uploading` mark before each part, the talk IDs of the parts stored, renewals, the verdict, the release.
//!
//! A part's talk ID recorded means nothing is in doubt: the row goes back to `pending` (still leased) until the
//! next part's mark. So a row found `uploading` without a holder is in doubt about exactly one part: the one after
//! the last recorded talk ID.

use std::time::Duration;

use b24sense_core::LedgerState;
use sqlx::Row;

use super::{split_ids, ChatClaim, ChatVerdict};
use crate::sql::{parse_state, to_i64, to_u32};
use crate::{Error, Store};

/// The release: the row becomes `pending` again, except an `uploading` row, which stays in doubt.
const RELEASE: &str = "UPDATE chat_ledger SET \
     state = CASE WHEN state = 'uploading' THEN 'uploading' ELSE 'pending' END, \
     lease_owner = NULL, lease_until = NULL, updated_at = {now}";

/// The fence of every holder's write: `$2` portal, `$3` session, `$4` fence, `$5` owner.
const FENCE: &str = " WHERE portal = $2 AND session_id = $3 AND fence = $4 AND lease_owner = $5";

impl Store {
    /// Takes the lease on one session for `owner` until now + `lease`, if the session is not `uploaded` and its
    /// lease is free, expired or `owner`'s own. Bumps the fence. `None` when someone else holds it, or it is
    /// uploaded or unknown.
    ///
    /// `owner` names one claim (the engine makes a new one for each, [`crate::claim_owner`]), so a claim that took
    /// effect though its answer was lost (the connection cut after the commit) is taken back by its retry under the
    /// same `owner` instead of being waited for a whole lease as another worker's.
    pub async fn claim_chat(
        &self,
        portal: &str,
        session_id: u64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<ChatClaim>, Error> {
        let id = to_i64(session_id)?;
        let claim = on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE chat_ledger SET lease_owner = $4, lease_until = {lease_until}, fence = fence + 1, \
                 updated_at = {now} \
                 WHERE portal = $2 AND session_id = $3 AND state <> 'uploaded' \
                 AND (lease_until IS NULL OR lease_until <= {now} OR lease_owner = $4) \
                 RETURNING fence, state, attempts, talk_ids, parts",
            );
            let row = sqlx::query(&sql)
                .bind(lease.as_secs_f64())
                .bind(portal)
                .bind(id)
                .bind(owner)
                .fetch_optional(&mut *conn)
                .await?;
            let Some(row) = row else {
                return Ok::<_, Error>(None);
            };
            let previous = parse_state(row.try_get("state")?)?;
            Ok(Some(ChatClaim {
                portal: portal.to_owned(),
                session_id,
                owner: owner.to_owned(),
                fence: row.try_get("fence")?,
                in_doubt: previous == LedgerState::Uploading,
                attempts: to_u32(row.try_get("attempts")?)?,
                previous,
                talk_ids: split_ids(&row.try_get::<String, _>("talk_ids")?),
                parts: to_u32(row.try_get("parts")?)?,
            }))
        })?;
        self.lost_claim_answer()?;
        Ok(claim)
    }

    /// A fenced statement: `$1` seconds (for `{lease_until}` = now + `$1`), then the fence's binds, then `extra`.
    async fn chat_fenced(
        &self,
        claim: &ChatClaim,
        span: Duration,
        set: &str,
        extra: &[Extra<'_>],
    ) -> Result<bool, Error> {
        let id = to_i64(claim.session_id)?;
        on_db!(self, |conn, d| {
            let sql = d.sql(&format!("{set}{FENCE}"));
            let mut q = sqlx::query(&sql)
                .bind(span.as_secs_f64())
                .bind(&claim.portal)
                .bind(id)
                .bind(claim.fence)
                .bind(&claim.owner);
            for e in extra {
                q = match *e {
                    Extra::Text(t) => q.bind(t),
                    Extra::Int(n) => q.bind(n),
                    Extra::Flag(b) => q.bind(b),
                };
            }
            Ok(q.execute(&mut *conn).await?.rows_affected() == 1)
        })
    }

    /// Fenced: the row becomes `uploading` (the session goes out in `parts` talks) and the lease runs until now +
    /// `lease`. Written right before each part's `UploadText`: a talk can exist only for a part marked here. False
    /// when the claim is stale.
    pub async fn mark_chat_uploading(
        &self,
        claim: &ChatClaim,
        parts: u32,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.chat_fenced(
            claim,
            lease,
            "UPDATE chat_ledger SET state = 'uploading', parts = $6, lease_until = {lease_until}, \
             updated_at = {now}",
            &[Extra::Int(i64::from(parts))],
        )
        .await
    }

    /// Fenced: the talks stored so far (all parts up to the last one stored, in order). Nothing is in doubt any
    /// more: the row is `pending` (still leased) until the next part's mark.
    pub async fn record_chat_parts(
        &self,
        claim: &ChatClaim,
        talk_ids: &[String],
    ) -> Result<bool, Error> {
        if talk_ids.iter().any(|t| t.is_empty() || t.contains(',')) {
            return Err(Error::Data(format!(
                "talk IDs of session {} cannot be stored: {talk_ids:?}",
                claim.session_id
            )));
        }
        let joined = talk_ids.join(",");
        self.chat_fenced(
            claim,
            Duration::ZERO,
            "UPDATE chat_ledger SET state = 'pending', talk_ids = $6, updated_at = {now}",
            &[Extra::Text(Some(&joined))],
        )
        .await
    }

    /// Fenced: extends the lease to now + `lease`.
    pub async fn renew_chat(&self, claim: &ChatClaim, lease: Duration) -> Result<bool, Error> {
        self.chat_fenced(
            claim,
            lease,
            "UPDATE chat_ledger SET lease_until = {lease_until}, updated_at = {now}",
            &[],
        )
        .await
    }

    /// Fenced: records the verdict and clears the lease. A final verdict counts the attempt; `Waiting` does not.
    /// False (and nothing changed) when another worker took the lease since.
    pub async fn finish_chat(
        &self,
        claim: &ChatClaim,
        verdict: ChatVerdict<'_>,
    ) -> Result<bool, Error> {
        let (state, reason, detail, reuploaded, attempt) = match verdict {
            ChatVerdict::Uploaded {
                reuploaded_after_crash,
            } => ("uploaded", None, None, reuploaded_after_crash, 1),
            ChatVerdict::Skipped { reason } => ("skipped", Some(reason), None, false, 1),
            ChatVerdict::Failed { reason, detail } => {
                ("failed", Some(reason), Some(detail), false, 1)
            }
            ChatVerdict::Waiting { reason } => ("pending", Some(reason), None, false, 0),
        };
        // A `Waiting` row that was in doubt stays in doubt.
        let state_sql = if state == "pending" {
            "CASE WHEN state = 'uploading' THEN 'uploading' ELSE 'pending' END".to_string()
        } else {
            format!("'{state}'")
        };
        let set = format!(
            "UPDATE chat_ledger SET state = {state_sql}, reason = $6, detail = $7, \
             reuploaded_after_crash = $8, attempts = attempts + $9, lease_owner = NULL, lease_until = NULL, \
             updated_at = {{now}}"
        );
        self.chat_fenced(
            claim,
            Duration::ZERO,
            &set,
            &[
                Extra::Text(reason),
                Extra::Text(detail),
                Extra::Flag(reuploaded),
                Extra::Int(attempt),
            ],
        )
        .await
    }

    /// Fenced: gives the lease back without a verdict. An `uploading` row stays in doubt.
    pub async fn release_chat(&self, claim: &ChatClaim) -> Result<bool, Error> {
        self.chat_fenced(claim, Duration::ZERO, RELEASE, &[]).await
    }

    /// [`Store::release_chat`] for every session of `portal` that run `owner` still holds (the end of a run, or
    /// a dead run's leftovers): leases owned by `owner` itself or by one of its claims (`owner/n`,
    /// [`crate::claim_owner`]).
    pub async fn release_held_chats(&self, portal: &str, owner: &str) -> Result<u64, Error> {
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

/// A bind after the fence's.
enum Extra<'a> {
    Text(Option<&'a str>),
    Int(i64),
    Flag(bool),
}

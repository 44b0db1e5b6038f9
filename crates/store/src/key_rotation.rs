//! Key rotation: re-encrypts every stored secret under the current key of a [`SecretKey`] that also holds the
//! previous one (`b24sense keys rotate`).
//!
//! Each secret is re-encrypted in its own statement, which replaces the ciphertext only if it is still the one
//! that was read (compare-and-swap): a token refresh or a settings save that wrote the column meanwhile (under
//! the current key, as a server holding the same key ring writes) is never overwritten. A secret is thus always
//! either under the old key or under the new one, so a rotation stopped at any point leaves everything readable
//! with both keys, and running it again finishes it: secrets already under the current key are not touched.

use sqlx::Row;

use crate::secret_key::aad;
use crate::{Error, SecretKey, Store};

/// Every column holding a secret, as `(table, column)`; both tables are keyed by `member_id`, and a secret's
/// associated data is its `member_id` and column (see [`crate::secret_key`]).
const SECRET_COLUMNS: [(&str, &str); 4] = [
    ("portals", "application_token"),
    ("portals", "access_token"),
    ("portals", "refresh_token"),
    ("portal_settings", "api_key"),
];

/// Secrets read per statement while walking a column.
const PAGE: i64 = 200;

/// One stored secret as read, to be re-encrypted by [`Store::reseal_secret`].
#[derive(Clone)]
pub struct StoredSecret {
    pub member_id: String,
    /// `access_token`, `refresh_token`, `application_token` or `api_key`.
    pub column: &'static str,
    /// Index into [`SECRET_COLUMNS`].
    slot: usize,
    /// The ciphertext as read: the compare-and-swap writes only over this.
    sealed: String,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredSecret({}, {})", self.member_id, self.column)
    }
}

/// What [`Store::reseal_secret`] did with one secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Now under the current key.
    Done,
    /// The column changed (or was deleted) since it was read: left as written.
    ChangedMeanwhile,
    /// Neither key of the ring opens it: left as is.
    Unreadable,
}

/// The outcome of [`Store::rotate_secrets`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Re-encrypted under the current key by this run.
    pub resealed: u64,
    /// Changed by someone else while this run worked on them (left as written).
    pub changed_meanwhile: u64,
    /// `member_id/column` of the secrets neither key opens.
    pub unreadable: Vec<String>,
    /// After the run: secrets under the current key, and secrets still under another key (or none).
    pub census: SecretCensus,
}

/// How many stored secrets name the current key, and how many do not (yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecretCensus {
    pub current: u64,
    pub other: u64,
}

impl Store {
    /// Up to `limit` stored secrets, in a fixed order (column, then `member_id`), after `after`. `stale_only`:
    /// only those not under `key`'s current key.
    pub async fn stored_secrets(
        &self,
        key: &SecretKey,
        after: Option<&StoredSecret>,
        limit: usize,
        stale_only: bool,
    ) -> Result<Vec<StoredSecret>, Error> {
        let mut out = Vec::new();
        let start = after.map_or(0, |a| a.slot);
        for (slot, (table, column)) in SECRET_COLUMNS.iter().enumerate().skip(start) {
            let after_member = after
                .filter(|a| a.slot == slot)
                .map(|a| a.member_id.clone());
            let want = (limit - out.len()).min(PAGE as usize) as i64;
            if want == 0 {
                break;
            }
            // Table and column names come from the constant above, never from input. `$3` is the pattern of
            // the current key's ciphertexts, or (all secrets) one nothing matches.
            let sql = format!(
                "SELECT member_id, {column} AS sealed FROM {table} \
                 WHERE {column} IS NOT NULL AND member_id > $1 AND {column} NOT LIKE $3 \
                 ORDER BY member_id LIMIT $2"
            );
            let pattern = if stale_only {
                key.current_pattern()
            } else {
                String::new()
            };
            let after_member = after_member.unwrap_or_default();
            let page: Vec<(String, String)> = on_db!(self, |conn, _d| {
                let rows = sqlx::query(&sql)
                    .bind(&after_member)
                    .bind(want)
                    .bind(&pattern)
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("member_id")?, r.try_get("sealed")?)))
                    .collect::<Result<_, Error>>()
            })?;
            out.extend(page.into_iter().map(|(member_id, sealed)| StoredSecret {
                member_id,
                column: SECRET_COLUMNS[slot].1,
                slot,
                sealed,
            }));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Re-encrypts one secret under `key`'s current key, in its own statement, only if the column still
    /// holds what was read.
    pub async fn reseal_secret(&self, key: &SecretKey, s: &StoredSecret) -> Result<Reseal, Error> {
        let (table, column) = SECRET_COLUMNS[s.slot];
        let Ok(plain) = key.open(&s.sealed, &aad(&s.member_id, column)) else {
            return Ok(Reseal::Unreadable);
        };
        let resealed = key.seal(
            secrecy::ExposeSecret::expose_secret(&plain),
            &aad(&s.member_id, column),
        );
        // Neither `updated_at` nor `token_version` moves: a token refresh in flight must still win its own
        // compare-and-swap, or the refresh token it was just given would be lost.
        let sql =
            format!("UPDATE {table} SET {column} = $3 WHERE member_id = $1 AND {column} = $2");
        let swapped: bool = on_db!(self, |conn, _d| {
            let done = sqlx::query(&sql)
                .bind(&s.member_id)
                .bind(&s.sealed)
                .bind(resealed)
                .execute(&mut *conn)
                .await?;
            Ok::<_, Error>(done.rows_affected() == 1)
        })?;
        Ok(if swapped {
            Reseal::Done
        } else {
            Reseal::ChangedMeanwhile
        })
    }

    /// Re-encrypts every secret not yet under `key`'s current key (at most `limit` of them when given), one
    /// statement each. Safe to stop at any point and to run again; see the module doc.
    pub async fn rotate_secrets(
        &self,
        key: &SecretKey,
        limit: Option<u64>,
    ) -> Result<RotationReport, Error> {
        let mut report = RotationReport::default();
        let mut after: Option<StoredSecret> = None;
        'walk: loop {
            let page = self
                .stored_secrets(key, after.as_ref(), PAGE as usize, true)
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for s in &page {
                if limit.is_some_and(|l| report.resealed >= l) {
                    break 'walk;
                }
                match self.reseal_secret(key, s).await? {
                    Reseal::Done => report.resealed += 1,
                    Reseal::ChangedMeanwhile => report.changed_meanwhile += 1,
                    Reseal::Unreadable => report
                        .unreadable
                        .push(format!("{}/{}", s.member_id, s.column)),
                }
            }
            after = Some(last);
        }
        report.census = self.secret_census(key).await?;
        Ok(report)
    }

    /// `member_id/column` of every stored secret that `key` (current or previous) cannot decrypt.
    pub async fn unreadable_secrets(&self, key: &SecretKey) -> Result<Vec<String>, Error> {
        let mut unreadable = Vec::new();
        let mut after: Option<StoredSecret> = None;
        loop {
            let page = self
                .stored_secrets(key, after.as_ref(), PAGE as usize, false)
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for s in &page {
                if key.open(&s.sealed, &aad(&s.member_id, s.column)).is_err() {
                    unreadable.push(format!("{}/{}", s.member_id, s.column));
                }
            }
            after = Some(last);
        }
        Ok(unreadable)
    }

    /// How many stored secrets are under `key`'s current key and how many are not.
    pub async fn secret_census(&self, key: &SecretKey) -> Result<SecretCensus, Error> {
        let mut census = SecretCensus::default();
        for (table, column) in SECRET_COLUMNS {
            let sql = format!(
                "SELECT COUNT(CASE WHEN {column} LIKE $1 THEN 1 END) AS current, \
                 COUNT(CASE WHEN {column} NOT LIKE $1 THEN 1 END) AS other \
                 FROM {table} WHERE {column} IS NOT NULL"
            );
            let pattern = key.current_pattern();
            let (current, other): (i64, i64) = on_db!(self, |conn, _d| {
                let row = sqlx::query(&sql)
                    .bind(&pattern)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok::<_, Error>((row.try_get("current")?, row.try_get("other")?))
            })?;
            census.current += crate::sql::to_u64(current)?;
            census.other += crate::sql::to_u64(other)?;
        }
        Ok(census)
    }
}

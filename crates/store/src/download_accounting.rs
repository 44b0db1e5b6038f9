//! Download accounting per portal: whether a portal counts recording downloads from its own host against its
//! request bucket. Bitrix24 does not document it, so a run finds out (the portal's first rate-limit refusal while
//! downloads ran uncounted) and the ledger remembers it, so that later runs start counting instead of being
//! refused again.

use crate::{Error, Store};

impl Store {
    /// Whether `portal` is known to count downloads from its own host (false until a run learned that it does).
    pub async fn portal_counts_downloads(&self, portal: &str) -> Result<bool, Error> {
        on_db!(self, |conn, _d| {
            let counted: Option<bool> = sqlx::query_scalar(
                "SELECT downloads_counted FROM portal_download_accounting WHERE portal = $1",
            )
            .bind(portal)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(counted.unwrap_or(false))
        })
    }

    /// Remembers whether `portal` counts downloads from its own host.
    pub async fn remember_portal_counts_downloads(
        &self,
        portal: &str,
        counted: bool,
    ) -> Result<(), Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO portal_download_accounting (portal, downloads_counted) VALUES ($1, $2) \
                 ON CONFLICT (portal) DO UPDATE SET downloads_counted = excluded.downloads_counted, \
                 updated_at = {now}",
            );
            sqlx::query(&sql)
                .bind(portal)
                .bind(counted)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

//! The listing cursors: per portal and filter key, the highest call `ID` listed so far (a keyset high-water
//! mark), so that the next listing starts after it.

use crate::sql::{to_i64, to_u64};
use crate::{Error, Store};

impl Store {
    /// The keyset high-water mark of (portal, filter key).
    pub async fn cursor(&self, portal: &str, key: &str) -> Result<Option<u64>, Error> {
        on_db!(self, |conn, _d| {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT last_id FROM cursors WHERE portal = $1 AND key = $2")
                    .bind(portal)
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await?;
            last.map(to_u64).transpose()
        })
    }

    /// Moves the cursor forward to `last_id`; a lower value leaves it where it is.
    pub async fn set_cursor(&self, portal: &str, key: &str, last_id: u64) -> Result<(), Error> {
        let last = to_i64(last_id)?;
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO cursors (portal, key, last_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (portal, key) DO UPDATE SET last_id = excluded.last_id, updated_at = {now} \
                 WHERE excluded.last_id > cursors.last_id",
            );
            sqlx::query(&sql)
                .bind(portal)
                .bind(key)
                .bind(last)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

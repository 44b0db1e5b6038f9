//! Portal leases: with several replicas on one PostgreSQL, one replica at a time lists and exports a portal
//! (the portal's REST limits are per portal, not per replica). The lease carries a fence like a call's.

use std::time::Duration;

use crate::{Error, Store};

/// The lease that makes one replica the only caller of a portal (see [`Store::claim_portal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalLease {
    pub portal: String,
    pub owner: String,
    pub fence: i64,
}

impl Store {
    /// Takes the portal's lease for `owner` until now + `lease` when it is free, expired, or already `owner`'s.
    pub async fn claim_portal(
        &self,
        portal: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<PortalLease>, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO portal_leases (portal, owner, fence, lease_until, updated_at) \
                 VALUES ($2, $3, 1, {lease_until}, {now}) \
                 ON CONFLICT (portal) DO UPDATE SET owner = excluded.owner, fence = portal_leases.fence + 1, \
                 lease_until = excluded.lease_until, updated_at = excluded.updated_at \
                 WHERE portal_leases.lease_until <= {now} OR portal_leases.owner = excluded.owner \
                 RETURNING fence",
            );
            let fence: Option<i64> = sqlx::query_scalar(&sql)
                .bind(lease.as_secs_f64())
                .bind(portal)
                .bind(owner)
                .fetch_optional(&mut *conn)
                .await?;
            Ok(fence.map(|fence| PortalLease {
                portal: portal.to_owned(),
                owner: owner.to_owned(),
                fence,
            }))
        })
    }

    /// Fenced: extends the portal lease. False when another replica has taken it over.
    pub async fn renew_portal(
        &self,
        lease: &PortalLease,
        duration: Duration,
    ) -> Result<bool, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE portal_leases SET lease_until = {lease_until}, updated_at = {now} \
                 WHERE portal = $2 AND owner = $3 AND fence = $4",
            );
            let done = sqlx::query(&sql)
                .bind(duration.as_secs_f64())
                .bind(&lease.portal)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Fenced: gives the portal lease up (it expires now) so another replica can take over at once.
    pub async fn release_portal(&self, lease: &PortalLease) -> Result<bool, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE portal_leases SET lease_until = {now}, updated_at = {now} \
                 WHERE portal = $1 AND owner = $2 AND fence = $3",
            );
            let done = sqlx::query(&sql)
                .bind(&lease.portal)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

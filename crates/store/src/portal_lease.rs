//! Portal leases: with several replicas on one PostgreSQL, one replica at a time lists and exports a portal
//! (the portal's REST limits are per portal, not per replica). The lease carries a fence like a call's.
//!
//! The lease also records its *holder*: an opaque text the engine writes (which process on which machine) and
//! reads back, so that a run that finds the holder's process dead can take the lease over at once
//! ([`Store::take_over_portal`], fenced like everything else) instead of waiting for it to expire.

use std::time::Duration;

use crate::{Error, Store};

/// The lease that makes one replica the only caller of a portal (see [`Store::claim_portal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalLease {
    pub portal: String,
    pub owner: String,
    pub fence: i64,
}

impl PortalLease {
    /// The lease `owner` holds when a statement returned its new `fence` (`None`: not granted).
    fn granted(portal: &str, owner: &str, fence: Option<i64>) -> Option<PortalLease> {
        fence.map(|fence| PortalLease {
            portal: portal.to_owned(),
            owner: owner.to_owned(),
            fence,
        })
    }
}

/// Who holds a portal's lease right now (see [`Store::portal_holder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalHolder {
    pub owner: String,
    pub fence: i64,
    /// What the holder said about itself when it claimed the lease; `None` when it said nothing.
    pub holder: Option<String>,
}

impl Store {
    /// Takes the portal's lease for `owner` until now + `lease` when it is free, expired, or already `owner`'s;
    /// `holder` (who `owner` is, see [`PortalHolder::holder`]) is recorded with it.
    pub async fn claim_portal(
        &self,
        portal: &str,
        owner: &str,
        holder: Option<&str>,
        lease: Duration,
    ) -> Result<Option<PortalLease>, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO portal_leases (portal, owner, holder, fence, lease_until, updated_at) \
                 VALUES ($2, $3, $4, 1, {lease_until}, {now}) \
                 ON CONFLICT (portal) DO UPDATE SET owner = excluded.owner, holder = excluded.holder, \
                 fence = portal_leases.fence + 1, lease_until = excluded.lease_until, \
                 updated_at = excluded.updated_at \
                 WHERE portal_leases.lease_until <= {now} OR portal_leases.owner = excluded.owner \
                 RETURNING fence",
            );
            let fence: Option<i64> = sqlx::query_scalar(&sql)
                .bind(lease.as_secs_f64())
                .bind(portal)
                .bind(owner)
                .bind(holder)
                .fetch_optional(&mut *conn)
                .await?;
            Ok(PortalLease::granted(portal, owner, fence))
        })
    }

    /// Who holds the portal's lease (expired or not); `None` when nobody ever claimed it.
    pub async fn portal_holder(&self, portal: &str) -> Result<Option<PortalHolder>, Error> {
        on_db!(self, |conn, _d| {
            let row: Option<(String, i64, Option<String>)> =
                sqlx::query_as("SELECT owner, fence, holder FROM portal_leases WHERE portal = $1")
                    .bind(portal)
                    .fetch_optional(&mut *conn)
                    .await?;
            Ok(row.map(|(owner, fence, holder)| PortalHolder {
                owner,
                fence,
                holder,
            }))
        })
    }

    /// Takes the portal's lease from `dead` (a holder known to be gone) for `owner` until now + `lease`, whether
    /// or not `dead`'s lease has expired — but only if `dead` still holds it with the same fence (compare and swap:
    /// of several runs that found the same dead holder, one wins). `None`: the lease changed hands meanwhile.
    pub async fn take_over_portal(
        &self,
        portal: &str,
        dead: &PortalHolder,
        owner: &str,
        holder: Option<&str>,
        lease: Duration,
    ) -> Result<Option<PortalLease>, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE portal_leases SET owner = $4, holder = $5, fence = fence + 1, \
                 lease_until = {lease_until}, updated_at = {now} \
                 WHERE portal = $2 AND owner = $3 AND fence = $6 \
                 RETURNING fence",
            );
            let fence: Option<i64> = sqlx::query_scalar(&sql)
                .bind(lease.as_secs_f64())
                .bind(portal)
                .bind(&dead.owner)
                .bind(owner)
                .bind(holder)
                .bind(dead.fence)
                .fetch_optional(&mut *conn)
                .await?;
            Ok(PortalLease::granted(portal, owner, fence))
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

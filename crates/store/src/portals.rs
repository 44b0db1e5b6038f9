//! Installed Bitrix24 applications: one row per portal (`member_id`) with its OAuth tokens, which are stored
//! encrypted ([`crate::SecretKey`]). The portal's export settings are in [`crate::portal_settings`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, Row};

use crate::secret_key::aad;
use crate::{Error, SecretKey, Store};

/// What the install handler learned about a portal.
#[derive(Debug, Clone)]
pub struct Installation {
    pub member_id: String,
    pub domain: String,
    pub client_endpoint: String,
    pub server_endpoint: String,
    pub application_token: SecretString,
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub lang: Option<String>,
}

/// Whether the application is installed on the portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalStatus {
    Installed,
    Uninstalled,
}

impl PortalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PortalStatus::Installed => "installed",
            PortalStatus::Uninstalled => "uninstalled",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<PortalStatus, Error> {
        match s {
            "installed" => Ok(PortalStatus::Installed),
            "uninstalled" => Ok(PortalStatus::Uninstalled),
            other => Err(Error::Data(format!("unknown portal status {other:?}"))),
        }
    }
}

/// A portal as stored (tokens are read separately with [`Store::portal_tokens`]).
#[derive(Debug, Clone)]
pub struct Portal {
    pub member_id: String,
    pub domain: String,
    pub client_endpoint: String,
    pub server_endpoint: String,
    /// `None` after uninstall.
    pub application_token: Option<SecretString>,
    pub status: PortalStatus,
    pub lang: Option<String>,
    pub installed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the OAuth pair was last rotated (install, refresh, or a page open that brought a fresh pair).
    pub tokens_rotated_at: Option<DateTime<Utc>>,
    /// The OAuth server's error code when it refused the last refresh of the stored pair (`invalid_grant`, …);
    /// cleared by the next rotation. The administrator must reopen or reinstall the application.
    pub refresh_refused: Option<String>,
    /// The installation's generation: moves on with every install, reinstall and uninstall (never with a token
    /// refresh), so whatever was issued for one installation (a page session) can tell it is gone.
    pub generation: i64,
}

/// An installed portal whose tokens are due for a keep-alive refresh (see [`Store::portals_due_for_refresh`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRefresh {
    pub member_id: String,
    /// The token version that was found old: refresh only if it is still current.
    pub token_version: i64,
}

/// The portal's current OAuth pair; `version` is what [`Store::rotate_tokens`] compares against.
#[derive(Debug, Clone)]
pub struct PortalTokens {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub version: i64,
}

const PORTAL_COLUMNS: &str =
    "member_id, domain, client_endpoint, server_endpoint, application_token, \
     status, lang, installed_at, updated_at, tokens_rotated_at, refresh_refused, generation";
impl Store {
    /// Records an installation (or a re-installation: the row is replaced, its token version moves on, so
    /// a refresh that started before cannot overwrite the new tokens). Settings are kept. An empty
    /// `application_token` means "not known yet" (it comes with `ONAPPINSTALL`): the stored one is kept, which
    /// after an uninstall is none, so events stay refused until it arrives.
    pub async fn install_portal(&self, key: &SecretKey, inst: &Installation) -> Result<(), Error> {
        let m = &inst.member_id;
        let app_token = inst.application_token.expose_secret();
        let app =
            (!app_token.is_empty()).then(|| key.seal(app_token, &aad(m, "application_token")));
        let access = key.seal(inst.access_token.expose_secret(), &aad(m, "access_token"));
        let refresh = key.seal(inst.refresh_token.expose_secret(), &aad(m, "refresh_token"));
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO portals (member_id, domain, client_endpoint, server_endpoint, application_token, \
                 access_token, refresh_token, expires_at, token_version, status, lang, installed_at, updated_at, \
                 tokens_rotated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, 'installed', $9, {now}, {now}, {now}) \
                 ON CONFLICT (member_id) DO UPDATE SET domain = excluded.domain, \
                 client_endpoint = excluded.client_endpoint, server_endpoint = excluded.server_endpoint, \
                 application_token = COALESCE(excluded.application_token, portals.application_token), \
                 access_token = excluded.access_token, \
                 refresh_token = excluded.refresh_token, expires_at = excluded.expires_at, \
                 token_version = portals.token_version + 1, status = 'installed', \
                 lang = COALESCE(excluded.lang, portals.lang), updated_at = {now}, \
                 tokens_rotated_at = {now}, refresh_refused = NULL, generation = portals.generation + 1",
            );
            sqlx::query(&sql)
                .bind(m)
                .bind(&inst.domain)
                .bind(&inst.client_endpoint)
                .bind(&inst.server_endpoint)
                .bind(app)
                .bind(access)
                .bind(refresh)
                .bind(inst.expires_at)
                .bind(&inst.lang)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    /// One portal by `member_id` (installed or not).
    pub async fn portal(&self, key: &SecretKey, member_id: &str) -> Result<Option<Portal>, Error> {
        on_db!(self, |conn, _d| {
            let sql = format!("SELECT {PORTAL_COLUMNS} FROM portals WHERE member_id = $1");
            let row = sqlx::query(&sql)
                .bind(member_id)
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(row) => Ok(Some(portal_from_row!(key, row))),
                None => Ok(None),
            }
        })
    }

    /// Every portal where the application is installed.
    pub async fn installed_portals(&self, key: &SecretKey) -> Result<Vec<Portal>, Error> {
        on_db!(self, |conn, _d| {
            let sql = format!(
                "SELECT {PORTAL_COLUMNS} FROM portals WHERE status = 'installed' ORDER BY member_id"
            );
            let rows = sqlx::query(&sql).fetch_all(&mut *conn).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(portal_from_row!(key, row));
            }
            Ok(out)
        })
    }

    /// The portal's current tokens; `None` when it is unknown or uninstalled.
    pub async fn portal_tokens(
        &self,
        key: &SecretKey,
        member_id: &str,
    ) -> Result<Option<PortalTokens>, Error> {
        on_db!(self, |conn, _d| {
            let row = sqlx::query(
                "SELECT access_token, refresh_token, expires_at, token_version FROM portals \
                 WHERE member_id = $1 AND status = 'installed'",
            )
            .bind(member_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let access: Option<String> = row.try_get("access_token")?;
            let refresh: Option<String> = row.try_get("refresh_token")?;
            let expires_at: Option<DateTime<Utc>> = row.try_get("expires_at")?;
            let (Some(access), Some(refresh), Some(expires_at)) = (access, refresh, expires_at)
            else {
                return Ok(None);
            };
            Ok(Some(PortalTokens {
                access_token: key.open(&access, &aad(member_id, "access_token"))?,
                refresh_token: key.open(&refresh, &aad(member_id, "refresh_token"))?,
                expires_at,
                version: row.try_get("token_version")?,
            }))
        })
    }

    /// Replaces the token pair only if it is still at `expected_version` (compare-and-swap): a refresh
    /// that lost a race, or that ran across an uninstall or re-install, changes nothing. Returns whether
    /// the new pair was stored.
    pub async fn rotate_tokens(
        &self,
        key: &SecretKey,
        member_id: &str,
        expected_version: i64,
        access_token: &SecretString,
        refresh_token: &SecretString,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let access = key.seal(
            access_token.expose_secret(),
            &aad(member_id, "access_token"),
        );
        let refresh = key.seal(
            refresh_token.expose_secret(),
            &aad(member_id, "refresh_token"),
        );
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE portals SET access_token = $3, refresh_token = $4, expires_at = $5, \
                 token_version = token_version + 1, updated_at = {now}, tokens_rotated_at = {now}, \
                 refresh_refused = NULL \
                 WHERE member_id = $1 AND token_version = $2 AND status = 'installed'",
            );
            let done = sqlx::query(&sql)
                .bind(member_id)
                .bind(expected_version)
                .bind(access)
                .bind(refresh)
                .bind(expires_at)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Installed portals whose token pair was last rotated at least `age` ago (by the database's clock, so
    /// replicas agree), oldest first: the keep-alive refresh keeps their refresh tokens from aging out.
    pub async fn portals_due_for_refresh(&self, age: Duration) -> Result<Vec<DueRefresh>, Error> {
        on_db!(self, |conn, d| {
            // `{lease_until}` is now + $1 seconds; a negative $1 makes it "now - age".
            let sql = d.sql(
                "SELECT member_id, token_version FROM portals \
                 WHERE status = 'installed' AND refresh_token IS NOT NULL \
                 AND COALESCE(tokens_rotated_at, updated_at) <= {lease_until} \
                 ORDER BY COALESCE(tokens_rotated_at, updated_at), member_id",
            );
            let rows = sqlx::query(&sql)
                .bind(-age.as_secs_f64())
                .fetch_all(&mut *conn)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(DueRefresh {
                    member_id: row.try_get("member_id")?,
                    token_version: row.try_get("token_version")?,
                });
            }
            Ok(out)
        })
    }

    /// Records that the OAuth server refused to refresh the pair at `token_version` (`code`: its error code,
    /// never a secret). Only while that pair is current: a rotation that happened meanwhile (another replica,
    /// a page open) means the portal is fine. Returns whether it was recorded.
    pub async fn set_refresh_refused(
        &self,
        member_id: &str,
        token_version: i64,
        code: &str,
    ) -> Result<bool, Error> {
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "UPDATE portals SET refresh_refused = $3, updated_at = {now} \
                 WHERE member_id = $1 AND token_version = $2 AND status = 'installed'",
            );
            let done = sqlx::query(&sql)
                .bind(member_id)
                .bind(token_version)
                .bind(code)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Marks the portal uninstalled and deletes its secrets (tokens, application token, API key). The
    /// non-secret settings and the ledger stay, so a re-install continues where it stopped.
    pub async fn uninstall_portal(&self, member_id: &str) -> Result<bool, Error> {
        on_db!(self, |conn, d| {
            let mut tx = conn.begin().await?;
            let sql = d.sql(
                "UPDATE portals SET status = 'uninstalled', application_token = NULL, access_token = NULL, \
                 refresh_token = NULL, expires_at = NULL, refresh_refused = NULL, token_version = token_version + 1, \
                 generation = generation + 1, updated_at = {now} WHERE member_id = $1",
            );
            let done = sqlx::query(&sql).bind(member_id).execute(&mut *tx).await?;
            let sql = d.sql(
                "UPDATE portal_settings SET api_key = NULL, updated_at = {now} WHERE member_id = $1",
            );
            sqlx::query(&sql).bind(member_id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

//! Installed Bitrix24 applications: one row per portal (`member_id`), its OAuth tokens, and its settings.
//!
//! Secrets (OAuth tokens, the application token, the SpeechSense API key) are stored encrypted with
//! AES-256-GCM under a [`SecretKey`] that never touches the database; each ciphertext is bound to its portal
//! and column (associated data), so a value copied into another row or column does not decrypt.

use std::fmt;
use std::time::Duration;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use sqlx::{Connection, Row};

use crate::{Db, Dialect, Error, Store};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The 32-byte key that encrypts stored secrets. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey {
    cipher: Aes256Gcm,
    /// Kept only to derive independent subkeys (see [`SecretKey::derive`]).
    raw: [u8; 32],
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// The variable holding the key (64 hex digits or base64 of 32 bytes).
    pub const ENV: &'static str = "B24SENSE_SECRET_KEY";
    /// The variable naming a file that holds the key (same formats), for secret mounts.
    pub const FILE_ENV: &'static str = "B24SENSE_SECRET_KEY_FILE";

    /// Reads the key from `B24SENSE_SECRET_KEY`, or from the file named by `B24SENSE_SECRET_KEY_FILE`.
    pub fn from_env() -> Result<SecretKey, Error> {
        if let Ok(v) = std::env::var(Self::ENV) {
            return Self::parse(&v)
                .map_err(|e| Error::SecretKey(format!("{}: {}", Self::ENV, inner_msg(e))));
        }
        if let Ok(path) = std::env::var(Self::FILE_ENV) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::SecretKey(format!("{} ({path}): cannot read: {e}", Self::FILE_ENV))
            })?;
            return Self::parse(&text).map_err(|e| {
                Error::SecretKey(format!("{} ({path}): {}", Self::FILE_ENV, inner_msg(e)))
            });
        }
        Err(Error::SecretKey(format!(
            "{} is not set: set it to 32 random bytes as 64 hex digits (e.g. `openssl rand -hex 32`), \
             or set {} to a file holding them",
            Self::ENV,
            Self::FILE_ENV
        )))
    }

    /// Parses 64 hex digits or base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<SecretKey, Error> {
        let s = s.trim();
        let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| Error::SecretKey("not hex".into()))?
        } else {
            B64.decode(s).map_err(|_| {
                Error::SecretKey("expected 64 hex digits or base64 of 32 bytes".into())
            })?
        };
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SecretKey, Error> {
        if bytes.len() != 32 {
            return Err(Error::SecretKey(format!(
                "the key must be 32 bytes, got {}",
                bytes.len()
            )));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(bytes);
        Ok(SecretKey {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
            raw,
        })
    }

    /// A random key (tests, first-run helpers).
    pub fn generate() -> SecretKey {
        let key = Aes256Gcm::generate_key(OsRng);
        // A freshly generated key is always 32 bytes.
        Self::from_bytes(key.as_slice()).unwrap_or_else(|_| unreachable!())
    }

    /// A 32-byte subkey for another purpose (e.g. signing web sessions), independent of the encryption key:
    /// SHA-256 over a fixed prefix, the key and `label`.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"b24sense/derive/v1\0");
        h.update(self.raw);
        h.update([0u8]);
        h.update(label.as_bytes());
        h.finalize().into()
    }

    /// `base64(nonce || ciphertext)`, bound to `aad`.
    pub fn seal(&self, plain: &str, aad: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a valid key and a 12-byte nonce cannot fail for inputs of this size.
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    /// Decrypts what [`SecretKey::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<SecretString, Error> {
        let wrong = || {
            Error::SecretKey(format!(
                "a stored secret ({aad}) cannot be decrypted: {} differs from the key it was saved with",
                Self::ENV
            ))
        };
        let raw = B64.decode(sealed).map_err(|_| wrong())?;
        if raw.len() < 12 {
            return Err(wrong());
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| wrong())?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| wrong())
    }
}

fn inner_msg(e: Error) -> String {
    match e {
        Error::SecretKey(m) => m,
        other => other.to_string(),
    }
}

fn aad(member_id: &str, column: &str) -> String {
    format!("{member_id}/{column}")
}

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

    fn parse(s: &str) -> Result<PortalStatus, Error> {
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

/// A portal's export settings, except the API key (kept encrypted in its own column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortalSettings {
    pub connection_id: String,
    /// Recognition language, e.g. `ru-RU`.
    pub language: String,
    /// `YYYY-MM-DD` or an RFC 3339 time; `None` = all calls.
    pub since: Option<String>,
    /// Bitrix24 user IDs; empty = everyone.
    pub users: Vec<u64>,
    /// Seconds.
    pub min_duration: u64,
    /// `CALL_TYPE` names (`outgoing`, `incoming`, …); empty = all.
    pub direction: Vec<String>,
    /// `upload`, `skip` or `route:<connection id>`.
    pub mono_policy: String,
    pub organization_id: Option<String>,
    pub space_id: Option<String>,
    pub project_id: Option<String>,
    /// Continuous sync of new calls.
    pub sync_enabled: bool,
}

impl Default for PortalSettings {
    fn default() -> Self {
        PortalSettings {
            connection_id: String::new(),
            language: "ru-RU".into(),
            since: None,
            users: Vec::new(),
            min_duration: 0,
            direction: Vec::new(),
            mono_policy: "upload".into(),
            organization_id: None,
            space_id: None,
            project_id: None,
            sync_enabled: false,
        }
    }
}

/// Settings as stored, with the decrypted API key when one was saved.
#[derive(Debug, Clone)]
pub struct StoredSettings {
    pub settings: PortalSettings,
    pub api_key: Option<SecretString>,
    pub updated_at: DateTime<Utc>,
}

const PORTAL_COLUMNS: &str =
    "member_id, domain, client_endpoint, server_endpoint, application_token, \
     status, lang, installed_at, updated_at, tokens_rotated_at, refresh_refused";

macro_rules! portal_from_row {
    ($key:expr, $row:expr) => {{
        let row = &$row;
        let member_id: String = row.try_get("member_id")?;
        let app_token: Option<String> = row.try_get("application_token")?;
        let application_token = match app_token {
            Some(s) => Some($key.open(&s, &aad(&member_id, "application_token"))?),
            None => None,
        };
        Portal {
            domain: row.try_get("domain")?,
            client_endpoint: row.try_get("client_endpoint")?,
            server_endpoint: row.try_get("server_endpoint")?,
            application_token,
            status: PortalStatus::parse(row.try_get("status")?)?,
            lang: row.try_get("lang")?,
            installed_at: row.try_get("installed_at")?,
            updated_at: row.try_get("updated_at")?,
            tokens_rotated_at: row.try_get("tokens_rotated_at")?,
            refresh_refused: row.try_get("refresh_refused")?,
            member_id,
        }
    }};
}

impl Store {
    /// Records an installation (or a re-installation: the row is replaced, its token version moves on, so
    /// a refresh that started before cannot overwrite the new tokens). Settings are kept.
    pub async fn install_portal(&self, key: &SecretKey, inst: &Installation) -> Result<(), Error> {
        let m = &inst.member_id;
        let app = key.seal(
            inst.application_token.expose_secret(),
            &aad(m, "application_token"),
        );
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
                 application_token = excluded.application_token, access_token = excluded.access_token, \
                 refresh_token = excluded.refresh_token, expires_at = excluded.expires_at, \
                 token_version = portals.token_version + 1, status = 'installed', \
                 lang = COALESCE(excluded.lang, portals.lang), updated_at = {now}, \
                 tokens_rotated_at = {now}, refresh_refused = NULL",
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
                 updated_at = {now} WHERE member_id = $1",
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

    /// Saves the portal's settings. `api_key`: `Some` replaces the stored key, `None` keeps it (the form
    /// never receives the key back, so an empty field means "unchanged").
    pub async fn save_settings(
        &self,
        key: &SecretKey,
        member_id: &str,
        settings: &PortalSettings,
        api_key: Option<&SecretString>,
    ) -> Result<(), Error> {
        let sealed = api_key.map(|k| key.seal(k.expose_secret(), &aad(member_id, "api_key")));
        on_db!(self, |conn, d| {
            let sql = d.sql(
                "INSERT INTO portal_settings (member_id, settings, api_key, updated_at) \
                 VALUES ($1, $2, $3, {now}) \
                 ON CONFLICT (member_id) DO UPDATE SET settings = excluded.settings, \
                 api_key = COALESCE(excluded.api_key, portal_settings.api_key), updated_at = {now}",
            );
            sqlx::query(&sql)
                .bind(member_id)
                .bind(Json(settings))
                .bind(sealed)
                .execute(&mut *conn)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                        Error::Data(format!("portal {member_id} is not installed"))
                    }
                    other => Error::Database(other),
                })?;
            Ok(())
        })
    }

    /// The portal's settings, `None` when none were saved yet.
    pub async fn settings(
        &self,
        key: &SecretKey,
        member_id: &str,
    ) -> Result<Option<StoredSettings>, Error> {
        on_db!(self, |conn, _d| {
            let row = sqlx::query(
                "SELECT settings, api_key, updated_at FROM portal_settings WHERE member_id = $1",
            )
            .bind(member_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let settings: Json<PortalSettings> = row.try_get("settings").map_err(|e| match e {
                sqlx::Error::ColumnDecode { .. } => Error::Data(format!(
                    "stored settings of {member_id} cannot be read: {e}"
                )),
                other => Error::Database(other),
            })?;
            let api_key: Option<String> = row.try_get("api_key")?;
            let api_key = match api_key {
                Some(s) => Some(key.open(&s, &aad(member_id, "api_key"))?),
                None => None,
            };
            Ok(Some(StoredSettings {
                settings: settings.0,
                api_key,
                updated_at: row.try_get("updated_at")?,
            }))
        })
    }
}

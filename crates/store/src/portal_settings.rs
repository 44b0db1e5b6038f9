//! A portal's export settings (JSON), with the SpeechSense API key kept encrypted in its own column.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::Row;

use crate::secret_key::aad;
use crate::{Error, SecretKey, Store};

/// A portal's export settings, except the API key (kept encrypted in its own column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortalSettings {
    pub connection_id: String,
    /// The SpeechSense **chat** connection Open Lines sessions go to; `None` = chats are not exported. Settings
    /// saved before chats existed read as `None` (the settings are one JSON value: no schema change).
    pub chat_connection_id: Option<String>,
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
    /// When continuous sync was last turned on (RFC 3339); `None` while it is off.
    pub sync_since: Option<String>,
}

impl Default for PortalSettings {
    fn default() -> Self {
        PortalSettings {
            connection_id: String::new(),
            chat_connection_id: None,
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
            sync_since: None,
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

impl Store {
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

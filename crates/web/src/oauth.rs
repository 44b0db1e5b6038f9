//! OAuth access tokens of an installed portal, refreshed against the installation's own `server_endpoint`.
//! One refresh at a time per portal (refresh tokens are single-use: two concurrent refreshes would break the
//! chain), and the new pair is stored with a compare-and-swap before it is used. A refresh the OAuth server
//! refuses is recorded on the portal, so the settings page can ask the administrator to reopen or reinstall.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24sense_bitrix24::{AccessToken, BoxFuture, Error as B24Error, TokenSource};
use b24sense_store::{SecretKey, Store};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::metrics::Metrics;
use crate::Error;

/// One async lock per portal, shared by every token source of that portal in this process.
#[derive(Default)]
pub struct RefreshLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RefreshLocks {
    fn get(&self, member_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(member_id.to_string())
            .or_default()
            .clone()
    }
}

/// The application's OAuth client credentials.
#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: SecretString,
    pub http: reqwest::Client,
}

/// A [`TokenSource`] reading an installed portal's tokens from the store.
pub struct StoreTokenSource {
    store: Store,
    key: SecretKey,
    member_id: String,
    client_endpoint: Url,
    server_endpoint: Url,
    client: OAuthClient,
    locks: Arc<RefreshLocks>,
    metrics: Arc<Metrics>,
}

/// The OAuth server's answer to a refresh grant: a new pair and the portal it belongs to, or an error.
#[derive(Deserialize, Default)]
pub(crate) struct TokenAnswer {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<i64>,
    /// The portal's REST endpoint (`https://PORTAL/rest/`) and its identity: what an install is proven by.
    pub client_endpoint: Option<String>,
    pub server_endpoint: Option<String>,
    pub member_id: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// `GET {token_url}?grant_type=refresh_token&…`: exchanges `refresh` for a new pair (and the portal's identity).
/// Errors never carry the URL (its query holds the client secret and the refresh token).
pub(crate) async fn refresh_grant(
    client: &OAuthClient,
    token_url: Url,
    refresh: &SecretString,
) -> Result<TokenAnswer, B24Error> {
    let resp = client
        .http
        .get(token_url)
        .query(&[
            ("grant_type", "refresh_token"),
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.expose_secret()),
            ("refresh_token", refresh.expose_secret()),
        ])
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            B24Error::Token(format!("the OAuth server cannot be reached: {}", redact(e)))
        })?;
    let status = resp.status().as_u16();
    resp.json().await.map_err(|_| {
        B24Error::Token(format!(
            "the OAuth server answered HTTP {status} without JSON"
        ))
    })
}

impl StoreTokenSource {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        key: SecretKey,
        member_id: String,
        client_endpoint: Url,
        server_endpoint: Url,
        client: OAuthClient,
        locks: Arc<RefreshLocks>,
        metrics: Arc<Metrics>,
    ) -> StoreTokenSource {
        StoreTokenSource {
            store,
            key,
            member_id,
            client_endpoint,
            server_endpoint,
            client,
            locks,
            metrics,
        }
    }

    /// `server_endpoint`'s origin + `/oauth/token/` (where Bitrix24 refreshes tokens).
    fn token_url(&self) -> Result<Url, B24Error> {
        self.server_endpoint
            .join("/oauth/token/")
            .map_err(|_| B24Error::Token("server_endpoint is not a usable URL".into()))
    }

    async fn current(&self) -> Result<(AccessToken, i64, SecretString), B24Error> {
        let t = self
            .store
            .portal_tokens(&self.key, &self.member_id)
            .await
            .map_err(|e| B24Error::Token(format!("cannot read the portal's tokens: {e}")))?
            .ok_or_else(|| {
                B24Error::Token("the application is not installed on this portal".into())
            })?;
        Ok((
            AccessToken {
                token: t.access_token,
                client_endpoint: self.client_endpoint.clone(),
            },
            t.version,
            t.refresh_token,
        ))
    }

    /// Refreshes under the portal's lock if `is_stale(current pair, its version)` still holds once the lock is
    /// held; otherwise someone refreshed while we waited and their pair is the answer.
    async fn refresh_locked(
        &self,
        is_stale: impl FnOnce(&AccessToken, i64) -> bool,
    ) -> Result<Refresh, Error> {
        let lock = self.locks.get(&self.member_id);
        let _guard = lock.lock().await;
        let (current, version, refresh) = self.current().await?;
        if !is_stale(&current, version) {
            return Ok(Refresh::Theirs(current));
        }
        let url = self.token_url()?;
        let body = refresh_grant(&self.client, url, &refresh).await?;
        if let Some(code) = body.error {
            return self.refused(version, &code, body.error_description).await;
        }
        let (Some(access), Some(new_refresh)) = (body.access_token, body.refresh_token) else {
            return Err(B24Error::Token("the OAuth server answered without tokens".into()).into());
        };
        let access = SecretString::from(access);
        let new_refresh = SecretString::from(new_refresh);
        let expires_at = Utc::now() + chrono::Duration::seconds(body.expires_in.unwrap_or(3600));
        let stored = self
            .store
            .rotate_tokens(
                &self.key,
                &self.member_id,
                version,
                &access,
                &new_refresh,
                expires_at,
            )
            .await
            .map_err(|e| B24Error::Token(format!("cannot store the refreshed tokens: {e}")))?;
        self.metrics.token_refreshes.inc();
        if !stored {
            // Uninstalled or re-installed meanwhile: the stored pair is the truth.
            return Ok(Refresh::Theirs(self.current().await?.0));
        }
        tracing::info!(member_id = %self.member_id, "OAuth tokens refreshed");
        Ok(Refresh::Done(AccessToken {
            token: access,
            client_endpoint: self.client_endpoint.clone(),
        }))
    }

    /// The OAuth server refused to refresh the pair at `version`: recorded for the administrator (only while
    /// that pair is current), counted, logged without secrets.
    async fn refused(
        &self,
        version: i64,
        code: &str,
        description: Option<String>,
    ) -> Result<Refresh, Error> {
        // Another replica may have used the same refresh token a moment earlier: then its new pair is stored
        // (or about to be, and that rotation clears the mark) and the portal is fine.
        let (current, now_version, _) = self.current().await?;
        if now_version != version {
            return Ok(Refresh::Theirs(current));
        }
        // Codes are short identifiers; anything else from the server is not echoed.
        let code: String = code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        self.metrics.token_refresh_refusals.inc();
        tracing::warn!(member_id = %self.member_id, code = %code,
            "the OAuth server refused to refresh the tokens; an administrator must open the application again or reinstall it");
        if let Err(e) = self
            .store
            .set_refresh_refused(&self.member_id, version, &code)
            .await
        {
            tracing::warn!(member_id = %self.member_id, error = %e, "could not record the refused refresh");
        }
        Err(Error::RefreshRefused {
            code,
            description: description.unwrap_or_default().chars().take(200).collect(),
        })
    }

    /// Keep-alive: refreshes the pair if it is still at `version` (what the caller found old). `Ok(false)`
    /// when it was rotated meanwhile (nothing to do).
    pub async fn refresh_if_current(&self, version: i64) -> Result<bool, Error> {
        match self.refresh_locked(|_, v| v == version).await? {
            Refresh::Done(_) => Ok(true),
            Refresh::Theirs(_) => Ok(false),
        }
    }
}

/// What a refresh under the lock ended with.
enum Refresh {
    /// This call rotated the pair.
    Done(AccessToken),
    /// Someone else did (or the installation changed): their current pair.
    Theirs(AccessToken),
}

/// A transport error without its URL (the query holds the client secret and refresh token).
fn redact(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

impl TokenSource for StoreTokenSource {
    fn access_token(&self) -> BoxFuture<'_, Result<AccessToken, B24Error>> {
        Box::pin(async move { self.current().await.map(|(t, _, _)| t) })
    }

    fn refresh(&self, stale: &AccessToken) -> BoxFuture<'_, Result<AccessToken, B24Error>> {
        let stale = stale.clone();
        Box::pin(async move {
            let still_stale = |current: &AccessToken, _: i64| {
                current.token.expose_secret() == stale.token.expose_secret()
            };
            match self.refresh_locked(still_stale).await {
                Ok(Refresh::Done(t) | Refresh::Theirs(t)) => Ok(t),
                Err(Error::Bitrix24(e)) => Err(e),
                Err(e) => Err(B24Error::Token(e.to_string())),
            }
        })
    }
}

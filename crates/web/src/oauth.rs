//! OAuth access tokens of an installed portal, refreshed against the installation's own `server_endpoint`.
//! One refresh at a time per portal (refresh tokens are single-use: two concurrent refreshes would break the
//! chain), and the new pair is stored with a compare-and-swap before it is used.

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

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    error: Option<String>,
    error_description: Option<String>,
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

    /// `server_endpoint`'s origin + `/oauth/token/` (`bitrix24-api.md` §6.1).
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

    async fn do_refresh(&self, stale: &AccessToken) -> Result<AccessToken, B24Error> {
        let lock = self.locks.get(&self.member_id);
        let _guard = lock.lock().await;
        let (current, version, refresh) = self.current().await?;
        // Someone refreshed while we waited: use theirs.
        if current.token.expose_secret() != stale.token.expose_secret() {
            return Ok(current);
        }
        let url = self.token_url()?;
        let resp = self
            .client
            .http
            .get(url)
            .query(&[
                ("grant_type", "refresh_token"),
                ("client_id", self.client.client_id.as_str()),
                ("client_secret", self.client.client_secret.expose_secret()),
                ("refresh_token", refresh.expose_secret()),
            ])
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| {
                B24Error::Token(format!("the OAuth server cannot be reached: {}", redact(e)))
            })?;
        let status = resp.status().as_u16();
        let body: TokenResponse = resp.json().await.map_err(|_| {
            B24Error::Token(format!(
                "the OAuth server answered HTTP {status} without JSON"
            ))
        })?;
        if let Some(code) = body.error {
            let hint = if code == "invalid_grant" {
                " — the refresh token is no longer valid; reinstall the application or open it in Bitrix24"
            } else {
                ""
            };
            return Err(B24Error::Token(format!(
                "the OAuth server refused the refresh: {code} ({}){hint}",
                body.error_description.unwrap_or_default()
            )));
        }
        let (Some(access), Some(new_refresh)) = (body.access_token, body.refresh_token) else {
            return Err(B24Error::Token(
                "the OAuth server answered without tokens".into(),
            ));
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
        self.metrics
            .token_refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !stored {
            // Uninstalled or re-installed meanwhile: the stored pair is the truth.
            return self.current().await.map(|(t, _, _)| t);
        }
        tracing::info!(member_id = %self.member_id, "OAuth tokens refreshed");
        Ok(AccessToken {
            token: access,
            client_endpoint: self.client_endpoint.clone(),
        })
    }
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
        Box::pin(async move { self.do_refresh(&stale).await })
    }
}

//! What Bitrix24 posts to the application (the install and the settings page's iframe open) and how the answer
//! goes back into the portal's frame: the form's fields, the user's token checked against the portal, the
//! portal's REST endpoint, and the framing policy (only the portal may frame the page).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use b24sense_bitrix24::{
    AccessToken, Bitrix24Client, BoxFuture, ClientConfig, Credentials, TokenSource,
};
use secrecy::SecretString;
use url::Url;

use crate::AppState;

/// A Bitrix24 form post (query and urlencoded body; the body wins), field by field.
pub struct BitrixForm(BTreeMap<String, String>);

impl BitrixForm {
    pub fn parse(query: Option<&str>, body: &[u8]) -> BitrixForm {
        let mut m: BTreeMap<String, String> = BTreeMap::new();
        if let Some(q) = query {
            if let Ok(v) = serde_urlencoded::from_str::<Vec<(String, String)>>(q) {
                m.extend(v);
            }
        }
        if let Ok(v) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
            m.extend(v);
        }
        BitrixForm(m)
    }

    /// One trimmed field; absent fields are empty.
    pub fn field(&self, k: &str) -> String {
        self.0
            .get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }

    /// One field as sent (`None` when absent).
    pub fn raw(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
}

/// A token lifetime Bitrix24 sent (`AUTH_EXPIRES`, `expires_in`), seconds; one hour when absent or odd.
pub fn expires_in(value: &str) -> i64 {
    value.parse::<i64>().ok().filter(|s| *s > 0).unwrap_or(3600)
}

/// A fixed access token (the one a user's browser or the install POST carried): used to verify it once.
struct OneToken(AccessToken);

impl TokenSource for OneToken {
    fn access_token(&self) -> BoxFuture<'_, Result<AccessToken, b24sense_bitrix24::Error>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
    fn refresh(
        &self,
        _stale: &AccessToken,
    ) -> BoxFuture<'_, Result<AccessToken, b24sense_bitrix24::Error>> {
        Box::pin(async move {
            Err(b24sense_bitrix24::Error::Token(
                "the user's token expired; reopen the application".into(),
            ))
        })
    }
}

/// Calls `profile` with `token` at `client_endpoint`: the user behind it, if it is valid.
pub async fn verify_user(
    state: &AppState,
    client_endpoint: &Url,
    token: &str,
) -> Result<b24sense_bitrix24::Profile, String> {
    let client = Bitrix24Client::new(
        Credentials::OAuth(Arc::new(OneToken(AccessToken {
            token: SecretString::from(token.to_string()),
            client_endpoint: client_endpoint.clone(),
        }))),
        ClientConfig {
            max_attempts: 2,
            rate: state.config.rate,
            public_hosts_only: !state.config.allow_http_portals,
            ..ClientConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(20), client.profile())
        .await
        .map_err(|_| "Bitrix24 did not answer".to_string())?
        .map_err(|e| e.to_string())
}

/// Whether `url` may be a portal's REST endpoint: https on a DNS name (http, IP literals and `localhost` only
/// for the local emulator).
pub fn portal_endpoint_ok(state: &AppState, url: &Url) -> bool {
    if state.config.allow_http_portals {
        return endpoint_allowed(state, url);
    }
    let public_name = matches!(url.host(), Some(url::Host::Domain(d)) if d.contains('.') && !d.eq_ignore_ascii_case("localhost"));
    url.scheme() == "https" && public_name && url.username().is_empty() && url.password().is_none()
}

pub fn endpoint_allowed(state: &AppState, url: &Url) -> bool {
    url.scheme() == "https" || (url.scheme() == "http" && state.config.allow_http_portals)
}

/// The origin of the Bitrix24 JS SDK's URL, for the pages' script policy (`https://api.bitrix24.com`).
pub fn sdk_origin(sdk: &str) -> String {
    Url::parse(sdk)
        .map(|u| u.origin().ascii_serialization())
        .ok()
        .filter(|o| o != "null")
        .unwrap_or_default()
}

/// Adds the framing policy: only the portal may frame the page. Scripts: the application's own and the Bitrix24
/// JS SDK from `sdk` (its URL); `inline`: also the page's inline script (the install page's `installFinish`).
pub fn page_response(
    domain: &str,
    client_endpoint: &Url,
    mut resp: Response,
    sdk: &str,
    inline: bool,
) -> Response {
    let scheme = client_endpoint.scheme();
    let inline = if inline { " 'unsafe-inline'" } else { "" };
    let scripts = format!("'self'{inline} {}", sdk_origin(sdk));
    let scripts = scripts.trim_end();
    let csp = format!(
        "default-src 'self'; script-src {scripts}; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         frame-ancestors {scheme}://{domain}"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

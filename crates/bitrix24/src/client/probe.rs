//! One cheap request before a run ([`WebhookUrl::probe`]): does the portal answer, does it accept the webhook,
//! and which scopes does the webhook have? No retries and no logging, so the caller can say once, quickly and in
//! the user's words, what is wrong.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use crate::auth::WebhookUrl;
use crate::envelope::{parse_envelope, Envelope};
use crate::error::Error;

impl WebhookUrl {
    /// Calls `scope` once, giving up after `timeout` (connecting included). `Ok(Some(scopes))`: the webhook is
    /// accepted and has these scopes; `Ok(None)`: the portal answered with a redirect (a renamed portal, which the
    /// client follows) or without a list, so the scopes are unknown. `Err`: the portal's refusal
    /// ([`Error::Api`]), no answer ([`Error::Transport`]) or an answer that is not Bitrix24's ([`Error::Http`],
    /// [`Error::Malformed`]).
    pub async fn probe(&self, timeout: Duration) -> Result<Option<Vec<String>>, Error> {
        let url = self.method_url(&self.origin, "scope")?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("b24sense/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::transport)?;
        let resp = http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body("{}")
            .send()
            .await
            .map_err(Error::transport)?;
        let status = resp.status();
        if status.is_redirection() {
            return Ok(None);
        }
        let html = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("html"));
        let bytes = resp.bytes().await.map_err(Error::transport)?;
        let value = if html {
            None
        } else {
            serde_json::from_slice::<Value>(&bytes).ok()
        };
        let Some(value) = value else {
            let detail = if html {
                "an HTML page"
            } else if bytes.is_empty() {
                "an empty body"
            } else {
                "a body that is not JSON"
            };
            return Err(Error::Http {
                status: status.as_u16(),
                detail: detail.to_string(),
            });
        };
        match parse_envelope(&value, status.as_u16()) {
            Some(Envelope::Ok(r)) => Ok(r.result.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })),
            Some(Envelope::Err(e, _)) => Err(Error::Api(e)),
            None => Err(Error::Malformed(format!(
                "HTTP {}: JSON is not a Bitrix24 envelope",
                status.as_u16()
            ))),
        }
    }
}

//! One REST request through the portal's limits, with retries: the request limiter and the operating-time
//! tracker before sending; backoff with jitter after transient failures; one token refresh when the access token
//! is rejected; a 302 answer (a renamed portal) followed to the new host.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

use super::{bump, content_type_has, lock_read, lock_write, Bitrix24Client};
use crate::auth::{AccessToken, Credentials, Origin};
use crate::envelope::{parse_envelope, ApiResponse, Envelope};
use crate::error::{ApiErrorKind, Error};

/// How one attempt ended, when it did not end the call.
enum Next {
    /// Retry after backoff (or after the given wait), counting an attempt.
    Retry(Error, Option<Duration>),
}

impl Bitrix24Client {
    fn learn_time(&self, method: &str, time: Option<&crate::ResponseTime>) {
        let Some(t) = time else { return };
        if let Some(d) = t.date_start {
            lock_write(&self.inner.offset, Some(*d.offset()));
        }
        self.inner
            .operating
            .record(method, t.operating, t.operating_reset_at);
    }

    /// Resolves where to send `method` and with which token.
    async fn target(&self, method: &str, token: &mut Option<AccessToken>) -> Result<Url, Error> {
        match &self.inner.credentials {
            Credentials::Webhook(w) => {
                let origin = lock_read(&self.inner.origin).unwrap_or_else(|| w.origin.clone());
                w.method_url(&origin, method)
            }
            Credentials::OAuth(src) => {
                let t = match token.take() {
                    Some(t) => t,
                    None => src.access_token().await?,
                };
                let endpoint = match lock_read(&self.inner.renamed) {
                    Some(o) => o.apply(&t.client_endpoint),
                    None => {
                        lock_write(&self.inner.origin, Origin::of(&t.client_endpoint));
                        t.client_endpoint.clone()
                    }
                };
                let mut base = endpoint.to_string();
                if !base.ends_with('/') {
                    base.push('/');
                }
                let url = Url::parse(&format!("{base}{method}.json"))
                    .map_err(|_| Error::Token("client_endpoint is not a usable URL".into()))?;
                *token = Some(t);
                Ok(url)
            }
        }
    }

    pub(super) async fn execute(&self, method: &str, body: Bytes) -> Result<ApiResponse, Error> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let mut attempt = 0u32;
        let mut redirects = 0u32;
        let mut refreshed = false;
        let mut token: Option<AccessToken> = None;
        loop {
            if let Some(wait) = inner.operating.delay_before(method) {
                bump(&inner.counters.operating_limited);
                tracing::info!(
                    method,
                    wait_secs = wait.as_secs_f64(),
                    "operating time near the limit; holding calls"
                );
                tokio::time::sleep(wait).await;
            }
            let url = self.target(method, &mut token).await?;
            self.check_destination(&url)?;
            inner.limiter.acquire().await;
            bump(&inner.counters.requests);
            let mut req = inner
                .api_http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json")
                .timeout(cfg.request_timeout)
                .body(body.clone());
            if let Some(t) = &token {
                use secrecy::ExposeSecret;
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.token.expose_secret()))
                    .map_err(|_| {
                    Error::Token("access token is not a valid header value".into())
                })?;
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
            let next = match req.send().await {
                Err(e) => Next::Retry(Error::transport(e), None),
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_redirection() {
                        redirects += 1;
                        if redirects > 3 {
                            return Err(Error::Redirect("more than 3 redirects".into()));
                        }
                        self.follow_rename(&url, resp.headers().get(LOCATION))?;
                        continue;
                    }
                    let html = content_type_has(&resp, "html");
                    match resp.bytes().await {
                        Err(e) => Next::Retry(Error::transport(e), None),
                        Ok(bytes) => match self.classify(method, status, html, &bytes) {
                            Ok(Ok(r)) => return Ok(r),
                            Ok(Err(next)) => next,
                            Err(Error::Api(e))
                                if matches!(
                                    e.kind(),
                                    ApiErrorKind::ExpiredToken | ApiErrorKind::InvalidToken
                                ) && !refreshed =>
                            {
                                let (Credentials::OAuth(src), Some(stale)) =
                                    (&inner.credentials, token.take())
                                else {
                                    return Err(Error::Api(e));
                                };
                                refreshed = true;
                                bump(&inner.counters.token_refreshes);
                                tracing::info!(method, code = %e.code, "access token rejected; refreshing once");
                                token = Some(src.refresh(&stale).await?);
                                continue;
                            }
                            Err(e) => return Err(e),
                        },
                    }
                }
            };
            let Next::Retry(err, wait) = next;
            attempt += 1;
            if attempt >= cfg.max_attempts {
                tracing::warn!(method, attempts = attempt, error = %err, "giving up");
                return Err(err);
            }
            bump(&inner.counters.retries);
            let wait = wait.unwrap_or_else(|| self.backoff(attempt));
            tracing::debug!(method, attempt, wait_ms = wait.as_millis() as u64, error = %err, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Turns one HTTP answer into a result, a retry, or a final error.
    fn classify(
        &self,
        method: &str,
        status: StatusCode,
        html: bool,
        bytes: &[u8],
    ) -> Result<Result<ApiResponse, Next>, Error> {
        let code = status.as_u16();
        let parsed = if html {
            None
        } else {
            serde_json::from_slice::<Value>(bytes).ok()
        };
        let Some(value) = parsed else {
            let detail = if html {
                "an HTML page".to_string()
            } else if bytes.is_empty() {
                "an empty body".to_string()
            } else {
                format!("{} bytes that are not JSON (truncated?)", bytes.len())
            };
            let e = Error::Http {
                status: code,
                detail,
            };
            // Proxies under load answer with HTML 5xx; a cut-off 200 is a broken transfer. A non-JSON 4xx means
            // the URL is not a Bitrix24 REST endpoint: final. A 429 is a rate-limit refusal whatever its body.
            if code == 429 {
                self.note_rate_limited();
            }
            return if status.is_success() || status.is_server_error() || code == 429 {
                Ok(Err(Next::Retry(e, None)))
            } else {
                Err(e)
            };
        };
        match parse_envelope(&value, code) {
            None => Ok(Err(Next::Retry(
                Error::Malformed(format!("HTTP {code}: JSON is not a Bitrix24 envelope")),
                None,
            ))),
            Some(Envelope::Ok(r)) => {
                self.learn_time(method, r.time.as_ref());
                Ok(Ok(r))
            }
            Some(Envelope::Err(e, time)) => {
                self.learn_time(method, time.as_ref());
                let inner = &self.inner;
                match e.kind() {
                    _ if e.kind() == ApiErrorKind::QueryLimitExceeded || code == 429 => {
                        self.note_rate_limited();
                        Ok(Err(Next::Retry(Error::Api(e), None)))
                    }
                    ApiErrorKind::OperationTimeLimit => {
                        bump(&inner.counters.operating_limited);
                        let wait = inner.operating.delay_after_block(method);
                        Ok(Err(Next::Retry(Error::Api(e), Some(wait))))
                    }
                    k if k.is_transient() => Ok(Err(Next::Retry(Error::Api(e), None))),
                    _ => Err(Error::Api(e)),
                }
            }
        }
    }

    /// A renamed portal answers 302 with the new address: switch the stored host, re-send the same POST.
    fn follow_rename(&self, from: &Url, location: Option<&HeaderValue>) -> Result<(), Error> {
        let loc = location
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Redirect("redirect without a Location header".into()))?;
        let target = from
            .join(loc)
            .map_err(|_| Error::Redirect("Location is not a URL".into()))?;
        let new =
            Origin::of(&target).ok_or_else(|| Error::Redirect("Location has no host".into()))?;
        let old = Origin::of(from);
        if old.as_ref() == Some(&new) {
            return Err(Error::Redirect(format!(
                "redirect to another page of {}",
                new.host
            )));
        }
        if !matches!(new.scheme.as_str(), "https" | "http")
            || (new.scheme == "http" && old.is_some_and(|o| o.scheme == "https"))
        {
            return Err(Error::Redirect(format!(
                "refusing to downgrade to {}://{}",
                new.scheme, new.host
            )));
        }
        tracing::warn!(new_host = %new.host_port(), "portal answered 302: renamed; switching host");
        bump(&self.inner.counters.redirects);
        lock_write(&self.inner.origin, Some(new.clone()));
        lock_write(&self.inner.renamed, Some(new));
        Ok(())
    }
}

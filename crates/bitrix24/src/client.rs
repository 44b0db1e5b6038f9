//! The HTTP side: one request with limits, retries, token refresh and rename handling (§1.1, §2.4).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::FixedOffset;
use futures::stream::BoxStream;
use futures::StreamExt;
use rand::Rng;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, REFERER};
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

use crate::auth::{AccessToken, Credentials, Origin};
use crate::envelope::{parse_envelope, ApiResponse, BatchResponse, Envelope};
use crate::error::{ApiErrorKind, Error};
use crate::limits::{OperatingTracker, RatePlan, RequestLimiter};

/// Tuning of one client. `Default` gives the values the product uses.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub rate: RatePlan,
    /// Take a limiter token for recording downloads from the portal's own host (mapping.md, "Audio").
    pub count_portal_downloads: bool,
    /// Whole-request timeout of a REST call; read timeout (between chunks) of a download.
    pub request_timeout: Duration,
    /// Attempts per REST call, the first included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The portal's operating-time limit per method (cloud: 480 s per 10 minutes).
    pub operating_limit_secs: f64,
    /// Fraction of the limit after which calls of that method wait for `operating_reset_at`.
    pub operating_threshold: f64,
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            rate: RatePlan::STANDARD,
            count_portal_downloads: true,
            request_timeout: Duration::from_secs(60),
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            operating_limit_secs: 480.0,
            operating_threshold: 0.75,
            user_agent: concat!("b24sense/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Counters since the client was created (shared by all clones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent (REST calls, batches, downloads; every attempt).
    pub requests: u64,
    /// `QUERY_LIMIT_EXCEEDED` answers seen.
    pub rate_limited: u64,
    /// `OPERATION_TIME_LIMIT` answers seen plus calls held back by the operating-time tracker.
    pub operating_limited: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
    /// Downloads whose body started.
    pub downloads: u64,
    /// Download requests to the portal's own host that took a limiter token (`count_portal_downloads`).
    pub portal_downloads: u64,
    pub download_bytes: u64,
    pub token_refreshes: u64,
    /// Portal renames followed (302).
    pub redirects: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    operating_limited: AtomicU64,
    retries: AtomicU64,
    downloads: AtomicU64,
    portal_downloads: AtomicU64,
    download_bytes: AtomicU64,
    token_refreshes: AtomicU64,
    redirects: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct Inner {
    api_http: reqwest::Client,
    download_http: reqwest::Client,
    credentials: Credentials,
    pub(crate) config: ClientConfig,
    limiter: RequestLimiter,
    operating: OperatingTracker,
    /// The portal's current origin (webhook: from the URL; OAuth: from `client_endpoint`), updated on rename.
    origin: RwLock<Option<Origin>>,
    /// Set after a 302: overrides the origin of OAuth `client_endpoint`s.
    renamed: RwLock<Option<Origin>>,
    offset: RwLock<Option<FixedOffset>>,
    counters: Counters,
}

/// A Bitrix24 REST client for one portal. Cheap to clone; clones share the limiter, trackers and stats.
#[derive(Clone)]
pub struct Bitrix24Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Bitrix24Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitrix24Client")
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

/// A streaming recording download.
pub struct Download {
    pub content_length: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, Error>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

fn valid_method(method: &str) -> Result<(), Error> {
    if !method.is_empty()
        && method.len() <= 200
        && method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{method:?} is not a Bitrix24 method name"
        )))
    }
}

fn lock_read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn lock_write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

/// How one attempt ended, when it did not end the call.
enum Next {
    /// Retry after backoff (or after the given wait), counting an attempt.
    Retry(Error, Option<Duration>),
}

impl Bitrix24Client {
    pub fn new(credentials: Credentials, config: ClientConfig) -> Result<Self, Error> {
        let build = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .user_agent(config.user_agent.clone())
                .redirect(redirects)
                .connect_timeout(config.request_timeout.min(Duration::from_secs(30)))
                .read_timeout(config.request_timeout)
                .build()
                .map_err(|e| {
                    Error::InvalidArgument(format!(
                        "cannot build the HTTP client: {}",
                        Error::transport(e)
                    ))
                })
        };
        // A renamed portal answers a POST with 302; following it could turn it into a GET without the body.
        let api_http = build(reqwest::redirect::Policy::none())?;
        // Recording URLs (Voximplant storage, PBXs) may legitimately redirect.
        let download_http = build(reqwest::redirect::Policy::limited(5))?;
        let origin = match &credentials {
            Credentials::Webhook(w) => Some(w.origin.clone()),
            Credentials::OAuth(_) => None,
        };
        if config.max_attempts == 0 {
            return Err(Error::InvalidArgument(
                "max_attempts must be at least 1".into(),
            ));
        }
        Ok(Bitrix24Client {
            inner: Arc::new(Inner {
                api_http,
                download_http,
                credentials,
                limiter: RequestLimiter::new(config.rate),
                operating: OperatingTracker::new(
                    config.operating_limit_secs,
                    config.operating_threshold,
                ),
                config,
                origin: RwLock::new(origin),
                renamed: RwLock::new(None),
                offset: RwLock::new(None),
                counters: Counters::default(),
            }),
        })
    }

    /// The portal's current host (changes after a 302 rename; empty for OAuth before the first call), with
    /// `:port` only when a non-default port is used — the same spelling as [`WebhookUrl::host`](crate::WebhookUrl::host).
    pub fn portal_host(&self) -> String {
        lock_read(&self.inner.origin)
            .map(|o| o.host_port())
            .unwrap_or_default()
    }

    /// The portal's UTC offset, learned from `time.date_start` of any response.
    pub fn portal_offset(&self) -> Option<FixedOffset> {
        lock_read(&self.inner.offset)
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            requests: g(&c.requests),
            rate_limited: g(&c.rate_limited),
            operating_limited: g(&c.operating_limited),
            retries: g(&c.retries),
            downloads: g(&c.downloads),
            portal_downloads: g(&c.portal_downloads),
            download_bytes: g(&c.download_bytes),
            token_refreshes: g(&c.token_refreshes),
            redirects: g(&c.redirects),
        }
    }

    /// One REST call with a JSON body; retried per §2.4 (all b24sense calls are reads).
    pub async fn call(&self, method: &str, params: Value) -> Result<ApiResponse, Error> {
        valid_method(method)?;
        let params = if params.is_null() {
            Value::Object(Default::default())
        } else {
            params
        };
        if !params.is_object() {
            return Err(Error::InvalidArgument(
                "call parameters must be a JSON object".into(),
            ));
        }
        let body =
            serde_json::to_vec(&params).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.execute(method, Bytes::from(body)).await
    }

    /// A `batch` of up to 50 commands `(name, "method?php-query")`, sent as ONE request, in the given order.
    pub async fn batch(
        &self,
        commands: &[(String, String)],
        halt: bool,
    ) -> Result<BatchResponse, Error> {
        if commands.is_empty() {
            return Ok(BatchResponse::default());
        }
        if commands.len() > 50 {
            return Err(Error::InvalidArgument(format!(
                "a batch holds at most 50 commands, got {}",
                commands.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, _) in commands {
            if name.is_empty() || !seen.insert(name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "batch command name {name:?} is empty or repeated"
                )));
            }
        }
        // Built by hand so the commands keep their order (they run in body order and may reference earlier
        // ones); serde_json's map would sort them.
        let mut body = format!("{{\"halt\":{},\"cmd\":{{", u8::from(halt));
        for (i, (name, cmd)) in commands.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            let enc = |s: &str| {
                serde_json::to_string(s).map_err(|e| Error::InvalidArgument(e.to_string()))
            };
            body.push_str(&enc(name)?);
            body.push(':');
            body.push_str(&enc(cmd)?);
        }
        body.push_str("}}");
        let resp = self.execute("batch", Bytes::from(body)).await?;
        BatchResponse::from_response(resp).map_err(Error::Malformed)
    }

    fn learn_time(&self, method: &str, time: Option<&crate::ResponseTime>) {
        let Some(t) = time else { return };
        if let Some(d) = t.date_start {
            lock_write(&self.inner.offset, Some(*d.offset()));
        }
        self.inner
            .operating
            .record(method, t.operating, t.operating_reset_at);
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let exp = c
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let capped = exp.min(c.backoff_max);
        // "Equal jitter": between half and the full delay, so parallel clients spread out.
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
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

    async fn execute(&self, method: &str, body: Bytes) -> Result<ApiResponse, Error> {
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
                    let html = resp
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.to_ascii_lowercase().contains("html"));
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
            // the URL is not a Bitrix24 REST endpoint: final.
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
                    ApiErrorKind::QueryLimitExceeded => {
                        bump(&inner.counters.rate_limited);
                        inner.limiter.drain();
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

    /// Streaming GET of a recording (`CALL_RECORD_URL` or `DOWNLOAD_URL`). The URL's query is never logged.
    pub async fn download(&self, url: &Url) -> Result<Download, Error> {
        let inner = &self.inner;
        let cfg = &inner.config;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(Error::InvalidArgument(format!(
                "recording URL scheme {:?} is not http(s)",
                url.scheme()
            )));
        }
        let origin = lock_read(&inner.origin);
        let on_portal = origin
            .as_ref()
            .is_some_and(|o| Origin::of(url).is_some_and(|u| u.host == o.host && u.port == o.port));
        let referer = origin.as_ref().map(|o| format!("{}/", o.base()));
        let host = url.host_str().unwrap_or_default().to_string();
        let mut attempt = 0u32;
        loop {
            if on_portal && cfg.count_portal_downloads {
                inner.limiter.acquire().await;
                bump(&inner.counters.portal_downloads);
            }
            bump(&inner.counters.requests);
            let mut req = inner.download_http.get(url.clone()).header(ACCEPT, "*/*");
            if let Some(r) = &referer {
                req = req.header(REFERER, r.as_str());
            }
            let err = match req.send().await {
                Err(e) => Error::transport(e),
                Ok(resp) => {
                    let status = resp.status();
                    let json = resp
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
                    if status.is_success() && !json {
                        bump(&inner.counters.downloads);
                        let me = self.inner.clone();
                        let content_length = resp.content_length();
                        let stream = resp
                            .bytes_stream()
                            .map(move |r| match r {
                                Ok(b) => {
                                    me.counters
                                        .download_bytes
                                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                                    Ok(b)
                                }
                                Err(e) => Err(Error::transport(e)),
                            })
                            .boxed();
                        return Ok(Download {
                            content_length,
                            stream,
                        });
                    }
                    let code = status.as_u16();
                    // The portal's download.json reports errors (dead token, deleted file) as a JSON envelope.
                    let body = resp.bytes().await.unwrap_or_default();
                    let envelope = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| parse_envelope(&v, code));
                    match envelope {
                        Some(Envelope::Err(e, _)) if !e.kind().is_transient() => {
                            return Err(Error::DownloadLink(e))
                        }
                        Some(Envelope::Err(e, _)) => Error::Api(e),
                        Some(Envelope::Ok(_)) | None if status.is_success() => {
                            // A JSON recording is nonsense but not ours to judge: hand the bytes over.
                            bump(&inner.counters.downloads);
                            inner
                                .counters
                                .download_bytes
                                .fetch_add(body.len() as u64, Ordering::Relaxed);
                            let len = body.len() as u64;
                            return Ok(Download {
                                content_length: Some(len),
                                stream: futures::stream::once(async move { Ok(body) }).boxed(),
                            });
                        }
                        _ if code == 429 || status.is_server_error() => {
                            Error::Download { status: code }
                        }
                        _ => return Err(Error::Download { status: code }),
                    }
                }
            };
            attempt += 1;
            if attempt >= cfg.max_attempts {
                tracing::warn!(host = %host, attempts = attempt, error = %err, "recording download failed");
                return Err(err);
            }
            bump(&inner.counters.retries);
            let wait = self.backoff(attempt);
            tracing::debug!(host = %host, attempt, error = %err, "retrying recording download");
            tokio::time::sleep(wait).await;
        }
    }
}

//! The client of one portal: its configuration, shared state (limiter, trackers, the portal's current origin)
//! and counters. The parts:
//! - `rest` — the REST entry points: one call, one `batch`;
//! - `send` — one REST request through limits and retries: token refresh once, 302 portal renames, backoff;
//! - `download` — streaming recording downloads;
//! - `accounting` — whether downloads from the portal's own host count against its request bucket;
//! - `public_only` — public addresses only (DNS resolver, IP literals, redirects) when `public_hosts_only`.

mod accounting;
mod download;
mod probe;
mod public_only;
mod rest;
mod send;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::FixedOffset;
use rand::Rng;
use reqwest::header::CONTENT_TYPE;

use crate::auth::{Credentials, Origin};
use crate::error::Error;
use crate::limits::{OperatingTracker, RatePlan, RequestLimiter};

pub use download::Download;
pub use public_only::{is_public, PublicOnly};

/// Tuning of one client. `Default` gives the values the product uses.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub rate: RatePlan,
    /// Start out taking a limiter token for recording downloads from the portal's own host (the portal is known
    /// to count them). Off by default: the client switches it on by itself at the first rate-limit refusal after
    /// an uncounted download ([`Bitrix24Client::counts_portal_downloads`]).
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
    /// Connect only to public addresses (the application server's production mode, where portal addresses come
    /// from outside): names resolving to loopback, private, link-local or metadata addresses and such IP
    /// literals are refused (see `public_only`). Off for the CLI, whose operator names the portal.
    pub public_hosts_only: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            rate: RatePlan::STANDARD,
            count_portal_downloads: false,
            request_timeout: Duration::from_secs(60),
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            operating_limit_secs: 480.0,
            operating_threshold: 0.75,
            user_agent: concat!("b24sense/", env!("CARGO_PKG_VERSION")).to_string(),
            public_hosts_only: false,
        }
    }
}

/// Counters since the client was created (shared by all clones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent (REST calls, batches, downloads; every attempt).
    pub requests: u64,
    /// Rate-limit refusals seen (`QUERY_LIMIT_EXCEEDED`, HTTP 429), REST calls and portal downloads alike.
    pub rate_limited: u64,
    /// `OPERATION_TIME_LIMIT` answers seen plus calls held back by the operating-time tracker.
    pub operating_limited: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
    /// Downloads whose body started.
    pub downloads: u64,
    /// Download requests to the portal's own host that took a limiter token (downloads counted).
    pub portal_downloads: u64,
    /// Download requests to the portal's own host sent without a limiter token (downloads not counted).
    pub uncounted_portal_downloads: u64,
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
    uncounted_portal_downloads: AtomicU64,
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
    /// Whether downloads from the portal's own host take a limiter token; only ever switches on ([`accounting`]).
    downloads_counted: tokio::sync::watch::Sender<bool>,
    /// Uncounted portal downloads sent while the local bucket is empty (`accounting`).
    over_budget: Arc<tokio::sync::Semaphore>,
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

fn lock_read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn lock_write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

/// Whether the answer's `Content-Type` mentions `word` (`html`, `json`), in any case.
fn content_type_has(resp: &reqwest::Response, word: &str) -> bool {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains(word))
}

impl Bitrix24Client {
    pub fn new(credentials: Credentials, config: ClientConfig) -> Result<Self, Error> {
        let build = |redirects: reqwest::redirect::Policy| {
            let mut b = reqwest::Client::builder()
                .user_agent(config.user_agent.clone())
                .redirect(redirects)
                .connect_timeout(config.request_timeout.min(Duration::from_secs(30)))
                .read_timeout(config.request_timeout);
            if config.public_hosts_only {
                b = b.dns_resolver(Arc::new(PublicOnly));
            }
            b.build().map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot build the HTTP client: {}",
                    Error::transport(e)
                ))
            })
        };
        // A renamed portal answers a POST with 302; following it could turn it into a GET without the body.
        let api_http = build(reqwest::redirect::Policy::none())?;
        // Recording URLs (Voximplant storage, PBXs) may legitimately redirect.
        let download_http = build(if config.public_hosts_only {
            public_only::redirects(5)
        } else {
            reqwest::redirect::Policy::limited(5)
        })?;
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
                downloads_counted: tokio::sync::watch::Sender::new(config.count_portal_downloads),
                over_budget: Arc::new(tokio::sync::Semaphore::new(
                    accounting::OVER_BUDGET_IN_FLIGHT,
                )),
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
            uncounted_portal_downloads: g(&c.uncounted_portal_downloads),
            download_bytes: g(&c.download_bytes),
            token_refreshes: g(&c.token_refreshes),
            redirects: g(&c.redirects),
        }
    }

    /// With `public_hosts_only`, refuses a URL naming a non-public IP address (names are checked when resolved).
    fn check_destination(&self, url: &url::Url) -> Result<(), Error> {
        if self.inner.config.public_hosts_only {
            public_only::check_destination(url)?;
        }
        Ok(())
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
}

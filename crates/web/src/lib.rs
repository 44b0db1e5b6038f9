//! b24sense-web — the Bitrix24 application server behind `b24sense serve`: the application side of a
//! Bitrix24 local or Market application (the product rules are in `docs/mapping.md`).
//!
//! This file keeps the configuration ([`WebConfig`]), the server ([`AppServer`]) and its routes. The parts:
//! - [`install`]: install (stores the portal, its tokens and application token, binds `OnVoximplantCallEnd`,
//!   `OnCrmActivityUpdate` and `OnAppUninstall`, answers with `BX24.installFinish()`), uninstall, call-end and
//!   activity-update (an Open Lines session closed) events;
//! - [`frame`]: what Bitrix24 posts (forms, the user's token) and the framing policy of the answers;
//! - [`settings_page`] and [`page`]: the settings page opened in the portal's iframe (signed session token in the
//!   page, CSP `frame-ancestors` limited to the portal); [`api`]: its JSON API, with [`auth`] (session and CSRF
//!   extractors) and [`api_error`];
//! - [`settings`]: the settings form, parsed and validated in one place; [`check`]: "Check connection";
//! - [`runner`]: export runs with live progress, journaled in the store and resumed after a restart
//!   ([`resume`]); [`sync`]: continuous sync (events, a periodic catch-up pass, rechecks of late recordings);
//! - [`oauth`]: token refresh against the installation's `server_endpoint`; [`keepalive`]: refresh of idle
//!   installations;
//! - [`report`]: the CSV report from the ledgers (calls, then Open Lines sessions); [`metrics`]: `/metrics`;
//! - [`i18n`]: the page language and every sentence in Russian and English; [`trigger`]: what started a run;
//!   [`session`]: signed session and CSRF tokens;
//! - [`conn`]: the HTTP server under the router, with header, body and idle timeouts and a connection cap.
//!
//! Every answer carries `X-Content-Type-Options: nosniff`, and all but the static files `Cache-Control:
//! no-store` (the page holds a session token, the API and the report a portal's data). Request-supplied values
//! are logged with `?` (Debug), which escapes control characters, so a newline cannot forge a log line.
//!
//! Exports themselves are the engine's `run_export` and, when the settings name a chat connection, its
//! `run_chat_export` beside it ([`runner::chats`]); the store keeps portals, settings and the ledgers.

mod api;
mod api_error;
mod auth;
mod check;
mod conn;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod i18n;
mod install;
mod install_proof;
pub mod keepalive;
pub mod metrics;
pub mod oauth;
mod page;
mod report;
pub mod resume;
pub mod runner;
pub mod session;
mod settings;
mod settings_page;
mod sync;
mod trigger;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use b24sense_bitrix24::{Bitrix24Client, RatePlan};
use b24sense_engine::LateRecordings;
use b24sense_store::{Portal, SecretKey, Store};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use url::Url;

use api_error::TextError;
pub use conn::ConnectionLimits;
pub use error::Error;
pub use metrics::Metrics;
use oauth::{OAuthClient, RefreshLocks};
use runner::{RunEnv, Runner};
use session::Signer;

/// How the application server is set up.
#[derive(Clone)]
pub struct WebConfig {
    /// Where Bitrix24 and browsers reach this server (behind the HTTPS proxy), e.g. `https://b24sense.example.com/`.
    pub public_url: Url,
    /// The application's `client_id` / `client_secret` (local or Market application).
    pub client_id: String,
    pub client_secret: SecretString,
    /// The SpeechSense API endpoint (`https://api.speechsense.yandexcloud.net:443`).
    pub speechsense_endpoint: String,
    /// Calls downloaded and uploaded at once per portal (adaptive unless pinned).
    pub concurrency: b24sense_engine::Concurrency,
    /// Catch-up pass for portals with continuous sync.
    pub sync_interval: Duration,
    /// How often to look for calls whose late recording is due for another check.
    pub recheck_interval: Duration,
    /// How long and how often continuous sync checks again for a recording the portal has not attached yet.
    pub late_recordings: LateRecordings,
    /// Accept portals over plain http (only for the local emulator; real portals are https).
    pub allow_http_portals: bool,
    pub rate: RatePlan,
    /// How long a settings-page session lasts without a renewal (the open page renews it every few minutes).
    pub session_ttl: Duration,
    /// OAuth servers (`host` or `host:port`): an install is proven by exchanging its refresh token at one of them
    /// (the answer names the portal), and an installation's `server_endpoint` must be one of them (the refresh
    /// sends the client secret there, so a forged install must not pick its own). Default: Bitrix24's global and
    /// Russian ones; https, or http with `allow_http_portals` (the local emulator).
    pub oauth_servers: Vec<String>,
    /// How often the keep-alive task looks for idle installations.
    pub keepalive_interval: Duration,
    /// Refresh an installation whose tokens were last rotated this long ago (refresh tokens may expire after
    /// 28 days or at first use, so Bitrix24 asks for a refresh at least every ~20 days).
    pub keepalive_age: Duration,
    /// A run journaled as running whose heartbeat is older than this belongs to a process that is gone: it is
    /// shown as interrupted and resumed. Must be well above the heartbeat (at most 10 s).
    pub run_stale_after: Duration,
    /// Call-end events start at most one pass per portal this often (more events queue one pass).
    pub event_pass_spacing: Duration,
    /// A call-end event whose `ts` is older than this is acknowledged without work.
    pub event_max_age: Duration,
    /// Timeouts and the cap on connections of the HTTP server.
    pub connections: ConnectionLimits,
    /// The Bitrix24 JS SDK the pages load (`BX24.installFinish`, `BX24.resizeWindow`): Bitrix24's own by
    /// default; the local emulator serves a stand-in (`Bitrix24Emulator::sdk_url`).
    pub bitrix24_sdk: String,
}

impl WebConfig {
    pub fn new(
        public_url: Url,
        client_id: String,
        client_secret: SecretString,
        speechsense_endpoint: String,
    ) -> Self {
        WebConfig {
            public_url,
            client_id,
            client_secret,
            speechsense_endpoint,
            concurrency: b24sense_engine::Concurrency::default(),
            sync_interval: Duration::from_secs(300),
            recheck_interval: Duration::from_secs(60),
            late_recordings: LateRecordings::default(),
            allow_http_portals: false,
            rate: RatePlan::STANDARD,
            session_ttl: Duration::from_secs(3600),
            oauth_servers: DEFAULT_OAUTH_SERVERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            keepalive_interval: Duration::from_secs(3600),
            keepalive_age: Duration::from_secs(14 * 86_400),
            // The engine's portal lease lasts as long: a crashed run's portal is free again by then anyway.
            run_stale_after: Duration::from_secs(60),
            event_pass_spacing: Duration::from_secs(30),
            event_max_age: Duration::from_secs(300),
            connections: ConnectionLimits::default(),
            bitrix24_sdk: DEFAULT_BITRIX24_SDK.to_string(),
        }
    }
}

/// Bitrix24's JS SDK.
pub const DEFAULT_BITRIX24_SDK: &str = "https://api.bitrix24.com/api/v1/";

/// Bitrix24's OAuth servers (global and Russian).
pub const DEFAULT_OAUTH_SERVERS: [&str; 2] = ["oauth.bitrix.info", "oauth.bitrix24.tech"];

/// What every handler and task shares.
struct AppState {
    config: WebConfig,
    store: Store,
    key: SecretKey,
    signer: Signer,
    metrics: Arc<Metrics>,
    runner: Arc<Runner>,
    locks: Arc<RefreshLocks>,
    http: reqwest::Client,
    /// Call-end passes per portal (coalescing).
    event_passes: sync::EventPasses,
    /// Cancelled when the server shuts down (a queued event pass then does not start).
    stopping: CancellationToken,
}

impl AppState {
    /// Everything a run needs besides the portal.
    fn run_env(&self) -> RunEnv {
        RunEnv {
            store: self.store.clone(),
            key: self.key.clone(),
            oauth: OAuthClient {
                client_id: self.config.client_id.clone(),
                client_secret: self.config.client_secret.clone(),
                http: self.http.clone(),
            },
            locks: self.locks.clone(),
            metrics: self.metrics.clone(),
            speechsense_endpoint: self.config.speechsense_endpoint.clone(),
            concurrency: self.config.concurrency,
            rate: self.config.rate,
            public_hosts_only: !self.config.allow_http_portals,
            late_recordings: self.config.late_recordings,
            stale_after: self.config.run_stale_after,
        }
    }

    /// The portal's shared REST client (one limiter for its runs and its page requests).
    fn portal_client(&self, portal: &Portal) -> Result<Bitrix24Client, String> {
        self.runner.portal_client(&self.run_env(), portal)
    }
}

/// The application server. Cheap to clone.
#[derive(Clone)]
pub struct AppServer {
    state: Arc<AppState>,
}

impl AppServer {
    pub fn new(config: WebConfig, store: Store, key: SecretKey) -> Result<AppServer, Error> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        // The OAuth servers are named by the operator, but never inside the network in production either.
        if !config.allow_http_portals {
            http = http.dns_resolver(Arc::new(b24sense_bitrix24::PublicOnly));
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let signer = Signer::new(key.derive("web-session"), key.derive("web-csrf"));
        Ok(AppServer {
            state: Arc::new(AppState {
                config,
                store,
                key,
                signer,
                metrics: Arc::default(),
                runner: Arc::default(),
                locks: Arc::default(),
                http,
                event_passes: sync::EventPasses::default(),
                stopping: CancellationToken::new(),
            }),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// All routes: `/install`, `/app` (settings page), `/events`, `/api/*`, `/static/*`, `/healthz`, `/readyz`,
    /// `/metrics`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/install", post(install::install))
            .route("/app", post(settings_page::app_page))
            .route("/events", post(install::events))
            .route("/api/state", get(api::state))
            .route("/api/settings", post(api::save))
            .route("/api/check", post(api::check))
            .route("/api/export/start", post(api::start))
            .route("/api/export/stop", post(api::stop))
            .route("/api/progress", get(api::progress))
            .route("/api/report", get(api::report_csv))
            .route("/api/users", get(api::users))
            .route("/api/session/renew", post(api::renew))
            .route(
                "/static/app.js",
                get(|| async { static_file("text/javascript; charset=utf-8", page::APP_JS) }),
            )
            .route(
                "/static/app.css",
                get(|| async { static_file("text/css; charset=utf-8", page::APP_CSS) }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_route))
            .with_state(self.state.clone())
            .layer(axum::middleware::from_fn(security_headers))
    }

    /// Serves until `shutdown`, with the periodic catch-up pass for portals with continuous sync, the token
    /// keep-alive, and the resumption of runs a restart interrupted (first pass at once). On shutdown the
    /// running exports stop like the engine's shutdown (uploads in flight finish) and are journaled as
    /// interrupted, so the next start resumes them.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        // A child token: the tasks also stop when serving fails, without cancelling the caller's token.
        let shutdown = shutdown.child_token();
        let sync = tokio::spawn(sync::run(self.state.clone(), shutdown.clone()));
        let keepalive = tokio::spawn(keepalive::run(self.state.clone(), shutdown.clone()));
        let resume = tokio::spawn(resume::run(self.state.clone(), shutdown.clone()));
        let stopping = {
            let (state, s) = (self.state.clone(), shutdown.clone());
            tokio::spawn(async move {
                s.cancelled().await;
                resume::stop_runs(&state).await;
            })
        };
        let r = conn::serve(
            listener,
            self.router(),
            self.state.config.connections,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        self.state.stopping.cancel();
        sync.abort();
        resume.abort();
        // Not aborted: a refresh cut short after the OAuth server answered would lose the refresh token; the
        // task stops after the portal it is at.
        let _ = keepalive.await;
        let _ = stopping.await;
        r.map_err(Error::Io)
    }

    /// One keep-alive pass (what the periodic task does): refreshes every installed portal whose tokens were
    /// last rotated at least [`WebConfig::keepalive_age`] ago.
    pub async fn keepalive_pass(&self) -> keepalive::PassReport {
        keepalive::pass(&self.state, &CancellationToken::new()).await
    }

    /// One resumption pass (what `serve` does at start and then periodically): takes over every portal's run
    /// that a shutdown or a crash interrupted and starts it again. Returns how many were started.
    pub async fn resume_pass(&self) -> usize {
        resume::pass(&self.state).await
    }

    /// Starts an export for every installed portal with continuous sync that is idle (what the periodic pass does).
    pub async fn sync_pass(&self) -> usize {
        sync::sync_once(&self.state).await
    }

    /// Starts an incremental pass for every idle portal with continuous sync that has a call whose late recording
    /// is due for another check (what the recheck timer does).
    pub async fn recheck_pass(&self) -> usize {
        sync::recheck_once(&self.state).await
    }
}

/// `nosniff` on every answer; `no-store` on all but the static files.
async fn security_headers(req: Request, next: Next) -> Response {
    let cacheable = req.uri().path().starts_with("/static/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !cacheable {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn static_file(ct: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, TextError> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        state.store.installed_portals(&state.key),
    )
    .await
    {
        Ok(Ok(_)) => Ok("ready"),
        Ok(Err(e)) => Err(TextError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {e}"),
        )),
        Err(_) => Err(TextError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store: timeout",
        )),
    }
}

async fn metrics_route(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.queue_depth.set(state.runner.queue_depth());
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

//! b24sense-web — the Bitrix24 application server behind `b24sense serve`.
//!
//! It owns the application side of `shared/spec/bitrix24-api.md` §5–§6: the install handler (stores the portal,
//! its tokens and application token, binds `OnVoximplantCallEnd` and `OnAppUninstall`, answers with
//! `BX24.installFinish()`), uninstall (stops work, deletes the portal's secrets), OAuth refresh against the
//! installation's `server_endpoint` ([`oauth::StoreTokenSource`]), the settings page opened in the portal's
//! iframe with its JSON API (signed session token in the page, CSRF token on changes, CSP `frame-ancestors`
//! limited to the portal), live progress of export runs ([`runner`], journaled in the store and resumed after a
//! restart: [`resume`]), continuous sync (events + a periodic catch-up pass), a keep-alive refresh of idle
//! installations ([`keepalive`]), the per-call CSV report from the ledger ([`report`]), `/healthz`, `/readyz`
//! and `/metrics`.
//! Exports themselves are the engine's `run_export`; the store keeps portals, settings and the ledger.

mod error;
pub mod keepalive;
pub mod metrics;
pub mod oauth;
mod page;
mod report;
pub mod resume;
pub mod runner;
pub mod session;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use b24sense_bitrix24::{
    AccessToken, Bitrix24Client, BoxFuture, ClientConfig, Credentials, RatePlan, TokenSource,
};
use b24sense_engine::LateRecordings;
use b24sense_store::{Installation, Portal, PortalSettings, PortalStatus, SecretKey, Store};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use url::Url;

pub use error::Error;
pub use metrics::Metrics;
use oauth::{OAuthClient, RefreshLocks};
use runner::{RunEnv, Runner};
use session::{same_secret, Session, Signer};

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
    /// Uploads in flight per portal.
    pub concurrency: usize,
    /// Catch-up pass for portals with continuous sync.
    pub sync_interval: Duration,
    /// How often to look for calls whose late recording is due for another check.
    pub recheck_interval: Duration,
    /// How long and how often continuous sync checks again for a recording the portal has not attached yet.
    pub late_recordings: LateRecordings,
    /// Accept portals over plain http (only for the local emulator; real portals are https).
    pub allow_http_portals: bool,
    pub rate: RatePlan,
    /// How long a settings-page session lasts.
    pub session_ttl: Duration,
    /// OAuth servers (`host` or `host:port`) an installation's `server_endpoint` may name: the refresh sends the
    /// client secret there, so a forged install must not pick its own. Default: Bitrix24's global and Russian ones.
    pub oauth_servers: Vec<String>,
    /// How often the keep-alive task looks for idle installations.
    pub keepalive_interval: Duration,
    /// Refresh an installation whose tokens were last rotated this long ago (refresh tokens may expire after
    /// 28 days or at first use; `bitrix24-api.md` §6.3 asks for a refresh at least every ~20 days).
    pub keepalive_age: Duration,
    /// A run journaled as running whose heartbeat is older than this belongs to a process that is gone: it is
    /// shown as interrupted and resumed. Must be well above the heartbeat (at most 10 s).
    pub run_stale_after: Duration,
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
            concurrency: 8,
            sync_interval: Duration::from_secs(300),
            recheck_interval: Duration::from_secs(60),
            late_recordings: LateRecordings::default(),
            allow_http_portals: false,
            rate: RatePlan::STANDARD,
            session_ttl: Duration::from_secs(8 * 3600),
            oauth_servers: DEFAULT_OAUTH_SERVERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            keepalive_interval: Duration::from_secs(3600),
            keepalive_age: Duration::from_secs(14 * 86_400),
            // The engine's portal lease lasts as long: a crashed run's portal is free again by then anyway.
            run_stale_after: Duration::from_secs(60),
        }
    }
}

/// Bitrix24's OAuth servers (`bitrix24-api.md` §6.1).
pub const DEFAULT_OAUTH_SERVERS: [&str; 2] = ["oauth.bitrix.info", "oauth.bitrix24.tech"];

struct AppState {
    config: WebConfig,
    store: Store,
    key: SecretKey,
    signer: Signer,
    metrics: Arc<Metrics>,
    runner: Arc<Runner>,
    locks: Arc<RefreshLocks>,
    http: reqwest::Client,
}

/// The application server. Cheap to clone.
#[derive(Clone)]
pub struct AppServer {
    state: Arc<AppState>,
}

impl AppServer {
    pub fn new(config: WebConfig, store: Store, key: SecretKey) -> Result<AppServer, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
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
            .route("/install", post(install))
            .route("/app", post(app_page))
            .route("/events", post(events))
            .route("/api/state", get(api_state))
            .route("/api/settings", post(api_save))
            .route("/api/check", post(api_check))
            .route("/api/export/start", post(api_start))
            .route("/api/export/stop", post(api_stop))
            .route("/api/progress", get(api_progress))
            .route("/api/report", get(api_report))
            .route("/api/users", get(api_users))
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
        let sync = tokio::spawn(sync_loop(self.state.clone(), shutdown.clone()));
        let keepalive = tokio::spawn(keepalive::run(self.state.clone(), shutdown.clone()));
        let resume = tokio::spawn(resume::run(self.state.clone(), shutdown.clone()));
        let stopping = {
            let (state, s) = (self.state.clone(), shutdown.clone());
            tokio::spawn(async move {
                s.cancelled().await;
                resume::stop_runs(&state).await;
            })
        };
        let s = shutdown.clone();
        let r = axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
        shutdown.cancel();
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
        sync_once(&self.state).await
    }

    /// Starts an incremental pass for every idle portal with continuous sync that has a call whose late recording
    /// is due for another check (what the recheck timer does).
    pub async fn recheck_pass(&self) -> usize {
        recheck_once(&self.state).await
    }
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

fn page_lang(l: Option<&str>) -> &'static str {
    match l {
        Some(l) if l.to_ascii_lowercase().starts_with("en") => "en",
        _ => "ru",
    }
}

fn text_error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.to_string(),
    )
        .into_response()
}

/// One trimmed field of a Bitrix24 form post (install or iframe open); absent fields are empty.
fn form_field(f: &BTreeMap<String, String>, k: &str) -> String {
    f.get(k).map(|v| v.trim().to_string()).unwrap_or_default()
}

fn form_map(query: Option<&str>, body: &[u8]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    if let Some(q) = query {
        if let Ok(v) = serde_urlencoded::from_str::<Vec<(String, String)>>(q) {
            m.extend(v);
        }
    }
    if let Ok(v) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
        m.extend(v);
    }
    m
}

fn env(state: &AppState) -> RunEnv {
    RunEnv {
        store: state.store.clone(),
        key: state.key.clone(),
        oauth: OAuthClient {
            client_id: state.config.client_id.clone(),
            client_secret: state.config.client_secret.clone(),
            http: state.http.clone(),
        },
        locks: state.locks.clone(),
        metrics: state.metrics.clone(),
        speechsense_endpoint: state.config.speechsense_endpoint.clone(),
        concurrency: state.config.concurrency,
        rate: state.config.rate,
        late_recordings: state.config.late_recordings,
        stale_after: state.config.run_stale_after,
    }
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
async fn verify_user(
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
            ..ClientConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(20), client.profile())
        .await
        .map_err(|_| "Bitrix24 did not answer".to_string())?
        .map_err(|e| e.to_string())
}

/// The portal's shared REST client (one limiter for its runs and its page requests).
fn portal_client(state: &AppState, portal: &Portal) -> Result<Bitrix24Client, String> {
    state.runner.portal_client(&env(state), portal)
}

/// `https://DOMAIN/rest/` (http only when allowed, for the emulator); `None` for a domain that is not a host.
fn client_endpoint_for(state: &AppState, domain: &str, protocol: Option<&str>) -> Option<Url> {
    let scheme = match protocol {
        Some("0") if state.config.allow_http_portals => "http",
        _ => "https",
    };
    if domain.is_empty() || domain.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let url = Url::parse(&format!("{scheme}://{domain}/rest/")).ok()?;
    // A portal is a DNS name; IP literals and localhost only for the local emulator.
    let public_name = matches!(url.host(), Some(url::Host::Domain(d)) if d.contains('.') && !d.eq_ignore_ascii_case("localhost"));
    (public_name || state.config.allow_http_portals).then_some(url)
}

fn endpoint_allowed(state: &AppState, url: &Url) -> bool {
    url.scheme() == "https" || (url.scheme() == "http" && state.config.allow_http_portals)
}

// ---------------------------------------------------------------------------------------------------------
// Install, events

async fn install(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let f = form_map(query.as_deref(), &body);
    let g = |k: &str| form_field(&f, k);
    // Iframe install (UI applications) or the ONAPPINSTALL event (API-only applications).
    let event = g("event") == "ONAPPINSTALL";
    let (member_id, domain, access, refresh, server, app_token, expires_in, lang) = if event {
        (
            g("auth[member_id]"),
            g("auth[domain]"),
            g("auth[access_token]"),
            g("auth[refresh_token]"),
            g("auth[server_endpoint]"),
            g("auth[application_token]"),
            g("auth[expires_in]"),
            g("data[LANGUAGE_ID]"),
        )
    } else {
        (
            g("member_id"),
            g("DOMAIN"),
            g("AUTH_ID"),
            g("REFRESH_ID"),
            g("SERVER_ENDPOINT"),
            g("APPLICATION_TOKEN"),
            g("AUTH_EXPIRES"),
            g("LANG"),
        )
    };
    let lang = page_lang(Some(&lang));
    let ru = lang == "ru";
    if [&member_id, &domain, &access, &refresh, &server, &app_token]
        .iter()
        .any(|v| v.is_empty())
    {
        return text_error(
            StatusCode::BAD_REQUEST,
            if ru {
                "Не хватает данных установки."
            } else {
                "Installation data is incomplete."
            },
        );
    }
    let client_endpoint = if event {
        Url::parse(&g("auth[client_endpoint]"))
            .ok()
            .filter(|u| endpoint_allowed(&state, u))
    } else {
        client_endpoint_for(&state, &domain, f.get("PROTOCOL").map(String::as_str))
    };
    let Some(client_endpoint) = client_endpoint else {
        return text_error(StatusCode::BAD_REQUEST, "bad DOMAIN / client_endpoint");
    };
    let Some(server_endpoint) = Url::parse(&server)
        .ok()
        .filter(|u| endpoint_allowed(&state, u))
    else {
        return text_error(StatusCode::BAD_REQUEST, "bad SERVER_ENDPOINT");
    };
    let oauth_host = match (server_endpoint.host_str(), server_endpoint.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    if !state
        .config
        .oauth_servers
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&oauth_host))
    {
        tracing::warn!(server = %oauth_host, "install refused: SERVER_ENDPOINT is not a known OAuth server");
        return text_error(
            StatusCode::FORBIDDEN,
            "SERVER_ENDPOINT is not a Bitrix24 OAuth server",
        );
    }
    // An installed portal keeps its domain: a request naming another one cannot take it over.
    if let Ok(Some(p)) = state.store.portal(&state.key, &member_id).await {
        if p.status == PortalStatus::Installed && !p.domain.eq_ignore_ascii_case(&domain) {
            state.metrics.events_rejected.inc();
            return text_error(
                StatusCode::FORBIDDEN,
                "member_id is installed on another domain",
            );
        }
    }
    // The token must work on the portal and belong to an administrator.
    match verify_user(&state, &client_endpoint, &access).await {
        Ok(p) if p.admin => {}
        Ok(_) => {
            return text_error(
                StatusCode::FORBIDDEN,
                if ru {
                    "Установить приложение может только администратор."
                } else {
                    "Only an administrator can install the application."
                },
            )
        }
        Err(e) => {
            tracing::warn!(domain = %domain, error = %e, "install: the portal did not accept the token");
            return text_error(
                StatusCode::FORBIDDEN,
                if ru {
                    "Битрикс24 не подтвердил установку."
                } else {
                    "Bitrix24 did not confirm the installation."
                },
            );
        }
    }
    let expires = expires_in
        .parse::<i64>()
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(3600);
    let inst = Installation {
        member_id: member_id.clone(),
        domain: domain.to_ascii_lowercase(),
        client_endpoint: client_endpoint.to_string(),
        server_endpoint: server_endpoint.to_string(),
        application_token: SecretString::from(app_token),
        access_token: SecretString::from(access),
        refresh_token: SecretString::from(refresh),
        expires_at: Utc::now() + chrono::Duration::seconds(expires),
        lang: Some(lang.to_string()),
    };
    if let Err(e) = state.store.install_portal(&state.key, &inst).await {
        tracing::error!(error = %e, "install: cannot store the portal");
        return text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot store the installation",
        );
    }
    state.metrics.installs.inc();
    tracing::info!(member_id = %member_id, domain = %inst.domain, "application installed");
    // Bind the events (re-binding an existing handler is an idempotent error).
    if let Ok(Some(portal)) = state.store.portal(&state.key, &member_id).await {
        match portal_client(&state, &portal) {
            Ok(client) => {
                let handler = state
                    .config
                    .public_url
                    .join("events")
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                for ev in ["ONVOXIMPLANTCALLEND", "ONAPPUNINSTALL"] {
                    if let Err(e) = client
                        .call("event.bind", json!({"event": ev, "handler": handler}))
                        .await
                    {
                        let msg = e.to_string();
                        if !msg.contains("already binded") {
                            tracing::warn!(event = ev, error = %msg, "install: event.bind failed");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "install: no REST client"),
        }
    }
    if event {
        return (StatusCode::OK, "OK").into_response();
    }
    let title = if ru {
        "b24sense установлен"
    } else {
        "b24sense is installed"
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <script src=\"//api.bitrix24.com/api/v1/\"></script></head><body><p>{title}</p>\
         <script>if (window.BX24) {{ BX24.init(function () {{ BX24.installFinish(); }}); }}</script></body></html>"
    );
    page_response(
        &inst.domain,
        &client_endpoint,
        Html(html).into_response(),
        true,
    )
}

/// Adds the framing policy: only the portal may frame the page.
fn page_response(
    domain: &str,
    client_endpoint: &Url,
    mut resp: Response,
    allow_sdk: bool,
) -> Response {
    let scheme = client_endpoint.scheme();
    let scripts = if allow_sdk {
        "'self' 'unsafe-inline' https://api.bitrix24.com"
    } else {
        "'self'"
    };
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

async fn events(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let f = form_map(None, &body);
    let g = |k: &str| f.get(k).map(String::as_str).unwrap_or("").to_string();
    let member_id = g("auth[member_id]");
    let token = g("auth[application_token]");
    let portal = match state.store.portal(&state.key, &member_id).await {
        Ok(Some(p)) if p.status == PortalStatus::Installed => p,
        _ => {
            state.metrics.events_rejected.inc();
            return text_error(StatusCode::FORBIDDEN, "unknown installation");
        }
    };
    let valid = portal
        .application_token
        .as_ref()
        .is_some_and(|t| same_secret(t.expose_secret(), &token));
    if !valid {
        state.metrics.events_rejected.inc();
        tracing::warn!(member_id = %member_id, "event with a wrong application token rejected");
        return text_error(StatusCode::FORBIDDEN, "wrong application token");
    }
    state.metrics.events_accepted.inc();
    match g("event").to_ascii_uppercase().as_str() {
        "ONAPPUNINSTALL" => {
            state.runner.stop(&member_id);
            state.runner.forget_client(&member_id);
            match state.store.uninstall_portal(&member_id).await {
                Ok(_) => {
                    state.metrics.uninstalls.inc();
                    tracing::info!(member_id = %member_id, "application uninstalled; secrets deleted");
                }
                Err(e) => tracing::error!(member_id = %member_id, error = %e, "uninstall failed"),
            }
        }
        "ONVOXIMPLANTCALLEND" => {
            // The event carries no statistic ID or recording: a run reads the call back (and the ledger skips
            // what is done); an event during a run asks for one more pass.
            if !state.runner.poke(&member_id) {
                if let Err(e) = start_for(&state, portal, "event", true).await {
                    tracing::debug!(member_id = %member_id, reason = %e, "call-end event: no run started");
                }
            }
        }
        other => tracing::debug!(event = other, "event ignored"),
    }
    (StatusCode::OK, "OK").into_response()
}

/// Starts a run with the stored settings; `only_sync`: only when continuous sync is on.
async fn start_for(
    state: &AppState,
    portal: Portal,
    trigger: &str,
    only_sync: bool,
) -> Result<(), String> {
    let lang = page_lang(portal.lang.as_deref());
    let stored = state
        .store
        .settings(&state.key, &portal.member_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            if lang == "ru" {
                "Сначала сохраните настройки.".to_string()
            } else {
                "Save the settings first.".to_string()
            }
        })?;
    if only_sync && !stored.settings.sync_enabled {
        return Err("continuous sync is off".into());
    }
    let api_key = stored.api_key.ok_or_else(|| {
        if lang == "ru" {
            "Укажите API-ключ.".to_string()
        } else {
            "Enter the API key.".to_string()
        }
    })?;
    state
        .runner
        .start(env(state), portal, stored.settings, api_key, trigger, lang)
}

async fn sync_once(state: &Arc<AppState>) -> usize {
    let Ok(portals) = state.store.installed_portals(&state.key).await else {
        return 0;
    };
    let mut started = 0;
    for p in portals {
        if state.runner.is_running(&p.member_id) {
            continue;
        }
        let member = p.member_id.clone();
        if start_for(state, p, "schedule", true).await.is_ok() {
            tracing::info!(member_id = %member, "catch-up pass started");
            started += 1;
        }
    }
    started
}

/// Portals with a call whose late recording is due: an incremental pass each (its first step reads those calls
/// again by ID). The ledger holds the schedule, so it survives restarts and needs no timer per call.
async fn recheck_once(state: &Arc<AppState>) -> usize {
    let due = match state.store.portals_due().await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read which recordings are due for a check");
            return 0;
        }
    };
    let mut started = 0;
    for member in due {
        if state.runner.is_running(&member) {
            continue;
        }
        let Ok(Some(portal)) = state.store.portal(&state.key, &member).await else {
            continue;
        };
        if portal.status != PortalStatus::Installed {
            continue;
        }
        if start_for(state, portal, "recheck", true).await.is_ok() {
            tracing::info!(member_id = %member, "checking late recordings");
            started += 1;
        }
    }
    started
}

async fn sync_loop(state: Arc<AppState>, shutdown: CancellationToken) {
    let start = tokio::time::Instant::now();
    let mut catch_up = tokio::time::interval_at(
        start + state.config.sync_interval,
        state.config.sync_interval,
    );
    let mut recheck = tokio::time::interval_at(
        start + state.config.recheck_interval,
        state.config.recheck_interval,
    );
    // A pass that takes longer than the interval is not followed by a burst of passes.
    catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = catch_up.tick() => { sync_once(&state).await; }
            _ = recheck.tick() => { recheck_once(&state).await; }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The settings page and its API

async fn app_page(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let f = form_map(query.as_deref(), &body);
    let g = |k: &str| form_field(&f, k);
    let lang = page_lang(f.get("LANG").map(String::as_str));
    let ru = lang == "ru";
    let deny =
        |m_ru: &str, m_en: &str| text_error(StatusCode::FORBIDDEN, if ru { m_ru } else { m_en });
    // Only installed portals; everything is checked against what the store holds, never the request's domain.
    let portal = match state.store.portal(&state.key, &g("member_id")).await {
        Ok(Some(p)) if p.status == PortalStatus::Installed => p,
        Ok(_) => {
            return deny(
                "Приложение не установлено на этом портале.",
                "The application is not installed on this portal.",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "settings page: store error");
            return text_error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
        }
    };
    if !portal.domain.eq_ignore_ascii_case(&g("DOMAIN")) {
        return deny(
            "Портал не совпадает с установкой.",
            "The portal does not match the installation.",
        );
    }
    let app_token = g("APPLICATION_TOKEN");
    if !app_token.is_empty()
        && !portal
            .application_token
            .as_ref()
            .is_some_and(|t| same_secret(t.expose_secret(), &app_token))
    {
        return deny("Неверный токен приложения.", "Wrong application token.");
    }
    let Ok(client_endpoint) = Url::parse(&portal.client_endpoint) else {
        return text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored client_endpoint is unusable",
        );
    };
    let user = match verify_user(&state, &client_endpoint, &g("AUTH_ID")).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(member_id = %portal.member_id, error = %e, "settings page: session not confirmed");
            return deny(
                "Битрикс24 не подтвердил сессию. Откройте приложение заново.",
                "Bitrix24 did not confirm the session. Open the application again.",
            );
        }
    };
    if !user.admin {
        return deny(
            "Настройки доступны только администратору портала.",
            "Only a portal administrator can change the settings.",
        );
    }
    // The frame brought a fresh, verified token pair of an administrator: keep it, so an installation whose
    // stored refresh token aged out (idle for weeks) recovers whenever an admin opens the page.
    let refresh_id = g("REFRESH_ID");
    if !refresh_id.is_empty() {
        if let Ok(Some(current)) = state
            .store
            .portal_tokens(&state.key, &portal.member_id)
            .await
        {
            let expires = g("AUTH_EXPIRES")
                .parse::<i64>()
                .ok()
                .filter(|s| *s > 0)
                .unwrap_or(3600);
            let stored = state
                .store
                .rotate_tokens(
                    &state.key,
                    &portal.member_id,
                    current.version,
                    &SecretString::from(g("AUTH_ID")),
                    &SecretString::from(refresh_id),
                    Utc::now() + chrono::Duration::seconds(expires),
                )
                .await;
            if let Err(e) = stored {
                tracing::warn!(member_id = %portal.member_id, error = %e, "could not keep the page's tokens");
            }
        }
    }
    let session = Session {
        m: portal.member_id.clone(),
        u: user.id,
        l: lang.to_string(),
        e: Utc::now().timestamp() + state.config.session_ttl.as_secs() as i64,
    };
    let token = state.signer.sign(&session);
    let csrf = state.signer.csrf(&token);
    let html = page::render(lang, &token, &csrf, &portal.domain);
    page_response(
        &portal.domain,
        &client_endpoint,
        Html(html).into_response(),
        false,
    )
}

/// The session of an API call (`Authorization: Bearer`), the CSRF token for changes, and the portal.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    change: bool,
) -> Result<(Session, Portal), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some(s) = state.signer.check(token, Utc::now().timestamp()) else {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "session expired: open the application again",
        ));
    };
    if change {
        let csrf = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !state.signer.check_csrf(token, csrf) {
            return Err(json_error(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token",
            ));
        }
    }
    match state.store.portal(&state.key, &s.m).await {
        Ok(Some(p)) if p.status == PortalStatus::Installed => Ok((s, p)),
        Ok(_) => Err(json_error(
            StatusCode::FORBIDDEN,
            "the application is not installed",
        )),
        Err(_) => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable",
        )),
    }
}

fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

/// What the form sends (strings, as typed).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct SettingsForm {
    connection_id: String,
    /// Empty = keep the stored key.
    api_key: String,
    language: String,
    since: String,
    users: String,
    min_duration: String,
    direction: Vec<String>,
    mono_policy: String,
    mono_route: String,
    organization_id: String,
    space_id: String,
    project_id: String,
    sync_enabled: bool,
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Parses and validates the form; field → message on errors.
fn read_form(
    f: &SettingsForm,
    lang: &str,
    has_key: bool,
) -> Result<(PortalSettings, Option<SecretString>), BTreeMap<String, String>> {
    let ru = lang != "en";
    let mut errors = BTreeMap::new();
    let users = match b24sense_core::filter::parse_user_ids("users", &f.users) {
        Ok(u) => u,
        Err(_) => {
            errors.insert(
                "users".into(),
                if ru {
                    "ID пользователей Битрикс24 через запятую, например 1, 5, 7."
                } else {
                    "Bitrix24 user IDs separated by commas, e.g. 1, 5, 7."
                }
                .into(),
            );
            Vec::new()
        }
    };
    let min_duration = match f.min_duration.trim() {
        "" => 0,
        v => match v.parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                errors.insert(
                    "min_duration".into(),
                    if ru {
                        "Целое число секунд, например 30."
                    } else {
                        "A whole number of seconds, e.g. 30."
                    }
                    .into(),
                );
                0
            }
        },
    };
    let mono_policy = match f.mono_policy.trim() {
        "route" => format!("route:{}", f.mono_route.trim()),
        "" => "upload".to_string(),
        other => other.to_string(),
    };
    let settings = PortalSettings {
        connection_id: f.connection_id.trim().to_string(),
        language: if f.language.trim().is_empty() {
            "ru-RU".into()
        } else {
            f.language.trim().to_string()
        },
        since: opt(&f.since),
        users,
        min_duration,
        direction: f
            .direction
            .iter()
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect(),
        mono_policy,
        organization_id: opt(&f.organization_id),
        space_id: opt(&f.space_id),
        project_id: opt(&f.project_id),
        sync_enabled: f.sync_enabled,
    };
    if let Err(more) = runner::plan(&settings, lang) {
        for (k, v) in more {
            errors
                .entry(if k == "mono_policy" && f.mono_policy.trim() == "route" {
                    "mono_route".into()
                } else {
                    k
                })
                .or_insert(v);
        }
    }
    let api_key = opt(&f.api_key).map(SecretString::from);
    if api_key.is_none() && !has_key {
        errors.insert(
            "api_key".into(),
            if ru {
                "Укажите API-ключ сервисного аккаунта."
            } else {
                "Enter the service account's API key."
            }
            .into(),
        );
    }
    if errors.is_empty() {
        Ok((settings, api_key))
    } else {
        Err(errors)
    }
}

async fn api_state(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (s, portal) = match authorize(&state, &headers, false).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let stored = state
        .store
        .settings(&state.key, &portal.member_id)
        .await
        .ok()
        .flatten();
    let (settings, has_key) = match stored {
        Some(st) => (Some(st.settings), st.api_key.is_some()),
        None => (None, false),
    };
    Json(json!({
        "lang": s.l, "domain": portal.domain, "saved": settings.is_some(),
        "settings": settings.unwrap_or_default(), "api_key_set": has_key,
        "progress": current_progress(&state, &portal, &s.l).await,
        "token_problem": token_problem(&portal, &s.l),
    }))
    .into_response()
}

async fn api_save(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(form): Json<SettingsForm>,
) -> Response {
    let (s, portal) = match authorize(&state, &headers, true).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let has_key = matches!(state.store.settings(&state.key, &portal.member_id).await, Ok(Some(st)) if st.api_key.is_some());
    match read_form(&form, &s.l, has_key) {
        Err(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"errors": errors})),
        )
            .into_response(),
        Ok((settings, api_key)) => match state
            .store
            .save_settings(&state.key, &portal.member_id, &settings, api_key.as_ref())
            .await
        {
            Ok(()) => Json(json!({"saved": true, "settings": settings, "api_key_set": true}))
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "cannot save settings");
                json_error(StatusCode::SERVICE_UNAVAILABLE, "cannot save the settings")
            }
        },
    }
}

async fn api_check(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(form): Json<SettingsForm>,
) -> Response {
    let (s, portal) = match authorize(&state, &headers, true).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ru = s.l == "ru";
    let mut errors = BTreeMap::new();
    if form.connection_id.trim().is_empty() {
        errors.insert(
            "connection_id",
            if ru {
                "Укажите ID подключения SpeechSense."
            } else {
                "Enter the SpeechSense connection ID."
            },
        );
    }
    let key = match opt(&form.api_key) {
        Some(k) => Some(SecretString::from(k)),
        None => state
            .store
            .settings(&state.key, &portal.member_id)
            .await
            .ok()
            .flatten()
            .and_then(|st| st.api_key),
    };
    if key.is_none() {
        errors.insert(
            "api_key",
            if ru {
                "Укажите API-ключ сервисного аккаунта."
            } else {
                "Enter the service account's API key."
            },
        );
    }
    let Some(key) = key.filter(|_| errors.is_empty()) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"errors": errors})),
        )
            .into_response();
    };
    let (ok, message) = runner::check_connection(
        &state.config.speechsense_endpoint,
        key,
        form.connection_id.trim(),
        &s.l,
    )
    .await;
    Json(json!({"ok": ok, "message": message})).into_response()
}

async fn api_start(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (_, portal) = match authorize(&state, &headers, true).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let member = portal.member_id.clone();
    match start_for(&state, portal, "page", false).await {
        Ok(()) => Json(json!({"started": true, "progress": state.runner.progress(&member)}))
            .into_response(),
        Err(e) => (StatusCode::CONFLICT, Json(json!({"error": e}))).into_response(),
    }
}

async fn api_stop(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (_, portal) = match authorize(&state, &headers, true).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    Json(json!({"stopping": state.runner.stop(&portal.member_id)})).into_response()
}

async fn api_progress(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (s, portal) = match authorize(&state, &headers, false).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    Json(json!({
        "progress": current_progress(&state, &portal, &s.l).await,
        "token_problem": token_problem(&portal, &s.l),
    }))
    .into_response()
}

/// The live progress while this process runs the portal's export, else its last journaled run (another
/// replica's live one, or one whose process is gone: then shown as interrupted).
async fn current_progress(
    state: &AppState,
    portal: &Portal,
    lang: &str,
) -> Option<runner::Progress> {
    if let Some(p) = state.runner.live_progress(&portal.member_id) {
        return Some(p);
    }
    let stored = tokio::time::timeout(
        Duration::from_secs(5),
        state
            .store
            .last_run_progress(&portal.member_id, state.config.run_stale_after),
    )
    .await;
    match stored {
        Ok(Ok(Some(run))) => {
            let p: runner::Progress = serde_json::from_value(run.progress).unwrap_or_default();
            Some(if run.stale {
                p.into_interrupted(lang != "en")
            } else {
                p
            })
        }
        Ok(Ok(None)) => state.runner.progress(&portal.member_id),
        // The store is unreachable: what this process remembers is better than nothing.
        Ok(Err(_)) | Err(_) => state.runner.progress(&portal.member_id),
    }
}

/// What the administrator must do when the OAuth server refused to refresh the portal's tokens.
fn token_problem(portal: &Portal, lang: &str) -> Option<String> {
    let code = portal.refresh_refused.as_deref()?;
    Some(if lang == "en" {
        format!(
            "Bitrix24 refused to renew the application's access ({code}). Open the application in Bitrix24 \
             again or reinstall it; until then exports and continuous sync cannot run."
        )
    } else {
        format!(
            "Битрикс24 отказался продлить доступ приложения ({code}). Откройте приложение в Битрикс24 заново \
             или переустановите его; до этого выгрузка и непрерывная синхронизация не работают."
        )
    })
}

/// The portal's active users for the "List of users" picker (`user.get`, at most 10 pages of 50).
async fn api_users(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (_, portal) = match authorize(&state, &headers, false).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let client = match portal_client(&state, &portal) {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let mut users = Vec::new();
    let mut start = 0u64;
    for _ in 0..10 {
        let r = match client
            .call(
                "user.get",
                json!({"FILTER": {"ACTIVE": true}, "SORT": "ID", "ORDER": "ASC", "start": start}),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return json_error(StatusCode::BAD_GATEWAY, &e.to_string()),
        };
        if let Some(rows) = r.result.as_array() {
            for u in rows {
                let id = u.get("ID").and_then(b24sense_core::lenient::id);
                let name = [u.get("NAME"), u.get("LAST_NAME")]
                    .iter()
                    .filter_map(|v| v.and_then(|v| v.as_str()))
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                if let Some(id) = id {
                    users.push(json!({"id": id, "name": name}));
                }
            }
        }
        match r.next {
            Some(n) => start = n,
            None => break,
        }
    }
    Json(json!({"users": users})).into_response()
}

/// The per-call report: every ledger row of the portal as CSV, read page by page and streamed.
async fn api_report(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (_, portal) = match authorize(&state, &headers, false).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"b24sense-report.csv\"",
            ),
        ],
        axum::body::Body::from_stream(report::csv_stream(state.store.clone(), portal.member_id)),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(
        Duration::from_secs(5),
        state.store.installed_portals(&state.key),
    )
    .await
    {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => text_error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {e}")),
        Err(_) => text_error(StatusCode::SERVICE_UNAVAILABLE, "store: timeout"),
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

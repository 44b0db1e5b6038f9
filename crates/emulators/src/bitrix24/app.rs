//! The application flow of the emulated portal (`bitrix24-api.md` §5, §6): one local application with an
//! install POST to the application's handler, the OAuth token endpoint (`GET /oauth/token/`, refresh-token
//! rotation: a used refresh token and its access token die; expired access tokens answer `expired_token`),
//! `event.bind`/`event.get`/`event.unbind`, event delivery to bound handlers (form-encoded, at most once,
//! only after the installation is finished), `app.info` with `INSTALLED`, and uninstall.
//!
//! The emulator is its own OAuth server: `server_endpoint` is `{base}oauth/rest/`, so the token URL
//! (server origin + `/oauth/token/`) is on the same listener.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::Response;
use serde_json::{json, Value};
use std::sync::Arc;

use super::methods::{Ctx, MethodOk};
use super::params::P;
use super::{json_response, ApiError, Bitrix24Emulator, Inner};

/// The local application's credentials (what the admin copies from "Developer resources").
pub const CLIENT_ID: &str = "local.0000000emulator.00000001";
pub const CLIENT_SECRET: &str = "emulator-client-secret-0001";
const SCOPE: &str = "telephony,crm,user,disk,imopenlines,im";

struct Token {
    user_id: u64,
    expires: Instant,
    /// The refresh token issued with it: using that refresh token revokes this access token too.
    refresh: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    id: u64,
    event: String,
    handler: String,
}

#[derive(Default)]
struct AppInner {
    access: HashMap<String, Token>,
    /// refresh token → user id
    refresh: HashMap<String, u64>,
    bindings: Vec<Binding>,
    next_binding: u64,
    installed: bool,
    refreshes: u64,
    refresh_rejected: u64,
}

/// The application's state on the portal.
pub(crate) struct AppState {
    member_id: String,
    application_token: String,
    access_ttl: Mutex<Duration>,
    state: Mutex<AppInner>,
}

impl AppState {
    pub(crate) fn new(seed: u64) -> AppState {
        AppState {
            member_id: format!("{:032x}", u128::from(seed) * 0x9e37_79b9_7f4a_7c15 + 0xa223),
            application_token: format!("{:032x}", u128::from(seed) * 0x51_610f_ef00 + 0x51),
            access_ttl: Mutex::new(Duration::from_secs(3600)),
            state: Mutex::new(AppInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AppInner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ttl(&self) -> Duration {
        *self.access_ttl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new access/refresh pair for `user_id`.
    fn issue(&self, user_id: u64) -> (String, String) {
        let access = random_token();
        let refresh = random_token();
        let mut s = self.lock();
        s.access.insert(
            access.clone(),
            Token {
                user_id,
                expires: Instant::now() + self.ttl(),
                refresh: refresh.clone(),
            },
        );
        s.refresh.insert(refresh.clone(), user_id);
        (access, refresh)
    }
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn domain(inner: &Inner) -> String {
    inner
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

fn client_endpoint(inner: &Inner) -> String {
    format!("{}rest/", inner.base)
}

fn server_endpoint(inner: &Inner) -> String {
    format!("{}oauth/rest/", inner.base)
}

/// Checks an OAuth access token issued by this emulator; `None` for tokens it never issued (the caller
/// then applies the static token list).
pub(crate) fn authorize(inner: &Inner, token: &str) -> Option<Result<Ctx, ApiError>> {
    let s = inner.app.lock();
    let t = s.access.get(token)?;
    if Instant::now() >= t.expires {
        return Some(Err(ApiError::new(
            401,
            "expired_token",
            "The access token provided has expired.",
        )));
    }
    Some(Ok(Ctx {
        cred: format!("app:{}", t.user_id),
        user_id: t.user_id,
        webhook: false,
        download_auth: token.to_string(),
    }))
}

/// Whether `auth` of a `DOWNLOAD_URL` is a live access token issued by this emulator.
pub(crate) fn download_auth_ok(inner: &Inner, auth: &str) -> bool {
    matches!(authorize(inner, auth), Some(Ok(_)))
}

/// The application methods; `None` for every other method.
pub(crate) fn dispatch(
    inner: &Inner,
    ctx: &Ctx,
    method: &str,
    p: &P,
) -> Option<Result<MethodOk, ApiError>> {
    let plain = |v: Value| {
        Ok(MethodOk {
            result: v,
            total: None,
            next: None,
        })
    };
    let app_only = || {
        Err(ApiError::new(
            401,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method",
        ))
    };
    let text = |name: &str| p.get_ci(name).and_then(P::as_text).unwrap_or_default();
    Some(match method {
        "event.bind" | "event.unbind" | "event.get" if ctx.webhook => app_only(),
        "event.bind" => {
            let event = text("event").to_ascii_uppercase();
            let handler = text("handler");
            if event.is_empty() {
                return Some(Err(ApiError::argument("event")));
            }
            let host = url::Url::parse(&handler)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string));
            match host {
                Some(h) if h.contains('.') => {}
                _ => {
                    return Some(Err(ApiError::new(
                        400,
                        "ERROR_WRONG_HANDLER_URL",
                        "Wrong handler URL",
                    )))
                }
            }
            let mut s = inner.app.lock();
            if s.bindings
                .iter()
                .any(|b| b.event == event && b.handler == handler)
            {
                return Some(Err(ApiError::new(
                    400,
                    "ERROR_CORE",
                    "Unable to set event handler: Handler already binded",
                )));
            }
            s.next_binding += 1;
            let id = s.next_binding;
            s.bindings.push(Binding { id, event, handler });
            plain(json!(true))
        }
        "event.unbind" => {
            let event = text("event").to_ascii_uppercase();
            let handler = text("handler");
            let mut s = inner.app.lock();
            let before = s.bindings.len();
            s.bindings
                .retain(|b| !(b.event == event && (handler.is_empty() || b.handler == handler)));
            plain(json!({"count": before - s.bindings.len()}))
        }
        "event.get" => {
            let s = inner.app.lock();
            plain(Value::Array(
                s.bindings
                    .iter()
                    .map(|b| json!({"event": b.event, "handler": b.handler, "auth_type": "0", "offline": 0}))
                    .collect(),
            ))
        }
        // Tokens from the application flow see the installation state; static test tokens keep `methods.rs`.
        "app.info" if ctx.cred.starts_with("app:") => {
            let installed = inner.app.lock().installed;
            plain(
                json!({"ID": "1", "CODE": CLIENT_ID, "VERSION": "1", "STATUS": "L", "INSTALLED": installed,
                "PAYMENT_EXPIRED": "N", "DAYS": null, "LANGUAGE_ID": "ru", "LICENSE": "ru_project",
                "LICENSE_TYPE": "project", "LICENSE_FAMILY": "project"}),
            )
        }
        _ => return None,
    })
}

/// `GET /oauth/token/?grant_type=refresh_token&client_id=…&client_secret=…&refresh_token=…`
pub(crate) async fn oauth_token(
    State(inner): State<Arc<Inner>>,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    let p = super::params::from_form(query.as_deref().unwrap_or(""));
    let text = |name: &str| p.get_ci(name).and_then(P::as_text).unwrap_or_default();
    let err = |status: u16, code: &str, desc: &str| {
        json_response(
            &inner,
            status,
            &json!({"error": code, "error_description": desc}),
        )
    };
    if text("client_id") != CLIENT_ID || text("client_secret") != CLIENT_SECRET {
        return err(401, "invalid_client", "Invalid client credentials");
    }
    if text("grant_type") != "refresh_token" {
        return err(400, "invalid_request", "Unsupported grant_type");
    }
    let old = text("refresh_token");
    let user_id = {
        let mut s = inner.app.lock();
        match s.refresh.remove(&old) {
            Some(u) => {
                // Rotation: the used refresh token and the access token issued with it are gone.
                s.access.retain(|_, t| t.refresh != old);
                s.refreshes += 1;
                u
            }
            None => {
                s.refresh_rejected += 1;
                drop(s);
                return err(400, "invalid_grant", "Invalid grant");
            }
        }
    };
    let (access, refresh) = inner.app.issue(user_id);
    let ttl = inner.app.ttl().as_secs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json_response(
        &inner,
        200,
        &json!({
            "access_token": access, "refresh_token": refresh, "expires_in": ttl, "expires": now + ttl,
            "client_endpoint": client_endpoint(&inner), "server_endpoint": server_endpoint(&inner),
            "domain": "oauth.bitrix.info", "member_id": inner.app.member_id, "scope": SCOPE,
            "status": "L", "user_id": user_id,
        }),
    )
}

/// `GET /_emulator/app_frame?handler=URL&lang=ru`: the portal's page that opens the application — a header
/// like the portal's and an iframe that receives the placement POST (fresh tokens of user 1), exactly as
/// Bitrix24 opens an application. For browser tests; the iframe's parent is the portal's origin.
pub(crate) async fn app_frame(
    State(inner): State<Arc<Inner>>,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    let p = super::params::from_form(query.as_deref().unwrap_or(""));
    let text = |name: &str| p.get_ci(name).and_then(P::as_text).unwrap_or_default();
    let handler = text("handler");
    let lang = match text("lang").as_str() {
        "" => "ru".to_string(),
        l => l.to_string(),
    };
    if url::Url::parse(&handler).is_err() {
        return json_response(&inner, 400, &json!({"error": "handler must be a URL"}));
    }
    let req = frame_request(&inner, inner.config.webhook_user, &lang);
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let inputs: String = req
        .form
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            )
        })
        .collect();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Bitrix24 emulator</title></head>\
         <body style=\"margin:0;background:#eef2f4;font:14px Arial,sans-serif\">\
         <div style=\"height:48px;background:#2fc6f6;color:#fff;display:flex;align-items:center;padding:0 20px;font-size:18px\">\
         Bitrix24 · {domain} · b24sense</div>\
         <iframe name=\"app\" id=\"app\" style=\"width:100%;height:1500px;border:0;display:block\"></iframe>\
         <form id=\"open\" method=\"POST\" target=\"app\" action=\"{action}\">{inputs}</form>\
         <script>document.getElementById('open').submit();</script></body></html>",
        domain = esc(&domain(&inner)),
        action = esc(&req.url(&handler)),
    );
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .body(Body::from(html))
        .unwrap_or_default()
}

fn frame_request(inner: &Inner, user_id: u64, lang: &str) -> FrameRequest {
    let (access, refresh) = inner.app.issue(user_id);
    let ttl = inner.app.ttl().as_secs();
    let s = |v: &str| v.to_string();
    FrameRequest {
        query: vec![
            (s("DOMAIN"), domain(inner)),
            (s("PROTOCOL"), s("0")),
            (s("LANG"), s(lang)),
            (s("APP_SID"), random_token()),
        ],
        form: vec![
            (s("AUTH_ID"), access),
            (s("AUTH_EXPIRES"), ttl.to_string()),
            (s("REFRESH_ID"), refresh),
            (s("SERVER_ENDPOINT"), server_endpoint(inner)),
            (s("APPLICATION_TOKEN"), inner.app.application_token.clone()),
            (s("APPLICATION_SCOPE"), s(SCOPE)),
            (s("member_id"), inner.app.member_id.clone()),
            (s("status"), s("L")),
            (s("PLACEMENT"), s("DEFAULT")),
            (s("PLACEMENT_OPTIONS"), s("{}")),
        ],
    }
}

/// What the application's handler answered to the install POST.
#[derive(Debug, Clone)]
pub struct AppInstall {
    pub status: u16,
    pub body: String,
    /// The answer called `BX24.installFinish()`: the portal now counts the application as installed.
    pub installed: bool,
}

/// The fields of an iframe POST (`bitrix24-api.md` §6.5): the query string and the form body.
#[derive(Debug, Clone)]
pub struct FrameRequest {
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
}

impl FrameRequest {
    /// `handler?query`
    pub fn url(&self, handler: &str) -> String {
        let q = serde_urlencoded::to_string(&self.query).unwrap_or_default();
        let sep = if handler.contains('?') { '&' } else { '?' };
        format!("{handler}{sep}{q}")
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

impl Bitrix24Emulator {
    /// `(client_id, client_secret)` of the emulated local application.
    pub fn app_credentials(&self) -> (&'static str, &'static str) {
        (CLIENT_ID, CLIENT_SECRET)
    }

    /// The installation's `member_id`.
    pub fn app_member_id(&self) -> String {
        self.inner.app.member_id.clone()
    }

    /// The installation's `application_token` (what events carry).
    pub fn app_application_token(&self) -> String {
        self.inner.app.application_token.clone()
    }

    /// The portal's domain as the application sees it (`127.0.0.1:PORT`).
    pub fn app_domain(&self) -> String {
        domain(&self.inner)
    }

    /// `server_endpoint` (`{base}oauth/rest/`); the token URL is `{base}oauth/token/`.
    pub fn app_server_endpoint(&self) -> String {
        server_endpoint(&self.inner)
    }

    /// Whether the installation was finished (`BX24.installFinish()`), as `app.info.INSTALLED` says.
    pub fn app_installed(&self) -> bool {
        self.inner.app.lock().installed
    }

    /// Lifetime of access tokens issued from now on (default 3600 s).
    pub fn set_access_token_ttl(&self, ttl: Duration) {
        *self
            .inner
            .app
            .access_ttl
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = ttl;
    }

    /// Makes every access token issued so far expire now (REST then answers `expired_token`).
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for t in self.inner.app.lock().access.values_mut() {
            t.expires = now;
        }
    }

    /// `(successful refresh grants, rejected refresh grants)` so far.
    pub fn oauth_refreshes(&self) -> (u64, u64) {
        let s = self.inner.app.lock();
        (s.refreshes, s.refresh_rejected)
    }

    /// Bound handlers as `(EVENT, handler URL)`.
    pub fn event_bindings(&self) -> Vec<(String, String)> {
        self.inner
            .app
            .lock()
            .bindings
            .iter()
            .map(|b| (b.event.clone(), b.handler.clone()))
            .collect()
    }

    /// The POST Bitrix24 sends when a user opens the application (placement `DEFAULT`) or installs it:
    /// a fresh token pair for `user_id`.
    pub fn app_frame_request(&self, user_id: u64, lang: &str) -> FrameRequest {
        frame_request(&self.inner, user_id, lang)
    }

    /// `{base}_emulator/app_frame?handler=…&lang=…`: the portal page that opens the application in an iframe.
    pub fn app_frame_url(&self, handler: &str, lang: &str) -> String {
        let q =
            serde_urlencoded::to_string([("handler", handler), ("lang", lang)]).unwrap_or_default();
        format!("{}_emulator/app_frame?{q}", self.inner.base)
    }

    /// Installs the application: POSTs the install form to `install_url` as the admin (user 1). The
    /// installation counts as finished when the answer calls `BX24.installFinish()` (what the real page's
    /// script would do in the browser).
    pub async fn install_app(&self, install_url: &str, lang: &str) -> std::io::Result<AppInstall> {
        let req = self.app_frame_request(self.inner.config.webhook_user, lang);
        let resp = http()
            .post(req.url(install_url))
            .form(&req.form)
            .send()
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(std::io::Error::other)?;
        let installed = status == 200 && body.contains("installFinish");
        if installed {
            self.inner.app.lock().installed = true;
        }
        Ok(AppInstall {
            status,
            body,
            installed,
        })
    }

    /// Sends `event` with `data` to every handler bound to it, at most once each, form-encoded as the
    /// portal's queue does. Returns the handlers' HTTP statuses (0 = unreachable). Nothing is sent before
    /// the installation is finished.
    pub async fn send_event(&self, event: &str, data: &[(String, String)]) -> Vec<u16> {
        let event = event.to_ascii_uppercase();
        let targets: Vec<Binding> = {
            let s = self.inner.app.lock();
            if !s.installed {
                return Vec::new();
            }
            s.bindings
                .iter()
                .filter(|b| b.event == event)
                .cloned()
                .collect()
        };
        let mut out = Vec::new();
        for b in targets {
            let (access, _refresh) = self.inner.app.issue(self.inner.config.webhook_user);
            let form = self.event_form(&event, b.id, data, Some(&access));
            out.push(post_form(&b.handler, &form).await);
        }
        out
    }

    fn event_form(
        &self,
        event: &str,
        handler_id: u64,
        data: &[(String, String)],
        access: Option<&str>,
    ) -> Vec<(String, String)> {
        let s = |v: &str| v.to_string();
        let mut form = vec![
            (s("event"), s(event)),
            (s("event_handler_id"), handler_id.to_string()),
        ];
        for (k, v) in data {
            form.push((format!("data[{k}]"), v.clone()));
        }
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        form.push((s("ts"), ts.to_string()));
        if let Some(a) = access {
            form.push((s("auth[access_token]"), s(a)));
            form.push((
                s("auth[expires_in]"),
                self.inner.app.ttl().as_secs().to_string(),
            ));
            form.push((s("auth[scope]"), s(SCOPE)));
        }
        form.extend([
            (s("auth[domain]"), domain(&self.inner)),
            (s("auth[server_endpoint]"), server_endpoint(&self.inner)),
            (s("auth[status]"), s("L")),
            (s("auth[client_endpoint]"), client_endpoint(&self.inner)),
            (s("auth[member_id]"), self.inner.app.member_id.clone()),
            (
                s("auth[application_token]"),
                self.inner.app.application_token.clone(),
            ),
        ]);
        form
    }

    /// `ONVOXIMPLANTCALLEND` for the call with statistic `ID` `call_stat_id` (its `data` as §5.3 lists:
    /// no statistic `ID`, no recording fields). `None` when there is no such call.
    pub async fn send_call_end(&self, call_stat_id: u64) -> Option<Vec<u16>> {
        let row = self
            .call_rows()
            .into_iter()
            .find(|r| field(r, "ID") == call_stat_id.to_string())?;
        let keys = [
            "CALL_ID",
            "CALL_TYPE",
            "PHONE_NUMBER",
            "PORTAL_NUMBER",
            "PORTAL_USER_ID",
            "CALL_DURATION",
            "CALL_START_DATE",
            "COST",
            "COST_CURRENCY",
            "CALL_FAILED_CODE",
            "CALL_FAILED_REASON",
            "CRM_ACTIVITY_ID",
        ];
        let data: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.to_string(), field(&row, k)))
            .collect();
        Some(self.send_event("ONVOXIMPLANTCALLEND", &data).await)
    }

    /// Uninstalls the application: `ONAPPUNINSTALL` (no tokens, `data[CLEAN]`) goes to its handlers, then
    /// every token and binding is gone. Returns the handlers' statuses.
    pub async fn uninstall_app(&self, clean: bool) -> Vec<u16> {
        let targets: Vec<Binding> = {
            let mut s = self.inner.app.lock();
            let t = s
                .bindings
                .iter()
                .filter(|b| b.event == "ONAPPUNINSTALL")
                .cloned()
                .collect();
            s.installed = false;
            s.bindings.clear();
            s.access.clear();
            s.refresh.clear();
            t
        };
        let data = vec![
            ("LANGUAGE_ID".to_string(), "ru".to_string()),
            (
                "CLEAN".to_string(),
                if clean { "1" } else { "0" }.to_string(),
            ),
        ];
        let mut out = Vec::new();
        for b in targets {
            let form = self.event_form("ONAPPUNINSTALL", b.id, &data, None);
            out.push(post_form(&b.handler, &form).await);
        }
        out
    }
}

fn field(row: &Value, key: &str) -> String {
    match row.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => if *b { "1" } else { "0" }.to_string(),
        _ => String::new(),
    }
}

async fn post_form(url: &str, form: &[(String, String)]) -> u16 {
    match http().post(url).form(form).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

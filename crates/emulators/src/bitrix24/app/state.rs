//! The application's state on the portal ([`AppState`]): issued access and refresh tokens, event bindings and
//! whether the installation is finished; checking the tokens it issued; and what tests read and set on it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::bitrix24::emulator::Bitrix24Emulator;
use crate::bitrix24::error::ApiError;
use crate::bitrix24::methods::Ctx;
use crate::bitrix24::state::PortalState;

/// The local application's credentials (what the admin copies from "Developer resources").
pub const CLIENT_ID: &str = "local.0000000emulator.00000001";
pub const CLIENT_SECRET: &str = "emulator-client-secret-0001";
pub(super) const SCOPE: &str = "telephony,crm,user,disk,imopenlines,im";

pub(super) struct Token {
    user_id: u64,
    expires: Instant,
    /// The refresh token issued with it: using that refresh token revokes this access token too.
    pub(super) refresh: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Binding {
    pub(super) id: u64,
    pub(super) event: String,
    pub(super) handler: String,
}

#[derive(Default)]
pub(super) struct AppInner {
    pub(super) access: HashMap<String, Token>,
    /// refresh token → user id
    pub(super) refresh: HashMap<String, u64>,
    pub(super) bindings: Vec<Binding>,
    pub(super) next_binding: u64,
    pub(super) installed: bool,
    pub(super) refreshes: u64,
    pub(super) refresh_rejected: u64,
    /// The iframe POST also carries the undocumented `APPLICATION_TOKEN`, `SERVER_ENDPOINT` and
    /// `APPLICATION_SCOPE` (some portals send them; off by default, as Bitrix24 documents the frame).
    pub(super) frame_extras: bool,
}

/// The application's state on the portal.
pub(crate) struct AppState {
    pub(super) member_id: String,
    pub(super) application_token: String,
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

    pub(super) fn lock(&self) -> MutexGuard<'_, AppInner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn ttl(&self) -> Duration {
        *self.access_ttl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new access/refresh pair for `user_id`.
    pub(super) fn issue(&self, user_id: u64) -> (String, String) {
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

pub(super) fn random_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The portal's domain as the application sees it (`127.0.0.1:PORT`).
pub(super) fn domain(inner: &PortalState) -> String {
    inner
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

pub(super) fn client_endpoint(inner: &PortalState) -> String {
    format!("{}rest/", inner.base)
}

pub(super) fn server_endpoint(inner: &PortalState) -> String {
    format!("{}oauth/rest/", inner.base)
}

pub(crate) fn authorize(inner: &PortalState, token: &str) -> Option<Result<Ctx, ApiError>> {
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
pub(crate) fn download_auth_ok(inner: &PortalState, auth: &str) -> bool {
    matches!(authorize(inner, auth), Some(Ok(_)))
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

    /// Whether the iframe POST also carries the undocumented `APPLICATION_TOKEN`, `SERVER_ENDPOINT` and
    /// `APPLICATION_SCOPE` fields (some portals send them). Default: only the documented fields.
    pub fn set_frame_extras(&self, on: bool) {
        self.inner.app.lock().frame_extras = on;
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
}

//! The live fault state of one emulator ([`FaultState`]): counters, expired tokens and the window start, and the
//! decision for each request ([`Verdict`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use serde_json::json;

use super::config::{kind, FaultConfig};
use super::responses::{expired_token, html_502, json_error, malformed_json};
use crate::bitrix24::clock::now_unix;
use crate::bitrix24::methods::normalize_method;
use crate::bitrix24::rest::bearer_token;

/// What the fault layer decided for one request.
pub(crate) enum Verdict {
    /// Serve normally.
    Pass,
    /// Serve normally, then cut the body after half its length.
    Cut(&'static str),
    /// Answer this instead of serving.
    Answer(&'static str, Response<Body>),
    /// Close the connection without an answer (FIN).
    Drop(&'static str),
    /// Reset the connection without an answer (RST).
    Reset(&'static str),
}

/// Where a request goes, as far as faults care.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// `/rest/{uid}/{secret}/{method}` or `/rest/{method}` (OAuth when `token` is `Some`).
    Method {
        method: String,
        token: Option<String>,
    },
    /// `/rest/download.json` or `/records/*`.
    Download {
        rest: bool,
    },
    Other,
}

fn route(req: &Request<hyper::body::Incoming>) -> Route {
    let path = req.uri().path();
    if path.starts_with("/records/") {
        return Route::Download { rest: false };
    }
    let Some(rest) = path.strip_prefix("/rest/") else {
        return Route::Other;
    };
    if normalize_method(rest) == "download" {
        return Route::Download { rest: true };
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (method, token) = match segments.as_slice() {
        [_, _, method] => (method, None),
        [method] => (method, Some(request_token(req).unwrap_or_default())),
        _ => return Route::Other,
    };
    Route::Method {
        method: normalize_method(method),
        token,
    }
}

/// The OAuth token of a request: `Authorization: Bearer`, or `auth` / `access_token` in the query.
fn request_token(req: &Request<hyper::body::Incoming>) -> Option<String> {
    if let Some(t) = bearer_token(req.headers()) {
        return Some(t);
    }
    let query = req.uri().query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("auth") || k.eq_ignore_ascii_case("access_token"))
        .map(|(_, v)| v)
}

/// The live fault state of one emulator.
pub(crate) struct FaultState {
    config: Mutex<FaultConfig>,
    /// Requests seen since the faults were set (for the `*_every` faults).
    counter: AtomicU64,
    /// OAuth REST requests since the faults were set (for `expire_token_at`).
    oauth_requests: AtomicU64,
    set_at: Mutex<Instant>,
    expired_tokens: Mutex<HashSet<String>>,
}

/// Takes one from a "next N" count.
fn take(n: &mut u32) -> bool {
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}

/// Whether the `n`-th request is hit by an "every k-th" fault.
fn every(k: Option<u64>, n: u64) -> bool {
    k.is_some_and(|k| k > 0 && n.is_multiple_of(k))
}

impl FaultState {
    pub(crate) fn new(config: FaultConfig) -> Self {
        FaultState {
            config: Mutex::new(config),
            counter: AtomicU64::new(0),
            oauth_requests: AtomicU64::new(0),
            set_at: Mutex::new(Instant::now()),
            expired_tokens: Mutex::new(HashSet::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FaultConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired_tokens(&self) -> MutexGuard<'_, HashSet<String>> {
        self.expired_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the settings and restarts every counter (expired tokens stay expired).
    pub(crate) fn set(&self, config: FaultConfig) {
        *self.lock() = config;
        self.counter.store(0, Ordering::Relaxed);
        self.oauth_requests.store(0, Ordering::Relaxed);
        *self.set_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// The settings as they stand (with "next N" counts used up so far).
    pub(crate) fn current(&self) -> FaultConfig {
        self.lock().clone()
    }

    pub(crate) fn slow_download(&self) -> Option<Duration> {
        self.lock().slow_download
    }

    pub(crate) fn vanished(&self, call_id: u64) -> bool {
        self.lock().vanished.contains(&call_id)
    }

    /// Decides what happens to one request (not `/_emulator/*`).
    pub(crate) fn decide(&self, req: &Request<hyper::body::Incoming>) -> Verdict {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let route = route(req);
        let in_window = {
            let set_at = *self.set_at.lock().unwrap_or_else(|e| e.into_inner());
            move |w: Duration| set_at.elapsed() < w
        };
        let mut c = self.lock();
        if every(c.drop_connection_every, n) {
            return Verdict::Drop(kind::DROP_CONNECTION);
        }
        if take(&mut c.reset_connection_next) {
            return Verdict::Reset(kind::RESET_CONNECTION);
        }
        if every(c.html_502_every, n) {
            return Verdict::Answer(kind::HTML_502, html_502());
        }
        let is_rest = matches!(route, Route::Method { .. } | Route::Download { rest: true });
        if is_rest && (take(&mut c.query_limit_next) || c.query_limit_for.is_some_and(in_window)) {
            return Verdict::Answer(
                kind::QUERY_LIMIT,
                json_error(503, "QUERY_LIMIT_EXCEEDED", "Too many requests", None),
            );
        }
        match route {
            Route::Method { method, token } => self.decide_method(&mut c, &method, token),
            Route::Download { rest } => {
                // A `DOWNLOAD_URL` dies with the access token it embeds.
                let expired =
                    rest && request_token(req).is_some_and(|t| self.expired_tokens().contains(&t));
                if expired {
                    return Verdict::Answer(kind::EXPIRED_TOKEN, expired_token());
                }
                if c.cut_download_next > 0 {
                    Verdict::Cut(kind::CUT_DOWNLOAD)
                } else {
                    Verdict::Pass
                }
            }
            Route::Other => Verdict::Pass,
        }
    }

    /// The faults of a REST method request, in order.
    fn decide_method(&self, c: &mut FaultConfig, method: &str, token: Option<String>) -> Verdict {
        if take(&mut c.html_502_next) {
            return Verdict::Answer(kind::HTML_502, html_502());
        }
        if take(&mut c.internal_error_next) {
            return Verdict::Answer(
                kind::INTERNAL_ERROR,
                json_error(500, "INTERNAL_SERVER_ERROR", "Internal server error", None),
            );
        }
        if let Some((m, times)) = &mut c.operation_time_limit {
            if m == method && take(times) {
                let reset_at = (now_unix() + 1.0).ceil();
                let time = json!({"operating_reset_at": reset_at as i64, "operating": 480.0});
                return Verdict::Answer(
                    kind::OPERATION_TIME_LIMIT,
                    json_error(
                        429,
                        "OPERATION_TIME_LIMIT",
                        "Method is blocked due to operation time limit.",
                        Some(time),
                    ),
                );
            }
        }
        if let Some(token) = token {
            let k = self.oauth_requests.fetch_add(1, Ordering::Relaxed) + 1;
            let mut expired = self.expired_tokens();
            if c.expire_token_at == Some(k) && !token.is_empty() {
                expired.insert(token.clone());
            }
            if expired.contains(&token) {
                return Verdict::Answer(kind::EXPIRED_TOKEN, expired_token());
            }
        }
        if take(&mut c.malformed_json_next) {
            return Verdict::Answer(kind::MALFORMED_JSON, malformed_json());
        }
        if take(&mut c.cut_rest_next) {
            return Verdict::Cut(kind::CUT_REST);
        }
        Verdict::Pass
    }

    /// A download answer to cut: uses up one `cut_download_next` only when there is a body to cut.
    pub(crate) fn take_download_cut(&self) -> bool {
        take(&mut self.lock().cut_download_next)
    }
}

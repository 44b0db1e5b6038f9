//! Fault injection for the Bitrix24 emulator: what a test asks for ([`FaultConfig`]) and the state that applies it
//! to each request (counters, expired tokens, the window start).
//!
//! Faults are decided per HTTP request before the portal logic runs (so an injected 503 costs no bucket token and
//! no operating time), except cut bodies, which wrap the portal's real answer, and vanished recordings, which the
//! routes and `disk.file.get` ask about.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use serde_json::json;

/// Injected faults. Counters run over every request except `/_emulator/*`; "next N" counts are used up as they
/// fire (and restart with [`Bitrix24Emulator::set_faults`](super::Bitrix24Emulator::set_faults)).
/// Construct with `FaultConfig { query_limit_next: 3, ..Default::default() }` or the `with_*` builders;
/// new kinds of faults are added as new fields that default to off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Every n-th request gets the proxy's HTML 502 page.
    pub html_502_every: Option<u64>,
    /// Every n-th request has its connection closed without a response.
    pub drop_connection_every: Option<u64>,
    /// Delay per 64 KiB of a recording.
    pub slow_download: Option<Duration>,
    /// The next N requests to `/rest/*` (methods, batches and `download.json`) answer 503 `QUERY_LIMIT_EXCEEDED`.
    pub query_limit_next: u32,
    /// Every `/rest/*` request answers 503 `QUERY_LIMIT_EXCEEDED` for this long after the faults were set.
    pub query_limit_for: Option<Duration>,
    /// `(method, times)`: the next `times` REST requests *of this method* (the request's own method — `batch`
    /// for a batch; sub-commands are not affected) answer 429 `OPERATION_TIME_LIMIT`, with
    /// `time.operating_reset_at` the next whole second + 1, so a client waits about a second.
    pub operation_time_limit: Option<(String, u32)>,
    /// The next N REST method requests answer 500 `INTERNAL_SERVER_ERROR` (JSON envelope).
    pub internal_error_next: u32,
    /// The next N REST method requests answer the proxy's HTML 502 page.
    pub html_502_next: u32,
    /// The n-th OAuth REST request (1-based, counted from when the faults were set; webhook requests neither
    /// count nor are affected) finds its access token expired: it and every later request with that token answer
    /// 401 `expired_token` — `DOWNLOAD_URL`s that embed it too (`/rest/download.json?auth=…`), as on a real portal.
    /// A client must refresh to a different valid token (and re-resolve its download links).
    pub expire_token_at: Option<u64>,
    /// The next N requests (any route) have their TCP connection reset (RST, `SO_LINGER` 0) without a response.
    pub reset_connection_next: u32,
    /// The next N REST method answers announce their full `Content-Length` and close the connection after half
    /// the body.
    pub cut_rest_next: u32,
    /// The next N recording downloads (`/records/*`, `/rest/download.json`) that would succeed announce their
    /// full `Content-Length` and close the connection after half the bytes.
    pub cut_download_next: u32,
    /// The next N REST method requests answer 200 with a JSON content type and a body that is not JSON.
    pub malformed_json_next: u32,
    /// Statistic `ID`s of calls whose recordings are gone: 404 on `/records/*` and `/rest/download.json`,
    /// `ERROR_NOT_FOUND` from `disk.file.get`.
    pub vanished: BTreeSet<u64>,
}

impl FaultConfig {
    pub fn none() -> FaultConfig {
        FaultConfig::default()
    }

    pub fn with_html_502_every(mut self, n: u64) -> Self {
        self.html_502_every = Some(n);
        self
    }

    pub fn with_drop_connection_every(mut self, n: u64) -> Self {
        self.drop_connection_every = Some(n);
        self
    }

    pub fn with_slow_download(mut self, per_64k: Duration) -> Self {
        self.slow_download = Some(per_64k);
        self
    }

    pub fn with_query_limit_next(mut self, n: u32) -> Self {
        self.query_limit_next = n;
        self
    }

    pub fn with_query_limit_for(mut self, window: Duration) -> Self {
        self.query_limit_for = Some(window);
        self
    }

    pub fn with_operation_time_limit(mut self, method: &str, times: u32) -> Self {
        self.operation_time_limit = Some((super::normalize_method(method), times));
        self
    }

    pub fn with_internal_error_next(mut self, n: u32) -> Self {
        self.internal_error_next = n;
        self
    }

    pub fn with_html_502_next(mut self, n: u32) -> Self {
        self.html_502_next = n;
        self
    }

    pub fn with_expire_token_at(mut self, nth_oauth_request: u64) -> Self {
        self.expire_token_at = Some(nth_oauth_request);
        self
    }

    pub fn with_reset_connection_next(mut self, n: u32) -> Self {
        self.reset_connection_next = n;
        self
    }

    pub fn with_cut_rest_next(mut self, n: u32) -> Self {
        self.cut_rest_next = n;
        self
    }

    pub fn with_cut_download_next(mut self, n: u32) -> Self {
        self.cut_download_next = n;
        self
    }

    pub fn with_malformed_json_next(mut self, n: u32) -> Self {
        self.malformed_json_next = n;
        self
    }

    pub fn with_vanished(mut self, call_ids: impl IntoIterator<Item = u64>) -> Self {
        self.vanished.extend(call_ids);
        self
    }
}

/// Names under which [`PortalStats::faults_injected`](super::PortalStats::faults_injected) counts faults.
pub mod kind {
    pub const HTML_502: &str = "html_502";
    pub const DROP_CONNECTION: &str = "drop_connection";
    pub const RESET_CONNECTION: &str = "reset_connection";
    pub const QUERY_LIMIT: &str = "query_limit_exceeded";
    pub const OPERATION_TIME_LIMIT: &str = "operation_time_limit";
    pub const INTERNAL_ERROR: &str = "internal_server_error";
    pub const EXPIRED_TOKEN: &str = "expired_token";
    pub const CUT_REST: &str = "cut_rest";
    pub const CUT_DOWNLOAD: &str = "cut_download";
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const VANISHED: &str = "vanished_recording";
}

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
    if super::normalize_method(rest) == "download" {
        return Route::Download { rest: true };
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [_, _, method] => Route::Method {
            method: super::normalize_method(method),
            token: None,
        },
        [method] => Route::Method {
            method: super::normalize_method(method),
            token: Some(request_token(req).unwrap_or_default()),
        },
        _ => Route::Other,
    }
}

/// The OAuth token of a request: `Authorization: Bearer`, or `auth` / `access_token` in the query.
fn request_token(req: &Request<hyper::body::Incoming>) -> Option<String> {
    if let Some(t) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    {
        return Some(t.trim().to_string());
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

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
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
        if c.drop_connection_every
            .is_some_and(|k| k > 0 && n.is_multiple_of(k))
        {
            return Verdict::Drop(kind::DROP_CONNECTION);
        }
        if take(&mut c.reset_connection_next) {
            return Verdict::Reset(kind::RESET_CONNECTION);
        }
        if c.html_502_every
            .is_some_and(|k| k > 0 && n.is_multiple_of(k))
        {
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
            Route::Method { method, token } => {
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
                    if *m == method && take(times) {
                        let reset_at = (unix_now() + 1.0).ceil();
                        let time =
                            json!({"operating_reset_at": reset_at as i64, "operating": 480.0});
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
                    let mut expired = self
                        .expired_tokens
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if c.expire_token_at == Some(k) && !token.is_empty() {
                        expired.insert(token.clone());
                    }
                    if expired.contains(&token) {
                        return Verdict::Answer(
                            kind::EXPIRED_TOKEN,
                            json_error(
                                401,
                                "expired_token",
                                "The access token provided has expired.",
                                None,
                            ),
                        );
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
            Route::Download { rest } => {
                // A `DOWNLOAD_URL` dies with the access token it embeds.
                let expired = rest
                    && request_token(req).is_some_and(|t| {
                        self.expired_tokens
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(&t)
                    });
                if expired {
                    return Verdict::Answer(
                        kind::EXPIRED_TOKEN,
                        json_error(
                            401,
                            "expired_token",
                            "The access token provided has expired.",
                            None,
                        ),
                    );
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

    /// A download answer to cut: uses up one `cut_download_next` only when there is a body to cut.
    pub(crate) fn take_download_cut(&self) -> bool {
        take(&mut self.lock().cut_download_next)
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn json_error(
    status: u16,
    code: &str,
    description: &str,
    time: Option<serde_json::Value>,
) -> Response<Body> {
    let mut body = json!({"error": code, "error_description": description});
    if let Some(t) = time {
        body["time"] = t;
    }
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
        .unwrap_or_default()
}

pub(crate) fn html_502() -> Response<Body> {
    let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from(page))
        .unwrap_or_default()
}

/// A complete 200 answer whose JSON is broken (as a misbehaving proxy or a PHP notice before the JSON makes it).
fn malformed_json() -> Response<Body> {
    let body = "<b>Notice</b>: Undefined index in /home/bitrix/www/rest.php\n{\"result\":{\"result\":{\"p00\":[{\"ID\":\"1\",,]";
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(body))
        .unwrap_or_default()
}

/// Announces the full length, sends half, then fails: hyper closes the connection mid-body.
pub(crate) fn cut_half(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(len) = declared.or_else(|| http_body::Body::size_hint(&body).exact()) else {
        return Response::from_parts(parts, body);
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Response::from_parts(
        parts,
        Body::new(CutBody {
            inner: body,
            remaining: len / 2,
            len,
            flush: None,
        }),
    )
}

/// The exact length of an answer, when it is known before sending.
pub(crate) fn body_len(response: &Response<Body>) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| http_body::Body::size_hint(response.body()).exact())
}

struct CutBody {
    inner: Body,
    remaining: u64,
    len: u64,
    flush: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            // Give hyper a moment to flush what was sent: it drops its write buffer when the body fails.
            let flush = this
                .flush
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
            if flush.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "injected fault: body cut short",
            ))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let n = (data.len() as u64).min(this.remaining);
                    data.truncate(n as usize);
                    this.remaining -= n;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(other) => Poll::Ready(Some(Ok(other))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            // The inner body ended early (should not happen): fail anyway, the client was promised more.
            Poll::Ready(None) => {
                this.remaining = 0;
                self.poll_frame(cx)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// A TCP stream that is reset (RST instead of FIN) when dropped, if a fault asked for it.
pub(crate) struct ResetOnDrop {
    stream: tokio::net::TcpStream,
    reset: Arc<AtomicBool>,
}

impl ResetOnDrop {
    pub(crate) fn new(stream: tokio::net::TcpStream) -> (Self, Arc<AtomicBool>) {
        let reset = Arc::new(AtomicBool::new(false));
        (
            ResetOnDrop {
                stream,
                reset: reset.clone(),
            },
            reset,
        )
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            // Zero linger: close() sends RST and never blocks.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl tokio::io::AsyncRead for ResetOnDrop {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ResetOnDrop {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.reset.load(Ordering::Relaxed) {
            // Do not send FIN first: the peer must see the reset.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Counts injected faults by kind.
pub(crate) fn bump(stats: &mut BTreeMap<String, u64>, kind: &str) {
    *stats.entry(kind.to_string()).or_insert(0) += 1;
}

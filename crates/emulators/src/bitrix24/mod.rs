//! A Bitrix24 portal emulator: the REST API b24sense uses (`shared/spec/bitrix24-api.md` §1–§4, §7, §10) over a
//! generated, deterministic portal, with the portal's quirks (string numbers, `RECORD_FILE_ID` as a number, nulls,
//! `[]` for empty maps, exact error envelopes and statuses), its leaky bucket and operating-time limiter, `batch`
//! with `$result[...]` references, recordings generated while streaming, and fault injection.
//!
//! Routes: `/rest/{uid}/{secret}/{method}[.json]` (webhook), `/rest/{method}[.json]` (OAuth token),
//! `/rest/download.json` (Disk downloads), `/records/{CALL_ID}.{ext}` (the "external" recording host, never
//! rate-limited), `/oauth/token/` (the OAuth server of the application flow, `app.rs`), `/_emulator/stats`.

mod app;
mod audio;
mod data;
mod faults;
mod filter;
mod limits;
mod live;
mod methods;
mod params;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

pub use app::{AppInstall, FrameRequest};
use audio::{Generator, RecordingBody};
use data::PortalData;
pub use faults::{kind as fault_kind, FaultConfig};
use limits::{LeakyBucket, Operating, OperatingState};
use methods::{BatchAcc, Ctx, MethodOk};
use params::P;

/// The portal to generate and how it behaves.
#[derive(Clone)]
pub struct PortalConfig {
    pub seed: u64,
    pub calls: usize,
    pub users: usize,
    pub contacts: usize,
    pub companies: usize,
    pub leads: usize,
    pub deals: usize,
    /// Calls are spread over `[start, start + days)`.
    pub start: DateTime<FixedOffset>,
    pub days: u32,
    /// The portal's time zone (dates in rows and `time.date_*`).
    pub utc_offset: FixedOffset,
    /// Calls with no recording at all (missed calls etc.).
    pub no_record_share: f64,
    /// Recorded calls whose `CALL_RECORD_URL` is "" (only `RECORD_FILE_ID` → `disk.file.get`).
    pub disk_only_share: f64,
    pub wav_share: f64,
    pub stereo_share: f64,
    /// MP3 size realism (8000 = 64 kbit/s); WAV uses its real PCM byte rate.
    pub recording_bytes_per_second: u64,
    /// Cap per file (keeps tests light).
    pub max_recording_bytes: Option<u64>,
    /// The lowest-ID recorded call gets a recording of exactly this many bytes.
    pub big_recording: Option<u64>,
    pub webhook_user: u64,
    pub webhook_secret: String,
    /// OAuth access tokens accepted on `/rest/{method}`; empty = OAuth not set up (`NO_AUTH_FOUND`).
    pub access_tokens: Vec<String>,
    /// Leaky bucket: capacity X, leak Y per second.
    pub rate: (u32, u32),
    /// `/rest/download.json` goes through the bucket; `/records/*` never does.
    pub count_downloads: bool,
    /// Added to every REST response (not per download chunk).
    pub latency: Duration,
    pub operating: Option<OperatingConfig>,
    pub faults: FaultConfig,
}

impl std::fmt::Debug for PortalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalConfig")
            .field("seed", &self.seed)
            .field("calls", &self.calls)
            .field("users", &self.users)
            .field("start", &self.start)
            .field("days", &self.days)
            .field("webhook_user", &self.webhook_user)
            .field("webhook_secret", &"<redacted>")
            .field(
                "access_tokens",
                &format_args!("<{} redacted>", self.access_tokens.len()),
            )
            .field("rate", &self.rate)
            .field("operating", &self.operating)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Default for PortalConfig {
    fn default() -> Self {
        let msk = FixedOffset::east_opt(3 * 3600).expect("valid offset");
        PortalConfig {
            seed: 1,
            calls: 300,
            users: 12,
            contacts: 120,
            companies: 40,
            leads: 60,
            deals: 30,
            start: msk
                .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
                .single()
                .expect("valid date"),
            days: 30,
            utc_offset: msk,
            no_record_share: 0.15,
            disk_only_share: 0.10,
            wav_share: 0.2,
            stereo_share: 0.8,
            recording_bytes_per_second: 8000,
            max_recording_bytes: Some(256 * 1024),
            big_recording: None,
            webhook_user: 1,
            webhook_secret: "emulatorsecret0001".into(),
            access_tokens: Vec::new(),
            rate: (50, 2),
            count_downloads: true,
            latency: Duration::ZERO,
            operating: None,
            faults: FaultConfig::default(),
        }
    }
}

/// Per (credential, method) operating-time limiter (`bitrix24-api.md` §2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct OperatingConfig {
    /// Seconds per 10-minute window (cloud: 480).
    pub limit_secs: f64,
    /// What each call adds.
    pub cost_per_call_secs: f64,
}

impl Default for OperatingConfig {
    fn default() -> Self {
        OperatingConfig {
            limit_secs: 480.0,
            cost_per_call_secs: 0.5,
        }
    }
}

/// Counters, also served as JSON at `GET /_emulator/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortalStats {
    /// Every request except `/_emulator/*`.
    pub http_requests: u64,
    /// REST methods by lower-case name; batch sub-commands count under their own method and `batch` once.
    pub by_method: BTreeMap<String, u64>,
    pub rate_limited: u64,
    pub operating_limited: u64,
    /// Recording downloads started (`/rest/download.json` and `/records/*`).
    pub downloads: u64,
    /// Response body bytes (JSON and recordings as streamed).
    pub bytes_sent: u64,
    /// Injected faults that fired, by kind ([`fault_kind`]).
    #[serde(default)]
    pub faults_injected: BTreeMap<String, u64>,
}

/// A call's recording as the emulator will serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingInfo {
    /// "mp3" or "wav".
    pub container: String,
    pub channels: u16,
    pub bytes: u64,
    /// SHA-256 of the exact bytes served, lower-case hex.
    pub sha256: String,
    /// `CALL_RECORD_URL` is "" — only `RECORD_FILE_ID` → `disk.file.get` leads to it.
    pub via_disk_only: bool,
    /// `RECORD_FILE_ID`.
    pub file_id: u64,
    /// `CALL_RECORD_URL` when it is set.
    pub record_url: Option<String>,
}

/// A REST error: HTTP status + `{"error", "error_description"[, "argument"]}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: String,
    pub description: String,
    pub argument: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, description: &str) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            description: description.into(),
            argument: None,
        }
    }

    pub fn with_argument(mut self, arg: &str) -> ApiError {
        self.argument = Some(arg.into());
        self
    }

    pub fn argument(arg: &str) -> ApiError {
        ApiError::new(
            400,
            "ERROR_ARGUMENT",
            &format!("Invalid value of argument {arg}"),
        )
        .with_argument(arg)
    }

    pub fn method_not_found() -> ApiError {
        ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
    }

    fn body(&self) -> Value {
        let mut v = json!({"error": self.code, "error_description": self.description});
        if let Some(a) = &self.argument {
            v["argument"] = json!(a);
        }
        v
    }
}

pub(crate) struct Inner {
    config: PortalConfig,
    data: PortalData,
    /// `http://127.0.0.1:PORT/`
    base: String,
    /// `http://127.0.0.1:OTHER_PORT/`: where `CALL_RECORD_URL`s point. A separate listener plays the external
    /// recording storage (Voximplant or a PBX), whose downloads never count against the portal's bucket.
    records_base: String,
    faults: faults::FaultState,
    bucket: Mutex<LeakyBucket>,
    operating: Mutex<Operating>,
    stats: Mutex<PortalStats>,
    bytes_sent: Arc<AtomicU64>,
    sha_cache: Mutex<HashMap<u64, String>>,
    /// The application flow (install, OAuth, events): `app.rs`.
    app: app::AppState,
    /// Calls still to come and recordings still to be attached (tests of continuous sync).
    live: live::Live,
    epoch: tokio::time::Instant,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn portal_now(inner: &Inner) -> DateTime<FixedOffset> {
    Utc::now().with_timezone(&inner.config.utc_offset)
}

fn unix_to_portal(inner: &Inner, t: f64) -> String {
    let secs = t.floor() as i64;
    inner
        .config
        .utc_offset
        .timestamp_opt(secs, 0)
        .single()
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
        .unwrap_or_default()
}

/// Method names are case-insensitive; `.json` is the default suffix.
pub(crate) fn normalize_method(m: &str) -> String {
    let m = m.trim().trim_matches('/').to_ascii_lowercase();
    m.strip_suffix(".json")
        .or_else(|| m.strip_suffix(".xml"))
        .unwrap_or(&m)
        .to_string()
}

/// The webhook's download token (the "auth" of its `DOWNLOAD_URL`): stable, derived from the secret.
fn webhook_download_auth(cfg: &PortalConfig) -> String {
    let h = Sha256::digest(format!(
        "download-auth:{}:{}",
        cfg.webhook_user, cfg.webhook_secret
    ));
    hex::encode(&h[..16])
}

fn file_sig(cfg: &PortalConfig, file_id: u64) -> String {
    let h = Sha256::digest(format!("disk-sig:{}:{file_id}", cfg.webhook_secret));
    hex::encode(&h[..12])
}

fn download_url(inner: &Inner, auth: &str, file_id: u64) -> String {
    format!(
        "{}rest/download.json?auth={auth}&token=disk%7C{file_id}%7C{}",
        inner.base,
        file_sig(&inner.config, file_id)
    )
}

impl Inner {
    fn bump_method(&self, method: &str) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        *s.by_method.entry(method.to_string()).or_insert(0) += 1;
    }

    fn admit(&self) -> bool {
        let now = self.epoch.elapsed().as_secs_f64();
        let ok = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(now);
        if !ok {
            self.stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rate_limited += 1;
        }
        ok
    }

    fn operating_check(&self, cred: &str, method: &str) -> Result<(), ApiError> {
        let Some(op) = &self.config.operating else {
            return Ok(());
        };
        let r = self
            .operating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(cred, method, op.limit_secs, now_unix());
        r.map_err(|_| {
            self.stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .operating_limited += 1;
            ApiError::new(
                429,
                "OPERATION_TIME_LIMIT",
                "Method is blocked due to operation time limit.",
            )
        })
    }

    fn operating_charge(&self, cred: &str, method: &str, cost: f64) -> Option<OperatingState> {
        self.config.operating.as_ref()?;
        Some(
            self.operating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .charge(cred, method, cost, now_unix()),
        )
    }

    fn time_obj(&self, start: f64, processing: f64, op: Option<OperatingState>) -> Value {
        let finish = now_unix().max(start);
        let mut t = json!({
            "start": start, "finish": finish, "duration": finish - start, "processing": processing,
            "date_start": unix_to_portal(self, start), "date_finish": unix_to_portal(self, finish),
        });
        if let Some(op) = op {
            t["operating_reset_at"] = json!(op.reset_at);
            t["operating"] = json!(op.operating);
        }
        t
    }

    /// One method call with the operating limiter around it; `None` cost = the configured cost.
    fn call_method(&self, ctx: &Ctx, method: &str, p: &P) -> Result<(MethodOk, Value), ApiError> {
        let started = now_unix();
        let t0 = std::time::Instant::now();
        self.operating_check(&ctx.cred, method)?;
        let res = if method == "batch" {
            self.batch(ctx, p)
        } else {
            match app::dispatch(self, ctx, method, p) {
                Some(r) => r?,
                None => methods::dispatch(self, ctx, method, p)?,
            }
        };
        let cost = if method == "batch" {
            0.0
        } else {
            self.config
                .operating
                .as_ref()
                .map_or(0.0, |o| o.cost_per_call_secs)
        };
        let op = self.operating_charge(&ctx.cred, method, cost);
        let time = self.time_obj(started, t0.elapsed().as_secs_f64(), op);
        Ok((res, time))
    }

    fn batch(&self, ctx: &Ctx, p: &P) -> MethodOk {
        let halt = p.get_ci("halt").is_some_and(P::truthy);
        let mut acc = BatchAcc::default();
        for (i, (name, cmd)) in methods::commands(p).into_iter().enumerate() {
            if i >= methods::BATCH_MAX {
                acc.error.push((
                    name,
                    json!({"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}),
                ));
                continue;
            }
            let (method, mut sub) = methods::parse_command(&cmd);
            sub.map_strings(&mut |s| acc.substitute(s));
            let outcome = if matches!(method.as_str(), "batch" | "download" | "upload") {
                Err(ApiError::new(
                    405,
                    "ERROR_BATCH_METHOD_NOT_ALLOWED",
                    "Method is not allowed for batch usage",
                ))
            } else {
                self.bump_method(&method);
                self.call_method(ctx, &method, &sub)
            };
            match outcome {
                Ok((r, time)) => {
                    acc.result.push((name.clone(), r.result));
                    if let Some(t) = r.total {
                        acc.total.push((name.clone(), json!(t)));
                    }
                    if let Some(n) = r.next {
                        acc.next.push((name.clone(), json!(n)));
                    }
                    acc.time.push((name, time));
                }
                Err(e) => {
                    acc.error.push((name, e.body()));
                    if halt {
                        break;
                    }
                }
            }
        }
        MethodOk {
            result: json!({
                "result": methods::php_array(acc.result),
                "result_error": methods::php_array(acc.error),
                "result_total": methods::php_array(acc.total),
                "result_next": methods::php_array(acc.next),
                "result_time": methods::php_array(acc.time),
            }),
            total: None,
            next: None,
        }
    }

    fn recording_generator(&self, idx: usize) -> Option<Arc<Generator>> {
        let spec = self.data.calls.get(idx)?.record.as_ref()?;
        Some(Arc::new(Generator::new(spec)))
    }

    fn recording_info(&self, idx: usize) -> Option<RecordingInfo> {
        let call = self.data.calls.get(idx)?;
        let spec = call.record.as_ref()?;
        let sha = {
            let cached = self
                .sha_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&call.id)
                .cloned();
            match cached {
                Some(s) => s,
                None => {
                    let s = Generator::new(spec).sha256_hex();
                    self.sha_cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(call.id, s.clone());
                    s
                }
            }
        };
        Some(RecordingInfo {
            container: spec.container.ext().into(),
            channels: spec.channels,
            bytes: spec.bytes,
            sha256: sha,
            via_disk_only: spec.disk_only,
            file_id: spec.file_id,
            record_url: call
                .record_url(&self.records_base)
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from),
        })
    }

    /// The call at `idx` has not ended yet or its recording is not attached yet ([`live`]).
    pub(crate) fn not_yet_recorded(&self, idx: usize) -> bool {
        self.data
            .calls
            .get(idx)
            .is_some_and(|c| self.live.recording_missing(c.id))
    }

    /// The recording of the call at `idx` was made to vanish by a fault (counted when asked).
    pub(crate) fn vanished(&self, idx: usize) -> bool {
        let gone = self
            .data
            .calls
            .get(idx)
            .is_some_and(|c| self.faults.vanished(c.id));
        if gone {
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            faults::bump(&mut s.faults_injected, faults::kind::VANISHED);
        }
        gone
    }

    fn stats_snapshot(&self) -> PortalStats {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.bytes_sent = self.bytes_sent.load(Ordering::Relaxed);
        s
    }
}

/// A running emulator. Dropping it (or [`Bitrix24Emulator::shutdown`]) stops the server.
pub struct Bitrix24Emulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Bitrix24Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitrix24Emulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Bitrix24Emulator {
    /// Generates the portal and serves it on 127.0.0.1 with an OS-chosen port.
    pub async fn start(config: PortalConfig) -> std::io::Result<Bitrix24Emulator> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(
        config: PortalConfig,
        addr: SocketAddr,
    ) -> std::io::Result<Bitrix24Emulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Bound to 0.0.0.0/[::]: advertise loopback, which always reaches it from this host.
        let shown = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let base = format!("http://{shown}/");
        let records_listener = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
        let records_base = format!(
            "http://{}:{}/",
            shown.ip(),
            records_listener.local_addr()?.port()
        );
        // Generating 100,000 calls takes a moment: keep it off the async workers.
        let cfg = config.clone();
        let data = tokio::task::spawn_blocking(move || data::generate(&cfg))
            .await
            .map_err(|e| std::io::Error::other(format!("portal generation failed: {e}")))?;
        let inner = Arc::new(Inner {
            faults: faults::FaultState::new(config.faults.clone()),
            bucket: Mutex::new(LeakyBucket::new(config.rate.0, config.rate.1)),
            operating: Mutex::new(Operating::default()),
            stats: Mutex::new(PortalStats::default()),
            bytes_sent: Arc::new(AtomicU64::new(0)),
            sha_cache: Mutex::new(HashMap::new()),
            app: app::AppState::new(config.seed),
            live: live::Live::default(),
            epoch: tokio::time::Instant::now(),
            config,
            data,
            base,
            records_base,
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let records_task = tokio::spawn(accept_loop(
            records_listener,
            router(inner.clone()),
            inner.clone(),
            stop_rx.clone(),
        ));
        let portal_task = tokio::spawn(accept_loop(
            listener,
            router(inner.clone()),
            inner.clone(),
            stop_rx,
        ));
        let task = tokio::spawn(async move {
            let _ = tokio::join!(records_task, portal_task);
        });
        Ok(Bitrix24Emulator {
            inner,
            addr,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&self.inner.base).expect("base URL is valid")
    }

    /// `http://127.0.0.1:OTHER_PORT/`: the "external" host `CALL_RECORD_URL`s point to (not the portal's bucket).
    pub fn records_base_url(&self) -> url::Url {
        url::Url::parse(&self.inner.records_base).expect("records URL is valid")
    }

    /// `http://127.0.0.1:PORT/rest/{user}/{secret}/` — contains the secret: do not log it.
    pub fn webhook_url(&self) -> String {
        format!(
            "{}rest/{}/{}/",
            self.inner.base, self.inner.config.webhook_user, self.inner.config.webhook_secret
        )
    }

    pub fn config(&self) -> &PortalConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> PortalStats {
        self.inner.stats_snapshot()
    }

    pub fn reset_stats(&self) {
        *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner()) = PortalStats::default();
        self.inner.bytes_sent.store(0, Ordering::Relaxed);
    }

    /// Replaces the fault settings (and restarts the fault counters).
    pub fn set_faults(&self, faults: FaultConfig) {
        self.inner.faults.set(faults);
    }

    /// The fault settings as they stand ("next N" counts used up so far).
    pub fn faults(&self) -> FaultConfig {
        self.inner.faults.current()
    }

    /// Every call exactly as `voximplant.statistic.get` returns it, ascending ID.
    pub fn call_rows(&self) -> Vec<Value> {
        let live = self.inner.live.view();
        live.visible(&self.inner.data.calls)
            .iter()
            .map(|c| live.row(c).to_json(&self.inner.records_base))
            .collect()
    }

    /// From now on only calls with statistic `ID` ≤ `id` exist: the later ones have not happened yet.
    pub fn hide_calls_after(&self, id: u64) {
        self.inner.live.hide_after(id);
    }

    /// Calls up to `id` end (their rows appear); send `send_call_end` for them to play the portal's events.
    pub fn reveal_calls_up_to(&self, id: u64) {
        self.inner.live.reveal_up_to(id);
    }

    /// The call's row shows no recording (no `CALL_RECORD_URL`, no `RECORD_FILE_ID`) until
    /// [`attach_recording`](Self::attach_recording), like a recording the portal attaches late.
    pub fn withhold_recording(&self, call_stat_id: u64) {
        self.inner.live.withhold(call_stat_id);
    }

    /// Attaches a withheld recording (no event fires, as with `telephony.externalCall.attachRecord`).
    /// False when it was not withheld.
    pub fn attach_recording(&self, call_stat_id: u64) -> bool {
        self.inner.live.attach(call_stat_id)
    }

    /// The recording of the call with this statistic `ID` (computes its SHA-256 on first use).
    pub fn recording(&self, call_stat_id: u64) -> Option<RecordingInfo> {
        let idx = self
            .inner
            .data
            .calls
            .binary_search_by_key(&call_stat_id, |c| c.id)
            .ok()?;
        self.inner.recording_info(idx)
    }

    /// `(NAME, LAST_NAME)` of a user.
    pub fn user_name(&self, id: u64) -> Option<(String, String)> {
        self.inner
            .data
            .user_by_id(id)
            .map(|u| (u.name.clone(), u.last_name.clone()))
    }

    /// The record's display name as `mapping.md` builds `client_name`: contact → `NAME LAST_NAME`;
    /// company/deal → `TITLE`; lead → `TITLE`, or `NAME LAST_NAME` when the title is empty (some are).
    /// `kind`: CONTACT, COMPANY, LEAD, DEAL (any case).
    pub fn crm_title(&self, kind: &str, id: u64) -> Option<String> {
        let kind = data::CrmKind::parse(kind)?;
        let r = self.inner.data.crm_by_id(kind, id)?;
        let person = format!("{} {}", r.name, r.last_name).trim().to_string();
        Some(match kind {
            data::CrmKind::Contact => person,
            data::CrmKind::Lead if r.title.trim().is_empty() => person,
            _ => r.title.clone(),
        })
    }

    /// The raw CRM record as `crm.<kind>.get` returns it.
    pub fn crm_record(&self, kind: &str, id: u64) -> Option<Value> {
        let kind = data::CrmKind::parse(kind)?;
        self.inner.data.crm_by_id(kind, id).map(|r| r.to_json())
    }

    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Bitrix24Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Runs an emulator until Ctrl-C, printing its webhook URL (for `b24sense emulate bitrix24`).
pub async fn serve_forever(config: PortalConfig, addr: SocketAddr) -> std::io::Result<()> {
    let calls = config.calls;
    let emu = Bitrix24Emulator::start_on(config, addr).await?;
    println!("Bitrix24 emulator: {calls} calls");
    println!("webhook URL: {}", emu.webhook_url());
    println!("stats: {}_emulator/stats", emu.base_url());
    tokio::signal::ctrl_c().await?;
    emu.shutdown();
    Ok(())
}

// -------------------------------------------------------------------------------------------------------------
// HTTP

/// Raw hyper connections so that a "dropped connection" fault can close the socket without any response.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    inner: Arc<Inner>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut stop_accept = stop.clone();
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop_accept.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let (stream, reset) = faults::ResetOnDrop::new(stream);
        let app = app.clone();
        let inner = inner.clone();
        let mut stop_conn = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let app = app.clone();
                let inner = inner.clone();
                let reset = reset.clone();
                async move { handle(inner, app, req, reset).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop_conn.changed() => {}
            }
        });
    }
}

/// Error type whose only purpose is to make hyper drop the connection.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault: connection dropped")
    }
}

impl std::error::Error for DropConnection {}

async fn handle(
    inner: Arc<Inner>,
    app: Router,
    req: Request<hyper::body::Incoming>,
    reset: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Response<Body>, DropConnection> {
    use faults::Verdict;
    let verdict = if req.uri().path().starts_with("/_emulator/") {
        Verdict::Pass
    } else {
        inner
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .http_requests += 1;
        inner.faults.decide(&req)
    };
    let injected = |kind: &str| {
        let mut s = inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        faults::bump(&mut s.faults_injected, kind);
    };
    let cut = match verdict {
        Verdict::Pass => None,
        Verdict::Cut(kind) => Some(kind),
        Verdict::Answer(kind, response) => {
            injected(kind);
            return Ok(response);
        }
        Verdict::Drop(kind) => {
            injected(kind);
            return Err(DropConnection);
        }
        Verdict::Reset(kind) => {
            injected(kind);
            reset.store(true, Ordering::Relaxed);
            return Err(DropConnection);
        }
    };
    let req = req.map(Body::new);
    let response = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let Some(kind) = cut else {
        return Ok(response);
    };
    let cuttable = faults::body_len(&response).is_some_and(|n| n > 1);
    let applies = match kind {
        faults::kind::CUT_DOWNLOAD => {
            response.status() == StatusCode::OK && cuttable && inner.faults.take_download_cut()
        }
        _ => cuttable,
    };
    if !applies {
        return Ok(response);
    }
    injected(kind);
    Ok(faults::cut_half(response))
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/rest/download.json", get(download))
        .route(
            "/rest/{uid}/{secret}/{method}",
            get(rest_webhook).post(rest_webhook),
        )
        .route("/rest/{method}", get(rest_token).post(rest_token))
        .route("/oauth/token/", get(app::oauth_token))
        .route("/oauth/token", get(app::oauth_token))
        .route("/records/{file}", get(record_file))
        .route("/_emulator/stats", get(stats_route))
        .route("/_emulator/app_frame", get(app::app_frame))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") })
        .with_state(inner)
}

fn json_response(inner: &Inner, status: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    inner
        .bytes_sent
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(bytes))
        .unwrap_or_default()
}

fn error_response(inner: &Inner, e: &ApiError) -> Response<Body> {
    json_response(inner, e.status, &e.body())
}

/// Query + body, body wins; JSON only for `Content-Type: application/json`, PHP form decoding otherwise.
fn read_params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> P {
    let mut p = query.map_or_else(P::empty_map, params::from_form);
    if body.is_empty() {
        return p;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body_p = if ct.starts_with("application/json") {
        params::from_json(body).unwrap_or_else(P::empty_map)
    } else if ct.starts_with("multipart/") {
        P::empty_map()
    } else {
        params::from_form(&String::from_utf8_lossy(body))
    };
    p.merge(body_p);
    p
}

async fn rest_webhook(
    State(inner): State<Arc<Inner>>,
    Path((uid, secret, method)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let auth = if uid.parse::<u64>().ok() == Some(inner.config.webhook_user)
        && secret == inner.config.webhook_secret
    {
        Ok(Ctx {
            cred: format!("webhook:{uid}"),
            user_id: inner.config.webhook_user,
            webhook: true,
            download_auth: webhook_download_auth(&inner.config),
        })
    } else {
        Err(ApiError::new(
            401,
            "INVALID_CREDENTIALS",
            "Invalid request credentials",
        ))
    };
    rest(inner, auth, &method, query.as_deref(), &headers, &body).await
}

async fn rest_token(
    State(inner): State<Arc<Inner>>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let p = read_params(query.as_deref(), &headers, &body);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|s| s.trim().to_string());
    let token = p
        .get_ci("auth")
        .or_else(|| p.get_ci("access_token"))
        .and_then(P::as_text)
        .or(bearer);
    let issued = token.as_deref().and_then(|t| app::authorize(&inner, t));
    let auth = match token.filter(|t| !t.is_empty()) {
        _ if issued.is_some() => issued.unwrap_or_else(|| Err(ApiError::method_not_found())),
        _ if inner.config.access_tokens.is_empty() => Err(ApiError::new(
            401,
            "NO_AUTH_FOUND",
            "Wrong authorization data",
        )),
        None => Err(ApiError::new(
            401,
            "NO_AUTH_FOUND",
            "Wrong authorization data",
        )),
        Some(t) if inner.config.access_tokens.contains(&t) => Ok(Ctx {
            cred: format!("token:{}", hex::encode(&Sha256::digest(t.as_bytes())[..6])),
            user_id: inner.config.webhook_user,
            webhook: false,
            download_auth: t,
        }),
        Some(_) => Err(ApiError::new(
            401,
            "invalid_token",
            "The access token provided is invalid.",
        )),
    };
    rest(inner, auth, &method, query.as_deref(), &headers, &body).await
}

async fn rest(
    inner: Arc<Inner>,
    auth: Result<Ctx, ApiError>,
    method: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<Body> {
    let response = rest_inner(&inner, auth, method, query, headers, body);
    if !inner.config.latency.is_zero() {
        tokio::time::sleep(inner.config.latency).await;
    }
    response
}

fn rest_inner(
    inner: &Inner,
    auth: Result<Ctx, ApiError>,
    method: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<Body> {
    if !inner.admit() {
        return error_response(
            inner,
            &ApiError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
        );
    }
    let ctx = match auth {
        Ok(c) => c,
        Err(e) => return error_response(inner, &e),
    };
    let method = normalize_method(method);
    let p = read_params(query, headers, body);
    inner.bump_method(&method);
    match inner.call_method(&ctx, &method, &p) {
        Ok((res, time)) => {
            let mut env = json!({"result": res.result});
            if let Some(n) = res.next {
                env["next"] = json!(n);
            }
            if let Some(t) = res.total {
                env["total"] = json!(t);
            }
            env["time"] = time;
            json_response(inner, 200, &env)
        }
        Err(e) => error_response(inner, &e),
    }
}

fn recording_response(inner: &Inner, idx: usize, filename: &str) -> Response<Body> {
    let Some(gen) = inner.recording_generator(idx) else {
        return error_response(
            inner,
            &ApiError::new(404, "ERROR_NOT_FOUND", "File not found"),
        );
    };
    let mime = inner.data.calls[idx]
        .record
        .as_ref()
        .map_or("audio/mpeg", |r| r.container.mime());
    inner
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .downloads += 1;
    let delay = inner.faults.slow_download();
    let len = gen.len();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, mime)
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        )
        .body(Body::new(RecordingBody::new(
            gen,
            delay,
            inner.bytes_sent.clone(),
        )))
        .unwrap_or_default()
}

async fn download(State(inner): State<Arc<Inner>>, RawQuery(query): RawQuery) -> Response<Body> {
    if inner.config.count_downloads && !inner.admit() {
        return error_response(
            &inner,
            &ApiError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
        );
    }
    let p = query
        .as_deref()
        .map_or_else(P::empty_map, params::from_form);
    let auth = p.get_ci("auth").and_then(P::as_text).unwrap_or_default();
    let auth_ok = !auth.is_empty()
        && (auth == webhook_download_auth(&inner.config)
            || inner.config.access_tokens.contains(&auth)
            || app::download_auth_ok(&inner, &auth));
    if !auth_ok {
        return error_response(
            &inner,
            &ApiError::new(401, "NO_AUTH_FOUND", "Wrong authorization data"),
        );
    }
    let token = p.get_ci("token").and_then(P::as_text).unwrap_or_default();
    let mut parts = token.split('|');
    let file = match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u64>().ok()),
        parts.next(),
    ) {
        (Some("disk"), Some(id), Some(sig)) if sig == file_sig(&inner.config, id) => {
            inner.data.files.get(&id).copied()
        }
        _ => None,
    };
    let Some(idx) = file.filter(|&i| !inner.vanished(i) && !inner.not_yet_recorded(i)) else {
        return error_response(
            &inner,
            &ApiError::new(404, "ERROR_NOT_FOUND", "File not found"),
        );
    };
    let call = &inner.data.calls[idx];
    let ext = call.record.as_ref().map_or("mp3", |r| r.container.ext());
    let name = format!(
        "{}_{}.{ext}",
        call.start.format("%Y-%m-%d_%H-%M-%S"),
        call.phone.trim_start_matches('+')
    );
    recording_response(&inner, idx, &name)
}

async fn record_file(State(inner): State<Arc<Inner>>, Path(file): Path<String>) -> Response<Body> {
    let not_found = || (StatusCode::NOT_FOUND, "Not Found").into_response();
    let Some((call_id, ext)) = file.rsplit_once('.') else {
        return not_found();
    };
    let Some(&idx) = inner.data.by_call_id.get(call_id) else {
        return not_found();
    };
    if inner.vanished(idx) || inner.not_yet_recorded(idx) {
        return not_found();
    }
    match &inner.data.calls[idx].record {
        Some(r) if !r.disk_only && r.container.ext() == ext => {
            recording_response(&inner, idx, &file)
        }
        _ => not_found(),
    }
}

async fn stats_route(State(inner): State<Arc<Inner>>) -> Response<Body> {
    let body = serde_json::to_vec(&inner.stats_snapshot()).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

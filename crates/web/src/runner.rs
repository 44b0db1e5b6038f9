//! Export runs per portal: one at a time per portal, started from the page, by a call-end event, by the
//! periodic catch-up pass or by a restart that interrupted one, each with live progress the page polls.
//! The progress is journaled in the store's `runs` row (about once a second, and at the end) by a task of its
//! own, so the engine's progress callback never waits for the database and the progress survives a restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_bitrix24::{Bitrix24Client, ClientConfig, Credentials, RatePlan};
use b24sense_core::{CallFilter, CallType, MonoPolicy, Outcome, TimeBound};
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::{
    run_export, CallReport, EngineError, ExportConfig, LateRecordings, ProgressEvent,
};
use b24sense_speechsense::{
    ClientConfig as SpeechConfig, ConnectionCheck, Credentials as SpeechCredentials, Lang,
    SearchScope, SpeechSenseClient,
};
use b24sense_store::{run_status, Portal, PortalSettings, SecretKey, Store};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::metrics::Metrics;
use crate::oauth::{OAuthClient, RefreshLocks, StoreTokenSource};

/// What the page shows about the current or last run (also what the store journals, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    pub running: bool,
    /// `page`, `event` or `schedule`.
    pub trigger: String,
    pub found: u64,
    pub listing_done: bool,
    pub settled: u64,
    pub uploaded: u64,
    /// Calls without a recording yet, waiting in the ledger for the next check.
    pub awaiting_recording: u64,
    pub skipped: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    pub bytes: u64,
    /// Calls per second since the start.
    pub rate: f64,
    /// Seconds left at the current rate (when the total is known).
    pub eta_secs: Option<u64>,
    pub elapsed_secs: u64,
    /// The newest last, in words a person understands.
    pub last_errors: Vec<String>,
    /// Why the run ended early (stopped by the user, refused credentials, …).
    pub stopped: Option<String>,
    pub finished: bool,
    /// The run's server stopped or crashed before it ended; it is resumed when a server starts again.
    pub interrupted: bool,
    /// A note for the page (this run resumes one that a restart interrupted).
    pub notice: Option<String>,
}

/// «Выгрузка прервана: сервер перезапускался» in the page's language.
pub fn interrupted_message(ru: bool) -> &'static str {
    if ru {
        "Выгрузка прервана: сервер перезапускался."
    } else {
        "The export was interrupted: the server restarted."
    }
}

fn resumed_message(ru: bool) -> &'static str {
    if ru {
        "Выгрузка прервана: сервер перезапускался. Продолжаем с того места, где она остановилась; выгруженные звонки не повторяются."
    } else {
        "The export was interrupted: the server restarted. It continues where it stopped; uploaded calls are not sent again."
    }
}

impl Progress {
    /// A journaled run whose process is gone, as the page shows it.
    pub fn into_interrupted(mut self, ru: bool) -> Progress {
        self.running = false;
        self.finished = true;
        self.interrupted = true;
        self.eta_secs = None;
        self.stopped = Some(interrupted_message(ru).to_string());
        self
    }
}

/// The progress journal's pace: a write when something changed, at most once per this…
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// …and a heartbeat at least this often (a quarter of the staleness limit, so a live run is never taken for
/// a dead one), between these bounds.
const HEARTBEAT_MIN: Duration = Duration::from_secs(1);
const HEARTBEAT_MAX: Duration = Duration::from_secs(10);
/// How long one journal write may take before it is skipped (the next tick tries again).
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(5);

struct RunState {
    progress: Mutex<Progress>,
    started: Instant,
    errors: Mutex<VecDeque<String>>,
    /// Bumped by every progress event: the journal writes only when it moved (or for the heartbeat).
    changes: AtomicU64,
}

impl RunState {
    /// The progress with rate, ETA and the last errors filled in.
    fn snapshot(&self) -> Progress {
        let mut p = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let elapsed = self.started.elapsed().as_secs_f64();
        if !p.finished {
            // A call left waiting for its recording is done for this run.
            let done = p.settled + p.awaiting_recording;
            p.elapsed_secs = elapsed as u64;
            p.rate = if elapsed > 0.0 {
                done as f64 / elapsed
            } else {
                0.0
            };
            p.eta_secs = (p.listing_done && p.rate > 0.0)
                .then(|| (p.found.saturating_sub(done) as f64 / p.rate).ceil() as u64);
        }
        p.last_errors = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        p
    }

    fn finished(&self) -> bool {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished
    }

    fn push_error(&self, msg: String) {
        let mut errs = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errs.push_back(msg);
        while errs.len() > 10 {
            errs.pop_front();
        }
    }
}

struct Handle {
    cancel: CancellationToken,
    state: Arc<RunState>,
    /// An event arrived during this run: run again when it ends.
    again: Arc<AtomicBool>,
    /// Cancelled because the server shuts down (not by the user): the run is resumed on the next start.
    shutdown: Arc<AtomicBool>,
    /// Cancelled once the run has ended and its end is journaled.
    ended: CancellationToken,
}

/// Everything a run needs besides the portal.
#[derive(Clone)]
pub struct RunEnv {
    pub store: Store,
    pub key: SecretKey,
    pub oauth: OAuthClient,
    pub locks: Arc<RefreshLocks>,
    pub metrics: Arc<Metrics>,
    pub speechsense_endpoint: String,
    pub concurrency: usize,
    pub rate: RatePlan,
    /// With continuous sync on: how long and how often a call without a recording is checked again.
    pub late_recordings: LateRecordings,
    /// A run row without a heartbeat for this long belongs to a process that is gone.
    pub stale_after: Duration,
}

/// Runs of all portals.
#[derive(Default)]
pub struct Runner {
    runs: Mutex<HashMap<String, Handle>>,
    /// One REST client per portal (see [`Runner::portal_client`]), keyed by `member_id`.
    clients: Mutex<HashMap<String, PortalClient>>,
}

struct PortalClient {
    /// The endpoints it was made for: a reinstall that changes them gets a new client.
    endpoints: (String, String),
    client: Bitrix24Client,
}

/// Validated settings turned into what the engine takes.
pub struct Plan {
    pub filter: CallFilter,
    pub mono: MonoPolicy,
    pub search: Option<SearchScope>,
}

/// Field-level validation of settings: `field → message`. Empty = valid.
pub fn plan(s: &PortalSettings, lang: &str) -> Result<Plan, BTreeMap<String, String>> {
    let ru = lang != "en";
    let mut errors = BTreeMap::new();
    let mut err = |f: &str, ru_msg: &str, en_msg: &str| {
        errors.insert(f.to_string(), if ru { ru_msg } else { en_msg }.to_string());
    };
    if s.connection_id.trim().is_empty() {
        err(
            "connection_id",
            "Укажите ID подключения SpeechSense.",
            "Enter the SpeechSense connection ID.",
        );
    } else if !s
        .connection_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || s.connection_id.len() > 100
    {
        err(
            "connection_id",
            "ID подключения содержит недопустимые символы.",
            "The connection ID contains characters an ID never has.",
        );
    }
    let lang_ok = {
        let l = s.language.trim();
        l.len() == 5
            && l.as_bytes()[2] == b'-'
            && l[..2].chars().all(|c| c.is_ascii_lowercase())
            && l[3..].chars().all(|c| c.is_ascii_uppercase())
    };
    if !lang_ok {
        err(
            "language",
            "Язык в виде ru-RU, en-US, kk-KZ.",
            "Language as ru-RU, en-US, kk-KZ.",
        );
    }
    let since = match s.since.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match TimeBound::parse("since", v) {
            Ok(t) => Some(t),
            Err(_) => {
                err("since", "Дата в виде ГГГГ-ММ-ДД.", "A date as YYYY-MM-DD.");
                None
            }
        },
    };
    if s.min_duration > 86_400 {
        err(
            "min_duration",
            "Не больше 86400 секунд.",
            "At most 86400 seconds.",
        );
    }
    let mut call_types = Vec::new();
    for d in &s.direction {
        match CallType::parse_name(d) {
            Some(t) => call_types.push(t),
            None => err(
                "direction",
                "Неизвестное направление звонка.",
                "Unknown call direction.",
            ),
        }
    }
    let mono = MonoPolicy::parse(&s.mono_policy);
    if mono.is_none() {
        err(
            "mono_policy",
            "Выберите, что делать с моно-записями.",
            "Choose what to do with mono recordings.",
        );
    }
    let ids = [&s.organization_id, &s.space_id, &s.project_id];
    let given = ids
        .iter()
        .filter(|v| v.as_deref().is_some_and(|v| !v.trim().is_empty()))
        .count();
    if given != 0 && given != 3 {
        for (f, v) in ["organization_id", "space_id", "project_id"]
            .iter()
            .zip(ids)
        {
            if v.as_deref().is_none_or(|v| v.trim().is_empty()) {
                err(
                    f,
                    "Для проверки дублей нужны все три ID (организация, пространство, проект).",
                    "Duplicate checks need all three IDs (organization, space, project).",
                );
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let get = |v: &Option<String>| v.as_deref().unwrap_or_default().trim().to_string();
    Ok(Plan {
        filter: CallFilter {
            since,
            users: s.users.clone(),
            min_duration: s.min_duration,
            call_types,
            ..CallFilter::default()
        },
        mono: mono.unwrap_or_default(),
        search: (given == 3).then(|| SearchScope {
            organization_id: get(&s.organization_id),
            space_id: get(&s.space_id),
            project_id: get(&s.project_id),
            connection_id: s.connection_id.trim().to_string(),
        }),
    })
}

pub fn speech_client(endpoint: &str, api_key: SecretString) -> Result<SpeechSenseClient, String> {
    SpeechSenseClient::new(SpeechConfig::new(
        endpoint.to_string(),
        SpeechCredentials::ApiKey(api_key),
    ))
    .map_err(|e| e.to_string())
}

/// «Проверить подключение»: `(ok, message)`.
pub async fn check_connection(
    endpoint: &str,
    api_key: SecretString,
    connection_id: &str,
    lang: &str,
) -> (bool, String) {
    let l = if lang == "en" { Lang::En } else { Lang::Ru };
    let client = match speech_client(endpoint, api_key) {
        Ok(c) => c,
        Err(e) => return (false, e),
    };
    match tokio::time::timeout(
        Duration::from_secs(30),
        client.check_connection(connection_id),
    )
    .await
    {
        Ok(Ok(ConnectionCheck::Ok)) => (true, ConnectionCheck::Ok.message(l)),
        Ok(Ok(refused)) => (false, refused.message(l)),
        Ok(Err(e)) => (
            false,
            match l {
                Lang::Ru => format!("Не удалось связаться с SpeechSense: {e}"),
                Lang::En => format!("Could not reach SpeechSense: {e}"),
            },
        ),
        Err(_) => (
            false,
            match l {
                Lang::Ru => "SpeechSense не ответил за 30 секунд".to_string(),
                Lang::En => "SpeechSense did not answer within 30 s".to_string(),
            },
        ),
    }
}

fn describe(report: &CallReport, ru: bool) -> Option<String> {
    let Outcome::Failed { reason, detail } = &report.outcome else {
        return None;
    };
    Some(if ru {
        format!(
            "Звонок {}: не выгружен ({}): {detail}",
            report.call_id,
            reason.as_str()
        )
    } else {
        format!(
            "Call {}: not uploaded ({}): {detail}",
            report.call_id,
            reason.as_str()
        )
    })
}

impl Runner {
    /// The progress of this process's current or last run of the portal.
    pub fn progress(&self, member_id: &str) -> Option<Progress> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        Some(runs.get(member_id)?.state.snapshot())
    }

    /// The progress while this process runs an export of the portal (until its end is journaled).
    pub fn live_progress(&self, member_id: &str) -> Option<Progress> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let h = runs.get(member_id).filter(|h| !h.state.finished())?;
        Some(h.state.snapshot())
    }

    pub fn is_running(&self, member_id: &str) -> bool {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(member_id)
            .is_some_and(|h| !h.cancel.is_cancelled() && !h.state.finished())
    }

    /// Whether this process has a run of the portal that has not ended yet (also one that is stopping).
    pub fn has_run(&self, member_id: &str) -> bool {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(member_id)
            .is_some_and(|h| !h.state.finished())
    }

    /// Calls listed and not yet settled, over all runs of this process.
    pub fn queue_depth(&self) -> i64 {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|h| {
                let p = h.state.progress.lock().unwrap_or_else(|e| e.into_inner());
                if p.finished {
                    0
                } else {
                    p.found.saturating_sub(p.settled + p.awaiting_recording) as i64
                }
            })
            .sum()
    }

    /// The server shuts down: every run stops taking calls (uploads in flight finish, as the engine's shutdown
    /// does) and is journaled as interrupted by the shutdown, to be resumed on the next start. Returns tokens
    /// cancelled once each run has ended.
    pub fn shutdown_all(&self) -> Vec<CancellationToken> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.values()
            .filter(|h| !h.state.finished())
            .map(|h| {
                h.shutdown.store(true, Ordering::Relaxed);
                h.again.store(false, Ordering::Relaxed);
                h.cancel.cancel();
                h.ended.clone()
            })
            .collect()
    }

    /// Asks the run to stop (in-flight uploads finish). False when nothing runs.
    pub fn stop(&self, member_id: &str) -> bool {
        match self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(member_id)
        {
            Some(h) => {
                h.again.store(false, Ordering::Relaxed);
                h.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Marks that new calls may exist; the running run is followed by another one.
    pub fn poke(&self, member_id: &str) -> bool {
        match self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(member_id)
        {
            Some(h)
                if !h
                    .state
                    .progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .finished =>
            {
                h.again.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// The portal's REST client: one per portal in this process, as long as its endpoints stay the same. Its request
    /// limiter then spans every run, event and page request of the portal, so runs that follow each other (an event
    /// during a run, a catch-up right after) never start with a fresh burst against a bucket the last run filled.
    pub fn portal_client(&self, env: &RunEnv, portal: &Portal) -> Result<Bitrix24Client, String> {
        let endpoints = (
            portal.client_endpoint.clone(),
            portal.server_endpoint.clone(),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&portal.member_id) {
            if c.endpoints == endpoints {
                return Ok(c.client.clone());
            }
        }
        let source = StoreTokenSource::new(
            env.store.clone(),
            env.key.clone(),
            portal.member_id.clone(),
            Url::parse(&portal.client_endpoint).map_err(|e| e.to_string())?,
            Url::parse(&portal.server_endpoint).map_err(|e| e.to_string())?,
            env.oauth.clone(),
            env.locks.clone(),
            env.metrics.clone(),
        );
        let client = Bitrix24Client::new(
            Credentials::OAuth(Arc::new(source)),
            ClientConfig {
                rate: env.rate,
                ..ClientConfig::default()
            },
        )
        .map_err(|e| e.to_string())?;
        clients.insert(
            portal.member_id.clone(),
            PortalClient {
                endpoints,
                client: client.clone(),
            },
        );
        Ok(client)
    }

    /// Drops the portal's client (uninstalled).
    pub fn forget_client(&self, member_id: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(member_id);
    }

    /// Starts an export for the portal unless one runs. `Err` carries a message for the page.
    ///
    /// `trigger` `page` ("Start export") goes through every qualifying call from the start; every other trigger
    /// (`event`, `schedule`, `recheck`, …) is the continuous sync's incremental pass: what the ledger left
    /// unfinished or due for a recording check, then the calls after the high-water mark.
    pub fn start(
        self: &Arc<Self>,
        env: RunEnv,
        portal: Portal,
        settings: PortalSettings,
        api_key: SecretString,
        trigger: &str,
        lang: &str,
    ) -> Result<(), String> {
        let ru = lang != "en";
        let plan = plan(&settings, lang)
            .map_err(|errs| errs.into_values().collect::<Vec<_>>().join(" "))?;
        let speech = speech_client(&env.speechsense_endpoint, api_key)?;
        let bitrix = self.portal_client(&env, &portal)?;

        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = runs.get(&portal.member_id) {
            if !h
                .state
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .finished
            {
                return Err(if ru {
                    "Выгрузка уже идёт."
                } else {
                    "An export is already running."
                }
                .to_string());
            }
        }
        let state = Arc::new(RunState {
            progress: Mutex::new(Progress {
                running: true,
                trigger: trigger.to_string(),
                notice: (trigger == "resume").then(|| resumed_message(ru).to_string()),
                ..Progress::default()
            }),
            started: Instant::now(),
            errors: Mutex::new(VecDeque::new()),
            changes: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let again = Arc::new(AtomicBool::new(false));
        let shutdown = Arc::new(AtomicBool::new(false));
        let ended = CancellationToken::new();
        runs.insert(
            portal.member_id.clone(),
            Handle {
                cancel: cancel.clone(),
                state: state.clone(),
                again: again.clone(),
                shutdown: shutdown.clone(),
                ended: ended.clone(),
            },
        );
        drop(runs);

        let mut config = ExportConfig::new(portal.member_id.clone(), settings.connection_id.trim());
        config.filter = plan.filter;
        config.mono_policy = plan.mono;
        config.language = settings.language.trim().to_string();
        config.concurrency = env.concurrency;
        config.incremental = trigger != "page";
        // Only continuous sync comes back for a recording attached late; without it, a later "Start export" does.
        config.await_recordings = settings.sync_enabled.then_some(env.late_recordings);

        let metrics = env.metrics.clone();
        env.metrics.runs_started.inc();
        let progress_fn = progress_callback(state.clone(), metrics.clone(), ru);

        let this = self.clone();
        let member = portal.member_id.clone();
        let env2 = env.clone();
        let settings2 = settings.clone();
        let lang = lang.to_string();
        tokio::spawn(async move {
            let params = serde_json::json!({"trigger": trigger_of(&state), "connection_id": config.connection_id});
            let first = serde_json::to_value(state.snapshot()).unwrap_or_default();
            let run_id = match env.store.start_web_run(&member, &params, &first).await {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(member_id = %member, error = %e, "could not journal the run; its progress lives in memory only");
                    None
                }
            };
            let journal_done = CancellationToken::new();
            let journal = run_id.map(|id| {
                tokio::spawn(journal_progress(
                    env.store.clone(),
                    id,
                    state.clone(),
                    heartbeat(env.stale_after),
                    journal_done.clone(),
                ))
            });
            let source = Arc::new(Bitrix24Source::new(bitrix.clone()));
            let sink = Arc::new(SpeechSenseSink::new(speech, plan.search));
            let before = bitrix.stats();
            let result = run_export(
                source,
                sink,
                env.store.clone(),
                config,
                progress_fn,
                cancel.clone(),
            )
            .await;
            let after = bitrix.stats();
            metrics
                .rest_requests
                .inc_by(after.requests.saturating_sub(before.requests));
            metrics.rest_rejections.inc_by(
                (after.rate_limited + after.operating_limited)
                    .saturating_sub(before.rate_limited + before.operating_limited),
            );
            journal_done.cancel();
            if let Some(j) = journal {
                let _ = j.await;
            }
            let by_shutdown = shutdown.load(Ordering::Relaxed);
            let (status, summary, last) = end_of_run(&state, &result, &cancel, by_shutdown, ru);
            if let Some(id) = run_id {
                let stored = tokio::time::timeout(
                    JOURNAL_TIMEOUT,
                    env.store.finish_web_run(
                        id,
                        status,
                        &summary,
                        &serde_json::to_value(&last).unwrap_or_default(),
                    ),
                )
                .await;
                match stored {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not record the run's end"),
                    Err(_) => tracing::warn!("recording the run's end timed out"),
                }
            }
            // Only now the run counts as ended here: until its end is journaled the page reads it from memory.
            *state.progress.lock().unwrap_or_else(|e| e.into_inner()) = last;
            ended.cancel();
            tracing::info!(member_id = %member, status, "export run ended");
            if again.load(Ordering::Relaxed) && !cancel.is_cancelled() {
                let key = env2.key.clone();
                if let Ok(Some(portal)) = env2.store.portal(&key, &member).await {
                    if let Ok(Some(stored)) = env2.store.settings(&key, &member).await {
                        if let Some(api_key) = stored.api_key {
                            let _ = this.start(
                                env2.clone(),
                                portal,
                                settings2,
                                api_key,
                                "event",
                                &lang,
                            );
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

fn trigger_of(state: &RunState) -> String {
    state
        .progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .trigger
        .clone()
}

/// The journal's heartbeat for a staleness limit: a quarter of it, between 1 s and 10 s.
fn heartbeat(stale_after: Duration) -> Duration {
    (stale_after / 4).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX)
}

/// The engine's progress events applied to the run's in-memory progress and the metrics. Called from the
/// pipeline's tasks: it only takes the progress lock, never waits for the database.
fn progress_callback(st: Arc<RunState>, m: Arc<Metrics>, ru: bool) -> b24sense_engine::ProgressFn {
    Arc::new(move |ev: &ProgressEvent| {
        let mut p = st.progress.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            ProgressEvent::Found { n } => p.found += n,
            ProgressEvent::ListingDone { total } => {
                p.listing_done = true;
                p.found = p.found.max(*total);
            }
            ProgressEvent::Settled(r) => {
                p.settled += 1;
                p.bytes += r.bytes;
                m.upload_bytes.inc_by(r.bytes);
                match &r.outcome {
                    Outcome::Uploaded { .. } => {
                        p.uploaded += 1;
                        m.call_settled("uploaded");
                        if let Some(t) = r.upload_time {
                            m.upload_duration.observe(t.as_secs_f64());
                        }
                    }
                    Outcome::Skipped { reason } => {
                        *p.skipped.entry(reason.as_str().to_string()).or_insert(0) += 1;
                        m.call_settled("skipped");
                    }
                    Outcome::Failed { reason, .. } => {
                        *p.failed.entry(reason.as_str().to_string()).or_insert(0) += 1;
                        m.call_settled("failed");
                        if let Some(msg) = describe(r, ru) {
                            st.push_error(msg);
                        }
                    }
                }
            }
            ProgressEvent::AwaitingRecording { .. } => p.awaiting_recording += 1,
            ProgressEvent::BadRow { detail } => st.push_error(if ru {
                format!("Нечитаемая строка звонка: {detail}")
            } else {
                format!("Unreadable call row: {detail}")
            }),
        }
        drop(p);
        st.changes.fetch_add(1, Ordering::Relaxed);
    })
}

/// Writes the run's progress to its `runs` row while it goes: when it changed, at most once per
/// [`PROGRESS_EVERY`], and at least every `heartbeat` (the sign of life other replicas look for). Ends with
/// the run (`done`); each write is bounded in time.
async fn journal_progress(
    store: Store,
    run_id: i64,
    state: Arc<RunState>,
    heartbeat: Duration,
    done: CancellationToken,
) {
    let mut written = 0u64;
    let mut beat = Instant::now();
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
        let changes = state.changes.load(Ordering::Relaxed);
        if changes == written && beat.elapsed() < heartbeat {
            continue;
        }
        let progress = serde_json::to_value(state.snapshot()).unwrap_or_default();
        match tokio::time::timeout(JOURNAL_TIMEOUT, store.set_run_progress(run_id, &progress)).await
        {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(
                    run_id,
                    "the run's journal row was taken over by another server"
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(run_id, error = %e, "could not journal the run's progress")
            }
            Err(_) => tracing::warn!(run_id, "journaling the run's progress timed out"),
        }
        written = changes;
        beat = Instant::now();
    }
}

/// The run's final progress, its journal status and the summary to store.
fn end_of_run(
    state: &RunState,
    result: &Result<b24sense_engine::Summary, EngineError>,
    cancel: &CancellationToken,
    by_shutdown: bool,
    ru: bool,
) -> (&'static str, serde_json::Value, Progress) {
    let (stopped, summary) = match result {
        Ok(s) => (
            s.stopped.clone(),
            serde_json::to_value(s).unwrap_or_default(),
        ),
        Err(EngineError::Stopped { reason, summary }) => (
            Some(reason.clone()),
            serde_json::to_value(summary).unwrap_or_default(),
        ),
        Err(e) => (
            Some(e.to_string()),
            serde_json::json!({"error": e.to_string()}),
        ),
    };
    if let (Some(reason), false) = (&stopped, by_shutdown) {
        state.push_error(reason.clone());
    }
    let mut p = state.snapshot();
    p.running = false;
    p.finished = true;
    let elapsed = state.started.elapsed().as_secs_f64();
    p.elapsed_secs = elapsed as u64;
    p.rate = if elapsed > 0.0 {
        (p.settled + p.awaiting_recording) as f64 / elapsed
    } else {
        0.0
    };
    p.eta_secs = Some(0);
    let status = if by_shutdown {
        p.interrupted = true;
        p.eta_secs = None;
        p.stopped = Some(interrupted_message(ru).to_string());
        run_status::SHUTDOWN
    } else {
        p.stopped = if cancel.is_cancelled() {
            Some(if ru {
                "Остановлено пользователем.".into()
            } else {
                "Stopped by the user.".into()
            })
        } else {
            stopped.clone()
        };
        if stopped.is_some() {
            "stopped"
        } else {
            "finished"
        }
    };
    (status, summary, p)
}

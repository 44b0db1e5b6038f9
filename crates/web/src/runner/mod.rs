//! Export runs per portal: one at a time per portal, started from the page, by a call-end event, by the
//! periodic catch-up pass or by a restart that interrupted one, each with live progress the page polls.
//!
//! Parts: [`progress`] (what the page shows and how engine events update it; `eta`: the time left from the
//! recent pace), [`journal`] (the progress and the end written to the store's `runs` row, so they survive a
//! restart), `preflight` (the SpeechSense check before a run, the one message for a run stopped early, the
//! portal's count of the calls), `sync_totals` (what continuous sync delivered), [`clients`] (one REST client
//! per portal), [`chats`] (the chat lane: Open Lines sessions beside the calls when the settings name a chat
//! connection). This file keeps the registry of runs and starts them.

pub mod chats;
mod clients;
mod eta;
mod journal;
mod ledger_health;
mod preflight;
mod progress;
mod sync_totals;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24sense_bitrix24::RatePlan;
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::{run_export, EngineError, ExportConfig, LateRecordings};
use b24sense_store::{Portal, PortalSettings, SecretKey, Store};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::check::speech_client;
use crate::i18n::{self, Lang, Msg};
use crate::metrics::Metrics;
use crate::oauth::{OAuthClient, RefreshLocks, StoreTokenSource};
use crate::settings::plan;
use crate::trigger::Trigger;
use progress::{progress_callback, RunState};

pub use chats::ChatProgress;
pub use progress::Progress;
pub use sync_totals::{Delivered, SyncTotals};

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
    pub concurrency: b24sense_engine::Concurrency,
    pub rate: RatePlan,
    /// Connect only to public addresses (production; off for the local emulator).
    pub public_hosts_only: bool,
    /// With continuous sync on: how long and how often a call without a recording is checked again.
    pub late_recordings: LateRecordings,
    /// A run row without a heartbeat for this long belongs to a process that is gone.
    pub stale_after: Duration,
}

impl RunEnv {
    /// The installed portal's tokens as the Bitrix24 client reads them (refreshed at its OAuth server when due).
    pub fn token_source(&self, portal: &Portal) -> Result<StoreTokenSource, String> {
        let url = |u: &str, what: &str| {
            Url::parse(u).map_err(|e| format!("stored {what} of {}: {e}", portal.member_id))
        };
        Ok(StoreTokenSource::new(
            self.store.clone(),
            self.key.clone(),
            portal.member_id.clone(),
            url(&portal.client_endpoint, "client_endpoint")?,
            url(&portal.server_endpoint, "server_endpoint")?,
            self.oauth.clone(),
            self.locks.clone(),
            self.metrics.clone(),
        ))
    }
}

/// Runs of all portals.
#[derive(Default)]
pub struct Runner {
    runs: Mutex<HashMap<String, Handle>>,
    /// One REST client per portal (see [`Runner::portal_client`]), keyed by `member_id`.
    clients: Mutex<HashMap<String, clients::PortalClient>>,
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
                let p = h.state.lock();
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
            Some(h) if !h.state.finished() => {
                h.again.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Starts an export for the portal unless one runs. `Err` carries a message for the page.
    ///
    /// [`Trigger::Page`] ("Start export") goes through every qualifying call from the start; every other trigger
    /// is the continuous sync's incremental pass: what the ledger left unfinished or due for a recording check,
    /// then the calls after the high-water mark.
    pub fn start(
        self: &Arc<Self>,
        env: RunEnv,
        portal: Portal,
        settings: PortalSettings,
        api_key: SecretString,
        trigger: Trigger,
        lang: Lang,
    ) -> Result<(), String> {
        let plan = plan(&settings, lang)
            .map_err(|errs| errs.into_values().collect::<Vec<_>>().join(" "))?;
        // Not the administrator's to fix: logged, and the page says to try again.
        let cannot_start = |e: String| {
            tracing::error!(member_id = %portal.member_id, error = %e, "cannot start the export");
            Msg::CannotStart.text(lang).to_string()
        };
        let speech = speech_client(&env.speechsense_endpoint, api_key).map_err(cannot_start)?;
        let bitrix = self.portal_client(&env, &portal).map_err(cannot_start)?;

        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs
            .get(&portal.member_id)
            .is_some_and(|h| !h.state.finished())
        {
            return Err(Msg::AlreadyRunning.text(lang).to_string());
        }
        let chat_job = chats::ChatJob::new(
            &portal.member_id,
            plan.chats.clone(),
            &settings.language,
            trigger.is_incremental(),
            plan.search.clone(),
        );
        let state = Arc::new(RunState::new(Progress {
            chats: chat_job.as_ref().map(|_| ChatProgress {
                running: true,
                ..ChatProgress::default()
            }),
            running: true,
            trigger: Some(trigger),
            notice: (trigger == Trigger::Resume).then(|| Msg::Resumed.text(lang).to_string()),
            ..Progress::default()
        }));
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
        // A full run counts its calls first, for the time left while the listing goes on.
        let count_filter = (!trigger.is_incremental()).then(|| plan.filter.clone());
        config.filter = plan.filter;
        config.mono_policy = plan.mono;
        config.language = settings.language.trim().to_string();
        config.concurrency = env.concurrency;
        config.incremental = trigger.is_incremental();
        // Only continuous sync comes back for a recording attached late; without it, a later "Start export" does.
        config.await_recordings = settings.sync_enabled.then_some(env.late_recordings);

        let metrics = env.metrics.clone();
        env.metrics.runs_started.inc();
        let progress_fn = progress_callback(state.clone(), metrics.clone(), lang);

        let this = self.clone();
        let member = portal.member_id.clone();
        let env2 = env.clone();
        let settings2 = settings.clone();
        tokio::spawn(async move {
            state.lock().sync =
                preflight::sync_totals(&env.store, &member, &settings2, env.stale_after).await;
            let params = serde_json::json!({"trigger": trigger, "connection_id": config.connection_id,
                "chat_connection_id": chat_job.as_ref().map(|j| j.connection_id().to_string())});
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
                tokio::spawn(journal::journal_progress(
                    env.store.clone(),
                    id,
                    state.clone(),
                    journal::heartbeat(env.stale_after),
                    journal_done.clone(),
                ))
            });
            let before = bitrix.stats();
            // Counted before the export, not beside it: one request with the portal's tokens at a time, so an
            // expired access token is refreshed by one request, not raced by two.
            if let Some(filter) = count_filter {
                let total = preflight::count_calls(&bitrix, &filter).await;
                state.lock().expected = total;
            } else if chat_job.is_some() {
                // The same for an incremental run with chats: one request first, then the two lanes side by side.
                let _ = preflight::count_calls(&bitrix, &config.filter).await;
            }
            let chat_lane = chat_job.map(|job| {
                job.run(
                    bitrix.clone(),
                    speech.clone(),
                    env.store.clone(),
                    state.clone(),
                    cancel.clone(),
                    lang,
                )
            });
            let chat_lane = async move {
                match chat_lane {
                    Some(lane) => Some(lane.await),
                    None => None,
                }
            };
            let connection_id = config.connection_id.clone();
            let calls = async {
                match preflight::probe(&speech, &connection_id).await {
                    // Nothing is touched: the key or the connection is wrong, or SpeechSense is out of reach.
                    Err(stop) => (
                        Err(EngineError::Stopped {
                            reason: format!("SpeechSense check before the run: {stop:?}"),
                            summary: Box::default(),
                        }),
                        Some(i18n::run_stopped(lang, &stop)),
                    ),
                    Ok(()) => {
                        let source = Arc::new(Bitrix24Source::new(bitrix.clone()));
                        let sink = Arc::new(SpeechSenseSink::new(speech.clone(), plan.search));
                        let result = run_export(
                            source,
                            sink,
                            env.store.clone(),
                            config,
                            progress_fn,
                            cancel.clone(),
                        )
                        .await;
                        let fatal = match &result {
                            _ if cancel.is_cancelled() => None,
                            Ok(_) => None,
                            Err(EngineError::Stopped { reason, .. }) => {
                                let stop =
                                    preflight::classify_stop(&speech, &connection_id, reason).await;
                                Some(i18n::run_stopped(lang, &stop))
                            }
                            Err(e) => {
                                tracing::warn!(member_id = %member, error = %e, "the export failed");
                                Some(i18n::run_stopped(lang, &i18n::Stop::Other))
                            }
                        };
                        (result, fatal)
                    }
                }
            };
            // The calls and the chats side by side, on the one Bitrix24 client (one request bucket).
            let ((result, fatal), chat_summary) = tokio::join!(calls, chat_lane);
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
            let (status, mut summary, mut last) =
                journal::end_of_run(&state, &result, &cancel, by_shutdown, lang, fatal);
            if let (Some(chats), Some(s)) = (chat_summary, summary.as_object_mut()) {
                s.insert("chats".into(), chats);
            }
            let pass = Delivered::of(&last);
            if let (Some(totals), true) = (last.sync.as_mut(), trigger.is_incremental()) {
                totals.add_pass(pass, chrono::Utc::now(), bitrix.portal_offset());
            }
            if let Some(id) = run_id {
                journal::finish(&env.store, id, status, &summary, &last).await;
            }
            // Only now the run counts as ended here: until its end is journaled the page reads it from memory.
            *state.lock() = last;
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
                                Trigger::Event,
                                lang,
                            );
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

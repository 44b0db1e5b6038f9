//! A run's chat lane: when the portal's settings name a chat connection, the engine's chat export
//! ([`run_chat_export`]) runs beside the call export, on the same Bitrix24 client (so both draw from the portal's one
//! request bucket) and under its own lease on the portal (the chat lane, `{portal}#chats`). Its counts are kept
//! apart from the calls' ([`ChatProgress`], the `chats` of the page's progress), and it stops on its own: a refused
//! chat connection stops the chats, not the calls, and the other way round.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24sense_bitrix24::Bitrix24Client;
use b24sense_core::chat::ChatFilter;
use b24sense_engine::adapters::Bitrix24Source;
use b24sense_engine::chats::adapters::SpeechSenseTextSink;
use b24sense_engine::chats::{
    run_chat_export, ChatExportConfig, ChatOutcome, ChatProgressFn, ChatReport, ChatSummary,
};
use b24sense_speechsense::{ConnectionCheck, ConnectionKind, SearchScope, SpeechSenseClient};
use b24sense_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::progress::RunState;
use crate::i18n::{self, Lang, Stop};

/// How long the chat connection's check before the lane may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The chat lane's part of the progress: Open Lines sessions, counted apart from the calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatProgress {
    pub running: bool,
    /// Sessions whose result is known in this run (each counted once below).
    pub settled: u64,
    /// Sessions sent now (each one or more talks).
    pub uploaded: u64,
    /// Talks stored now (a very long history is several).
    pub talks: u64,
    /// Messages sent now.
    pub messages: u64,
    /// By reason: `already_uploaded` (an earlier run sent it), `no_client_message`, `too_few_client_messages`.
    pub skipped: BTreeMap<String, u64>,
    /// By reason (`session_open`): still open, sent once it closes.
    pub waiting: BTreeMap<String, u64>,
    /// By reason; `interrupted`: sessions a stop left unfinished (taken up again by the next run).
    pub failed: BTreeMap<String, u64>,
    pub finished: bool,
    /// Why the chat lane stopped early, with what to do.
    pub stopped: Option<String>,
}

/// What the chat lane of one run is asked to do.
pub(super) struct ChatJob {
    config: ChatExportConfig,
    search: Option<SearchScope>,
}

impl ChatJob {
    /// The lane for a portal whose settings name a chat connection (`chats`: the connection and the filter).
    pub(super) fn new(
        member: &str,
        chats: Option<(String, ChatFilter)>,
        language: &str,
        incremental: bool,
        search: Option<SearchScope>,
    ) -> Option<ChatJob> {
        let (connection_id, filter) = chats?;
        let mut config = ChatExportConfig::new(member, connection_id);
        config.filter = filter;
        config.options.language = language.trim().to_string();
        config.incremental = incremental;
        Some(ChatJob { config, search })
    }

    pub(super) fn connection_id(&self) -> &str {
        &self.config.connection_id
    }

    /// Runs the lane to its end (or the run's `cancel`): the chat connection's check, then the chat export.
    /// Returns the chat summary to journal.
    pub(super) async fn run(
        self,
        bitrix: Bitrix24Client,
        speech: SpeechSenseClient,
        store: Store,
        state: Arc<RunState>,
        cancel: CancellationToken,
        lang: Lang,
    ) -> Value {
        let id = self.config.connection_id.clone();
        if let Err(stop) = probe(&speech, &id).await {
            end(&state, Some(stopped_words(lang, &stop)));
            return json!({"stopped": format!("{stop:?}")});
        }
        let source = Arc::new(Bitrix24Source::new(bitrix));
        let sink = Arc::new(SpeechSenseTextSink::new(speech.clone(), self.search));
        let progress = callback(state.clone(), lang);
        match run_chat_export(source, sink, store, self.config, progress, cancel.clone()).await {
            Ok(summary) => {
                let stopped = match (&summary.stopped, summary.fatal) {
                    (Some(reason), true) if !cancel.is_cancelled() => {
                        tracing::warn!(%reason, "the chat export stopped early");
                        let stop = match probe(&speech, &id).await {
                            Err(stop @ Stop::SpeechSense(_)) => stop,
                            Err(unreachable) if reason.starts_with("SpeechSense") => unreachable,
                            _ if reason.contains("Bitrix24") => Stop::Bitrix24,
                            _ => Stop::Other,
                        };
                        Some(stopped_words(lang, &stop))
                    }
                    _ => None,
                };
                end(&state, stopped);
                summary_json(&summary)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the chat export failed");
                end(&state, Some(stopped_words(lang, &Stop::Other)));
                json!({"error": e.to_string()})
            }
        }
    }
}

/// The chat connection's check before the lane: `Ok` when SpeechSense accepts the key and it is a chat connection.
async fn probe(speech: &SpeechSenseClient, connection_id: &str) -> Result<(), Stop> {
    let check = speech.check_connection_as(connection_id, ConnectionKind::Chat);
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(ConnectionCheck::Ok)) => Ok(()),
        Ok(Ok(refused)) => Err(Stop::SpeechSense(refused)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "SpeechSense check of the chat connection failed");
            Err(Stop::SpeechSenseUnreachable)
        }
        Err(_) => Err(Stop::SpeechSenseUnreachable),
    }
}

/// The page's one message for a chat lane that stopped early: which field, and what to do.
fn stopped_words(lang: Lang, stop: &Stop) -> String {
    let words = match stop {
        Stop::Bitrix24 => i18n::chats_refused_by_bitrix24(lang).to_string(),
        Stop::SpeechSense(
            ConnectionCheck::UnknownConnection(_) | ConnectionCheck::WrongKind { .. },
        ) => {
            format!(
                "{}: {}",
                i18n::field_label(lang, "chat_connection_id"),
                i18n::run_stopped(lang, stop)
            )
        }
        other => i18n::run_stopped(lang, other),
    };
    i18n::chats_stopped(lang, &words)
}

/// The lane has ended, maybe early (`stopped`: why, with what to do).
fn end(state: &RunState, stopped: Option<String>) {
    let mut p = state.lock();
    let c = p.chats.get_or_insert_with(ChatProgress::default);
    c.running = false;
    c.finished = true;
    // Shown once, under the chats (not among the last errors too).
    if let Some(why) = stopped {
        c.stopped = Some(why);
    }
    drop(p);
    state.changes.fetch_add(1, Ordering::Relaxed);
}

/// Each session's result applied to the run's chat counts (only the progress lock is taken). A session is counted
/// once per run, by its first result: an incremental run reads the sessions the ledger holds open again by ID first,
/// and its listing may pass them again (then reported as waiting again, or as already uploaded).
fn callback(st: Arc<RunState>, lang: Lang) -> ChatProgressFn {
    let seen = Mutex::new(HashSet::new());
    Arc::new(move |r: &ChatReport| {
        if !seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.session_id)
        {
            return;
        }
        let mut p = st.lock();
        let c = p.chats.get_or_insert_with(ChatProgress::default);
        c.settled += 1;
        let bump =
            |m: &mut BTreeMap<String, u64>, k: &str| *m.entry(k.to_string()).or_default() += 1;
        let mut failure = None;
        match &r.outcome {
            ChatOutcome::Uploaded { talk_ids, .. } => {
                c.uploaded += 1;
                c.talks += talk_ids.len() as u64;
                c.messages += r.messages;
            }
            ChatOutcome::AlreadyUploaded => bump(&mut c.skipped, "already_uploaded"),
            // The page runs no dry run; counted as settled only.
            ChatOutcome::WouldUpload { .. } => {}
            ChatOutcome::Skipped { reason } => bump(&mut c.skipped, reason),
            ChatOutcome::Waiting { reason } => bump(&mut c.waiting, reason),
            ChatOutcome::Failed { reason, detail } => {
                bump(&mut c.failed, reason);
                if reason != "interrupted" {
                    tracing::debug!(session = r.session_id, %reason, %detail, "session not uploaded");
                    failure = Some(i18n::session_not_uploaded(lang, r.session_id, reason));
                }
            }
        }
        drop(p);
        if let Some(msg) = failure {
            st.push_error(msg);
        }
        st.changes.fetch_add(1, Ordering::Relaxed);
    })
}

/// What the run's journal keeps of the chat lane.
fn summary_json(s: &ChatSummary) -> Value {
    json!({
        "listed": s.listed, "uploaded": s.uploaded, "talks": s.talks, "messages": s.messages,
        "already_uploaded": s.already_uploaded, "reuploaded_after_crash": s.reuploaded_after_crash,
        "found_by_search": s.found_by_search, "skipped": s.skipped, "waiting": s.waiting, "failed": s.failed,
        "unsettled": s.unsettled, "bad_rows": s.bad_rows.len(), "wall_secs": s.wall_time.as_secs_f64(),
        "stopped": s.stopped, "fatal": s.fatal,
    })
}

//! A run's journal in the store's `runs` row: its progress while it goes (about once a second, and a heartbeat
//! other replicas read as a sign of life), written by a task of its own so the engine never waits for the
//! database, and its end ([`end_of_run`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24sense_engine::EngineError;
use b24sense_store::{run_status, Store};
use tokio_util::sync::CancellationToken;

use super::progress::{Progress, RunState};
use crate::i18n::{Lang, Msg};

/// The progress journal's pace: a write when something changed, at most once per this…
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// …and a heartbeat at least this often (a quarter of the staleness limit, so a live run is never taken for
/// a dead one), between these bounds.
const HEARTBEAT_MIN: Duration = Duration::from_secs(1);
const HEARTBEAT_MAX: Duration = Duration::from_secs(10);
/// How long one journal write may take before it is skipped (the next tick tries again).
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The journal's heartbeat for a staleness limit: a quarter of it, between 1 s and 10 s.
pub(super) fn heartbeat(stale_after: Duration) -> Duration {
    (stale_after / 4).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX)
}

/// Writes the run's progress to its `runs` row while it goes: when it changed, at most once per
/// [`PROGRESS_EVERY`], and at least every `heartbeat` (the sign of life other replicas look for). Ends with
/// the run (`done`); each write is bounded in time.
pub(super) async fn journal_progress(
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

/// Records the run's end in its row (bounded in time; a failure is logged, the page still has the memory).
pub(super) async fn finish(
    store: &Store,
    run_id: i64,
    status: &str,
    summary: &serde_json::Value,
    last: &Progress,
) {
    let stored = tokio::time::timeout(
        JOURNAL_TIMEOUT,
        store.finish_web_run(
            run_id,
            status,
            summary,
            &serde_json::to_value(last).unwrap_or_default(),
        ),
    )
    .await;
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record the run's end"),
        Err(_) => tracing::warn!("recording the run's end timed out"),
    }
}

/// The run's final progress, its journal status and the summary to store. `fatal`: the page's one message
/// for a run that stopped early on its own (wrong key, refused access, …), already translated.
pub(super) fn end_of_run(
    state: &RunState,
    result: &Result<b24sense_engine::Summary, EngineError>,
    cancel: &CancellationToken,
    by_shutdown: bool,
    lang: Lang,
    fatal: Option<String>,
) -> (&'static str, serde_json::Value, Progress) {
    let (stopped, summary) = match result {
        Ok(s) => (
            s.stopped.is_some(),
            serde_json::to_value(s).unwrap_or_default(),
        ),
        Err(EngineError::Stopped { summary, .. }) => {
            (true, serde_json::to_value(summary).unwrap_or_default())
        }
        Err(e) => (true, serde_json::json!({"error": e.to_string()})),
    };
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
    p.eta_secs = None;
    let status = if by_shutdown {
        p.interrupted = true;
        p.stopped = Some(Msg::Interrupted.text(lang).to_string());
        run_status::SHUTDOWN
    } else {
        p.stopped = if cancel.is_cancelled() {
            Some(Msg::StoppedByUser.text(lang).to_string())
        } else if stopped {
            Some(fatal.unwrap_or_else(|| crate::i18n::run_stopped(lang, &crate::i18n::Stop::Other)))
        } else {
            None
        };
        if p.stopped.is_some() {
            "stopped"
        } else {
            "finished"
        }
    };
    (status, summary, p)
}

//! Chat scenarios (issue 17): the real `run_chat_export` — `Bitrix24Client` with webhook credentials, the chat
//! connection of the SpeechSense emulator through `SpeechSenseClient`, a SQLite ledger — against the emulators on
//! loopback, with the portal's requests counted by kind at the port ([`CountingChats`]) and the bound the run is
//! compared with: the fewest requests the API allows (listing + histories) at the bucket's pace, or the uploads at
//! the most in flight, whichever is longer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use b24sense_core::chat::{ChatActivity, ChatFilter, ChatSession};
use b24sense_core::{CrmInfo, CrmRef};
use b24sense_engine::adapters::Bitrix24Source;
use b24sense_engine::chats::adapters::SpeechSenseTextSink;
use b24sense_engine::chats::{
    run_chat_export, ChatExportConfig, ChatOutcome, ChatProgressFn, ChatSource, SessionPage,
};
use b24sense_speechsense::{ConnectionCheck, ConnectionKind};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::measure;
use crate::report::{Bound, RunRow};
use crate::run::{ExportMeasure, RunOptions, Target};
use crate::scenario::Scenario;
use crate::BenchError;

/// Sessions per listing request (50 chained pages of 50) and histories per request (the batch limit).
pub const PER_LISTING_REQUEST: u64 = 2_500;
pub const PER_HISTORY_REQUEST: u64 = 50;
/// Issue 17's targets.
pub const TARGET_WALL_OVER_BOUND: f64 = 1.3;
pub const TARGET_PEAK_RSS_BYTES: f64 = 64e6;

/// What the chat export did and asked of the portal, counted at the port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMeasure {
    pub listed: u64,
    pub uploaded: u64,
    pub talks: u64,
    pub messages: u64,
    pub skipped: BTreeMap<String, u64>,
    pub waiting: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    /// `list_sessions` and `sessions_by_id` calls: one `batch` request each (≤ 2,500 sessions).
    pub listing_requests: u64,
    /// `histories` calls: one `batch` request each (≤ 50 sessions), and the sessions read.
    pub history_requests: u64,
    pub histories_read: u64,
    /// `crm_names` calls and the CRM records asked for (one request per 50 commands of ≤ 50 IDs).
    pub name_requests: u64,
    pub names_asked: u64,
}

#[derive(Debug, Default)]
struct Counters {
    listing: AtomicU64,
    history: AtomicU64,
    histories: AtomicU64,
    names: AtomicU64,
    names_asked: AtomicU64,
}

/// [`Bitrix24Source`] as the [`ChatSource`], with counters.
struct CountingChats {
    inner: Bitrix24Source,
    counters: Arc<Counters>,
}

impl ChatSource for CountingChats {
    type Error = b24sense_bitrix24::Error;

    async fn list_sessions(
        &self,
        filter: &ChatFilter,
        after_id: u64,
    ) -> Result<SessionPage, Self::Error> {
        self.counters.listing.fetch_add(1, Ordering::Relaxed);
        self.inner.list_sessions(filter, after_id).await
    }

    async fn sessions_by_id(&self, ids: &[u64]) -> Result<SessionPage, Self::Error> {
        self.counters.listing.fetch_add(1, Ordering::Relaxed);
        self.inner.sessions_by_id(ids).await
    }

    async fn histories(
        &self,
        sessions: &[ChatActivity],
    ) -> Result<BTreeMap<u64, Result<ChatSession, String>>, Self::Error> {
        self.counters.history.fetch_add(1, Ordering::Relaxed);
        self.counters
            .histories
            .fetch_add(sessions.len() as u64, Ordering::Relaxed);
        self.inner.histories(sessions).await
    }

    async fn crm_names(
        &self,
        crm: &[CrmRef],
    ) -> Result<std::collections::HashMap<CrmRef, CrmInfo>, Self::Error> {
        self.counters.names.fetch_add(1, Ordering::Relaxed);
        self.counters
            .names_asked
            .fetch_add(crm.len() as u64, Ordering::Relaxed);
        self.inner.crm_names(crm).await
    }
}

/// Runs the chat export against `target` as a `b24sense export --chat-connection-id` run would, and measures it.
pub async fn run_chat_side(
    scenario: &Scenario,
    target: &Target,
    opts: &RunOptions,
) -> Result<ExportMeasure, BenchError> {
    let name = scenario.name.clone();
    let (_dir, store) = crate::run::bench_ledger().await?;
    let (bitrix, speech_client) = crate::run::bench_clients(scenario, target)?;
    match speech_client
        .check_connection_as(&target.connection_id, ConnectionKind::Chat)
        .await
    {
        Ok(ConnectionCheck::Ok) => {}
        Ok(other) => {
            return Err(BenchError::Setup(format!(
                "SpeechSense refused: {}",
                other.message(b24sense_speechsense::Lang::En)
            )))
        }
        Err(e) => return Err(BenchError::Setup(format!("SpeechSense: {e}"))),
    }

    let mut config = ChatExportConfig::new(crate::run::PORTAL_KEY, target.connection_id.clone());
    if scenario.concurrency.is_some() {
        config.concurrency = scenario.concurrency_setting();
    }
    let counters = Arc::new(Counters::default());
    let source = Arc::new(CountingChats {
        inner: Bitrix24Source::new(bitrix.clone()),
        counters: counters.clone(),
    });
    let sink = Arc::new(SpeechSenseTextSink::new(speech_client, None));
    let settled = Arc::new(AtomicU64::new(0));
    let uploaded = Arc::new(AtomicU64::new(0));
    let progress: ChatProgressFn = {
        let (settled, uploaded) = (settled.clone(), uploaded.clone());
        Arc::new(move |r| {
            settled.fetch_add(1, Ordering::Relaxed);
            if matches!(r.outcome, ChatOutcome::Uploaded { .. }) {
                uploaded.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let shutdown = CancellationToken::new();

    let rss_baseline = measure::current_rss().unwrap_or(0);
    let cpu_before = measure::cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let ticker = {
        let (settled, uploaded, bitrix) = (settled.clone(), uploaded.clone(), bitrix.clone());
        let every = opts.progress_every;
        let name = name.clone();
        let sessions = scenario.portal.open_lines.sessions;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = bitrix.stats();
                eprintln!(
                    "[{name}] {:>6.0} s · settled {}/{sessions} · uploaded {} · portal requests {} · rate-limited {} · RSS {:.1} MiB",
                    started.elapsed().as_secs_f64(),
                    settled.load(Ordering::Relaxed),
                    uploaded.load(Ordering::Relaxed),
                    s.requests,
                    s.rate_limited,
                    measure::current_rss().unwrap_or(0) as f64 / 1048576.0,
                );
            }
        })
    };
    let statements_before = store.statements();
    let export = run_chat_export(
        source,
        sink,
        store.clone(),
        config,
        progress,
        shutdown.clone(),
    );
    let (result, timed_out) = crate::run::within(&name, opts.timeout, &shutdown, export).await?;
    let wall = started.elapsed();
    ticker.abort();
    let cpu = measure::cpu_seconds().unwrap_or(0.0) - cpu_before;
    let peak = measure::peak_rss().unwrap_or(0);
    let summary = result.map_err(|e| BenchError::Engine(e.to_string()))?;
    eprintln!(
        "[{name}] done in {:.1} s: listed {}, uploaded {}, skipped {:?}, waiting {:?}, failed {:?}",
        wall.as_secs_f64(),
        summary.listed,
        summary.uploaded,
        summary.skipped,
        summary.waiting,
        summary.failed,
    );
    let cs = bitrix.stats();
    let c = &counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(ExportMeasure {
        found: summary.listed,
        uploaded: summary.uploaded,
        skipped_by_reason: summary.skipped.clone(),
        failed_by_reason: summary.failed.clone(),
        stopped: summary.stopped.clone(),
        timed_out,
        wall_s: wall.as_secs_f64(),
        looked_up: load(&c.names_asked),
        client_requests: cs.requests,
        client_rate_limited: cs.rate_limited,
        rss_baseline_bytes: rss_baseline,
        peak_rss_bytes: peak,
        cpu_s: cpu,
        ledger_statements: store.statements() - statements_before,
        concurrency_trace: concurrency_trace(&summary),
        chat: Some(ChatMeasure {
            listed: summary.listed,
            uploaded: summary.uploaded,
            talks: summary.talks,
            messages: summary.messages,
            skipped: summary.skipped.clone(),
            waiting: summary.waiting.clone(),
            failed: summary.failed.clone(),
            listing_requests: load(&c.listing),
            history_requests: load(&c.history),
            histories_read: load(&c.histories),
            name_requests: load(&c.names),
            names_asked: load(&c.names_asked),
        }),
        ..ExportMeasure::default()
    })
}

fn concurrency_trace(summary: &b24sense_engine::ChatSummary) -> String {
    let t = &summary.concurrency;
    format!(
        "{} → peak {} → final {} (lowest {}; {} up, {} down)",
        t.initial, t.peak, t.last, t.lowest, t.increases, t.decreases
    )
}

/// The fewest portal requests the API allows for what the run read: the listing (2,500 sessions per request, and
/// keyset paging ends only on a short page, so a listing of exactly 2,500·k sessions takes k + 1) and one history
/// per finished session (50 per request). CRM names are not in it: they are the export's choice.
pub fn api_minimum(m: &ChatMeasure) -> u64 {
    listing_minimum(m.listed) + m.histories_read.div_ceil(PER_HISTORY_REQUEST)
}

fn listing_minimum(listed: u64) -> u64 {
    listed / PER_LISTING_REQUEST + 1
}

/// The chat run's bound: the API's minimum requests beyond the burst at the leak rate, or the uploads at the most
/// in flight (each waits the upload latency), whichever is longer.
pub fn chat_bound(scenario: &Scenario, m: &ChatMeasure) -> Bound {
    let (burst, per_second) = (
        u64::from(scenario.portal.rate.0),
        u64::from(scenario.portal.rate.1),
    );
    let rest_min_requests = api_minimum(m);
    let rest_s = rest_min_requests.saturating_sub(burst) as f64 / per_second.max(1) as f64;
    let upload_s = m.talks as f64 * scenario.upload_latency.as_secs_f64()
        / scenario.bound_concurrency().max(1) as f64;
    let (bound_s, limited_by) = if upload_s > rest_s {
        (upload_s, "upload")
    } else {
        (rest_s, "rest")
    };
    Bound {
        rest_min_requests,
        rest_s,
        upload_s,
        bytes_s: 0.0,
        bound_s,
        limited_by: limited_by.to_string(),
    }
}

/// Chat rows as a table, then each one's settings, requests by method and its targets.
pub fn render_chats(rows: &[RunRow]) -> String {
    use std::fmt::Write as _;
    let header = [
        "scenario",
        "sessions",
        "uploaded",
        "waiting",
        "skipped",
        "failed",
        "messages",
        "wall s",
        "REST req",
        "API min",
        "listing",
        "histories",
        "names",
        "rate-limited",
        "sessions/s",
        "RSS base MiB",
        "peak RSS MiB",
        "CPU s",
        "emu CPU s",
        "bound s",
        "wall/bound",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let empty = ChatMeasure::default();
    for r in rows {
        let c = r.chat.as_ref().unwrap_or(&empty);
        cells.push(vec![
            r.scenario.clone(),
            r.calls.to_string(),
            c.uploaded.to_string(),
            c.waiting.values().sum::<u64>().to_string(),
            c.skipped.values().sum::<u64>().to_string(),
            c.failed.values().sum::<u64>().to_string(),
            c.messages.to_string(),
            format!("{:.1}", r.wall_s),
            r.http_requests.to_string(),
            r.bound.rest_min_requests.to_string(),
            c.listing_requests.to_string(),
            c.history_requests.to_string(),
            c.name_requests.to_string(),
            r.rate_limited.to_string(),
            format!("{:.1}", c.listed as f64 / r.wall_s.max(1e-9)),
            format!("{:.1}", r.rss_baseline_mb),
            format!("{:.1}", r.peak_rss_mb),
            format!("{:.1}", r.cpu_s),
            r.emulator_cpu_s
                .map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            format!("{:.1} ({})", r.bound.bound_s, r.bound.limited_by),
            format!("{:.2}", r.wall_over_bound),
        ]);
    }
    let mut out = crate::report::columns(&cells);
    out.push('\n');
    for r in rows {
        let c = r.chat.as_ref().unwrap_or(&empty);
        let _ = writeln!(out, "{}: {}", r.scenario, r.settings);
        let _ = writeln!(
            out,
            "  bound: API minimum {} requests (listing {} + histories {}) → {:.1} s at the bucket; {} talks' uploads at \
             the most in flight → {:.1} s",
            r.bound.rest_min_requests,
            listing_minimum(c.listed),
            c.histories_read.div_ceil(PER_HISTORY_REQUEST),
            r.bound.rest_s,
            c.talks,
            r.bound.upload_s,
        );
        let methods: Vec<String> = r
            .by_method
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "  portal methods: {} · CRM records asked {} · uploads in flight {}",
            methods.join(" "),
            c.names_asked,
            r.concurrency_trace
        );
        let _ = writeln!(
            out,
            "  skipped {:?} · waiting {:?} · failed {:?} · talks {}{}{}",
            c.skipped,
            c.waiting,
            c.failed,
            c.talks,
            if r.timed_out { " · TIMED OUT" } else { "" },
            r.stopped
                .as_deref()
                .map(|s| format!(" · stopped: {s}"))
                .unwrap_or_default()
        );
        for line in targets(r) {
            let _ = writeln!(out, "  target: {line}");
        }
    }
    out
}

/// Issue 17's targets against what the row measured, one line each.
pub fn targets(r: &RunRow) -> Vec<String> {
    let empty = ChatMeasure::default();
    let c = r.chat.as_ref().unwrap_or(&empty);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let extra = r.http_requests.saturating_sub(r.bound.rest_min_requests);
    // One CRM-names request per listing request is the export's allowance on top of the API's minimum.
    let requests_ok = r.http_requests <= r.bound.rest_min_requests + c.listing_requests;
    let peak_bytes = r.peak_rss_mb * 1048576.0;
    vec![
        format!(
            "REST requests {} vs the API minimum {} (+{extra}: {} CRM-name requests, ≤ 1 per listing request): {}",
            r.http_requests,
            r.bound.rest_min_requests,
            c.name_requests,
            verdict(requests_ok)
        ),
        format!(
            "wall {:.1} s ≤ {TARGET_WALL_OVER_BOUND} × bound {:.1} s: {:.2} × — {}",
            r.wall_s,
            r.bound.bound_s,
            r.wall_over_bound,
            verdict(r.wall_over_bound <= TARGET_WALL_OVER_BOUND)
        ),
        format!(
            "peak RSS {:.1} MB ({:.1} MiB) < 64 MB: {}",
            peak_bytes / 1e6,
            r.peak_rss_mb,
            verdict(peak_bytes < TARGET_PEAK_RSS_BYTES)
        ),
        format!(
            "rate-limit refusals {} = 0: {}",
            r.rate_limited,
            verdict(r.rate_limited == 0)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::scenario;

    fn measured(listed: u64, read: u64, talks: u64) -> ChatMeasure {
        ChatMeasure {
            listed,
            histories_read: read,
            talks,
            listing_requests: listed / PER_LISTING_REQUEST + 1,
            ..ChatMeasure::default()
        }
    }

    #[test]
    fn the_api_minimum_is_the_listing_and_one_history_per_session_in_fifties() {
        // 10,000 sessions: 4 full listing requests and the short one that ends the keyset; 8,983 histories.
        assert_eq!(api_minimum(&measured(10_000, 8_983, 8_982)), 5 + 180);
        assert_eq!(api_minimum(&measured(2_499, 2_000, 0)), 1 + 40);
        let s = scenario("chats-10k").unwrap();
        let b = chat_bound(&s, &measured(10_000, 8_983, 8_982));
        // (185 − 50) ÷ 2 s; the uploads at the adaptive ceiling (32) take 8,982 × 0.1 ÷ 32 = 28 s.
        assert!((b.rest_s - 67.5).abs() < 1e-9);
        assert!((b.upload_s - 8_982.0 * 0.1 / 32.0).abs() < 1e-9);
        assert_eq!(b.limited_by, "rest");
    }

    #[test]
    fn targets_say_met_or_missed() {
        let s = scenario("chats-10k").unwrap();
        let m = measured(10_000, 8_983, 8_982);
        let row = |requests: u64, wall_s: f64, rss_mib: f64| {
            let bound = chat_bound(&s, &m);
            RunRow {
                http_requests: requests,
                wall_s,
                peak_rss_mb: rss_mib,
                wall_over_bound: wall_s / bound.bound_s,
                bound,
                chat: Some(m.clone()),
                ..RunRow::default()
            }
        };
        let good = targets(&row(190, 72.9, 37.5));
        assert!(good.iter().all(|l| l.ends_with("met")), "{good:?}");
        // One names request per history batch (the old way), a slow run, a big one.
        let bad = targets(&row(367, 310.0, 70.0));
        assert_eq!(
            bad.iter().filter(|l| l.contains("MISSED")).count(),
            3,
            "{bad:?}"
        );
    }
}

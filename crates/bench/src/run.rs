//! Runs one scenario: both emulators on loopback ([`Emulators`]), and the export wired exactly as `b24sense export`
//! wires it (webhook client, API-key SpeechSense client, preflight, the ledger in a SQLite file, `run_export`) in
//! [`run_export_side`]. The two halves can live in different processes, so that the export's memory and CPU are
//! measured without the emulators'.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24sense_bitrix24::{
    Bitrix24Client, ClientConfig as Bitrix24Config, Credentials as Bitrix24Credentials, RatePlan,
    WebhookUrl,
};
use b24sense_emulators::bitrix24::Bitrix24Emulator;
use b24sense_emulators::speechsense::{
    ConnectionKind, SpeechSenseConfig as EmulatorConfig, SpeechSenseEmulator,
};
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::{run_export, EngineError, ExportConfig, ProgressEvent, ProgressFn, Summary};
use b24sense_speechsense::{
    ClientConfig as SpeechSenseConfig, ConnectionCheck, Credentials as SpeechSenseCredentials,
    SpeechSenseClient,
};
use b24sense_store::Store;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::chats::{chat_bound, ChatMeasure};
use crate::counting::{CountingSource, SourceCounters};
use crate::measure;
use crate::report::{Bound, BoundInputs, RunRow};
use crate::scenario::{Kind, Scenario};
use crate::BenchError;

/// How a scenario is run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// After this long the export is asked to stop (in-flight uploads finish) and the row is marked timed out.
    pub timeout: Duration,
    /// Bytes copied over loopback to measure its throughput (0 = skip; the bytes bound is then 0).
    pub loopback_probe_bytes: u64,
    /// Progress lines on stderr every this often.
    pub progress_every: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(30 * 60),
            loopback_probe_bytes: 256 * 1024 * 1024,
            progress_every: Duration::from_secs(10),
        }
    }
}

/// Counts kept from progress events, for the progress lines.
#[derive(Debug, Default)]
struct Live {
    found: AtomicU64,
    settled: AtomicU64,
    uploaded: AtomicU64,
}

fn progress_fn(live: Arc<Live>) -> ProgressFn {
    Arc::new(move |e: &ProgressEvent| match e {
        ProgressEvent::Found { n } => {
            live.found.fetch_add(*n, Ordering::Relaxed);
        }
        ProgressEvent::Settled(r) => {
            live.settled.fetch_add(1, Ordering::Relaxed);
            if matches!(r.outcome, b24sense_core::Outcome::Uploaded { .. }) {
                live.uploaded.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {}
    })
}

pub(crate) const PORTAL_KEY: &str = "bench.bitrix24.local";

/// Where the export connects: the emulators' addresses and credentials (handed to a child process on its stdin).
#[derive(Clone, Serialize, Deserialize)]
pub struct Target {
    /// Contains the emulated portal's webhook secret: never printed.
    pub webhook_url: String,
    pub speechsense_endpoint: String,
    /// The emulator's API key: never printed.
    pub api_key: String,
    pub connection_id: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("webhook_url", &"<redacted>")
            .field("speechsense_endpoint", &self.speechsense_endpoint)
            .field("api_key", &"<redacted>")
            .field("connection_id", &self.connection_id)
            .finish()
    }
}

/// Both emulators of a scenario, running in this process.
pub struct Emulators {
    pub portal: Bitrix24Emulator,
    pub speech: SpeechSenseEmulator,
    target: Target,
}

impl Emulators {
    pub async fn start(scenario: &Scenario) -> Result<Emulators, BenchError> {
        let portal = Bitrix24Emulator::start(scenario.portal.clone())
            .await
            .map_err(BenchError::Emulator)?;
        let speech_config = EmulatorConfig {
            upload_latency: scenario.upload_latency,
            ..EmulatorConfig::default()
        };
        let kind = match scenario.kind {
            Kind::Calls => ConnectionKind::TwoChannelAudio,
            Kind::Chats => ConnectionKind::Chat,
        };
        let connection_id = speech_config
            .connection_id(kind)
            .ok_or_else(|| BenchError::Setup(format!("no {kind:?} connection")))?
            .to_string();
        let target = Target {
            webhook_url: portal.webhook_url(),
            speechsense_endpoint: String::new(),
            api_key: speech_config.api_keys[0].clone(),
            connection_id,
        };
        let speech = SpeechSenseEmulator::start(speech_config)
            .await
            .map_err(BenchError::Emulator)?;
        let target = Target {
            speechsense_endpoint: speech.endpoint(),
            ..target
        };
        Ok(Emulators {
            portal,
            speech,
            target,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// What the export side measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportMeasure {
    pub found: u64,
    pub uploaded: u64,
    pub skipped_by_reason: BTreeMap<String, u64>,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub stopped: Option<String>,
    pub timed_out: bool,
    pub wall_s: f64,
    pub bytes_uploaded: u64,
    pub looked_up: u64,
    /// `resolve_files` calls: one `disk.file.get` batch each (the engine passes at most 50 IDs).
    pub disk_batches: u64,
    pub disk_resolved: u64,
    /// Download requests to the portal's host that took a limiter token (the client's count, every attempt).
    pub counted_downloads: u64,
    /// Downloads the engine started from the portal's host / from elsewhere (`CALL_RECORD_URL`).
    pub portal_downloads_started: u64,
    pub external_downloads: u64,
    pub client_requests: u64,
    pub client_rate_limited: u64,
    pub rss_baseline_bytes: u64,
    pub peak_rss_bytes: u64,
    pub cpu_s: f64,
    /// Statements the ledger sent to its database during the export.
    #[serde(default)]
    pub ledger_statements: u64,
    /// How the limit on calls in flight moved (the summary's trace), in words.
    pub concurrency_trace: String,
    /// The summary's download accounting at the end of the run (`counted`, `uncounted`, or "" when none).
    pub download_accounting: String,
    /// A chat scenario's own counts.
    #[serde(default)]
    pub chat: Option<ChatMeasure>,
}

/// Runs the export against `target` as `b24sense export` does and measures it; progress goes to stderr.
pub async fn run_export_side(
    scenario: &Scenario,
    target: &Target,
    opts: &RunOptions,
) -> Result<ExportMeasure, BenchError> {
    if scenario.kind == Kind::Chats {
        return crate::chats::run_chat_side(scenario, target, opts).await;
    }
    let name = scenario.name.clone();
    let (_dir, store) = bench_ledger().await?;

    // The same clients `export_command` builds, with the rate plan matching the emulated portal's bucket.
    let portal_origin = Url::parse(&target.webhook_url)
        .map_err(|e| BenchError::Setup(format!("webhook: {e}")))?
        .origin();
    let (bitrix, speech_client) = bench_clients(scenario, target)?;
    match speech_client.check_connection(&target.connection_id).await {
        Ok(ConnectionCheck::Ok) => {}
        Ok(other) => {
            return Err(BenchError::Setup(format!(
                "SpeechSense refused: {}",
                other.message(b24sense_speechsense::Lang::En)
            )))
        }
        Err(e) => return Err(BenchError::Setup(format!("SpeechSense: {e}"))),
    }

    let mut config = ExportConfig::new(PORTAL_KEY, target.connection_id.clone());
    config.concurrency = scenario.concurrency_setting();

    let counters = Arc::new(SourceCounters::default());
    let source = Arc::new(CountingSource {
        inner: Bitrix24Source::new(bitrix.clone()),
        portal_origin,
        counters: counters.clone(),
    });
    let sink = Arc::new(SpeechSenseSink::new(speech_client, None));
    let live = Arc::new(Live::default());
    let shutdown = CancellationToken::new();

    let rss_baseline = measure::current_rss().unwrap_or(0);
    let cpu_before = measure::cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();

    let ticker = {
        let live = live.clone();
        let bitrix = bitrix.clone();
        let every = opts.progress_every;
        let name = name.clone();
        let calls = scenario.portal.calls;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = bitrix.stats();
                eprintln!(
                    "[{name}] {:>6.0} s · listed {}/{calls} · settled {} · uploaded {} · portal requests {} · rate-limited {}",
                    started.elapsed().as_secs_f64(),
                    live.found.load(Ordering::Relaxed),
                    live.settled.load(Ordering::Relaxed),
                    live.uploaded.load(Ordering::Relaxed),
                    s.requests,
                    s.rate_limited,
                );
            }
        })
    };

    let statements_before = store.statements();
    let export = run_export(
        source,
        sink,
        store.clone(),
        config,
        progress_fn(live.clone()),
        shutdown.clone(),
    );
    let (result, timed_out) = within(&name, opts.timeout, &shutdown, export).await?;
    let wall = started.elapsed();
    ticker.abort();
    let cpu = measure::cpu_seconds().unwrap_or(0.0) - cpu_before;
    let peak = measure::peak_rss().unwrap_or(0);

    let (summary, stopped) = match result {
        Ok(s) => {
            let stopped = s.stopped.clone();
            (s, stopped)
        }
        Err(EngineError::Stopped { reason, summary }) => (*summary, Some(reason)),
        Err(e) => return Err(BenchError::Engine(e.to_string())),
    };
    log_summary(&name, &summary, wall);
    let cs = bitrix.stats();
    let c = &counters;
    Ok(ExportMeasure {
        found: summary.found,
        uploaded: summary.uploaded,
        skipped_by_reason: summary.skipped.clone(),
        failed_by_reason: summary.failed.clone(),
        stopped,
        timed_out,
        wall_s: wall.as_secs_f64(),
        bytes_uploaded: summary.bytes_uploaded,
        looked_up: c.looked_up.load(Ordering::Relaxed),
        disk_batches: c.disk_requests.load(Ordering::Relaxed),
        disk_resolved: c.disk_resolved.load(Ordering::Relaxed),
        counted_downloads: cs.portal_downloads,
        portal_downloads_started: c.portal_downloads.load(Ordering::Relaxed),
        external_downloads: c.external_downloads.load(Ordering::Relaxed),
        client_requests: cs.requests,
        client_rate_limited: cs.rate_limited,
        rss_baseline_bytes: rss_baseline,
        peak_rss_bytes: peak,
        cpu_s: cpu,
        ledger_statements: store.statements() - statements_before,
        concurrency_trace: {
            let t = &summary.concurrency;
            format!(
                "{} → peak {} → final {} (lowest {}; {} up, {} down)",
                t.initial, t.peak, t.last, t.lowest, t.increases, t.decreases
            )
        },
        download_accounting: summary
            .download_accounting
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        chat: None,
    })
}

/// Where the export ran, for the row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// In this process, with the emulators: RSS and CPU include them.
    Shared,
    /// In a child process of its own; the emulators (in this process) used this much CPU meanwhile.
    Child { emulator_cpu_s: f64 },
}

/// What the bound of a run is computed from: the scenario's limits and what the run needed.
fn bound_inputs(
    scenario: &Scenario,
    m: &ExportMeasure,
    loopback_bytes: u64,
    loopback_bytes_per_s: f64,
) -> BoundInputs {
    BoundInputs {
        listed: m.found,
        looked_up: m.looked_up,
        disk_resolved: m.disk_resolved,
        // A download takes a bucket token only where the portal counts it, whatever the client did.
        counted_downloads: if scenario.portal.count_downloads {
            m.portal_downloads_started
        } else {
            0
        },
        burst: u64::from(scenario.portal.rate.0),
        per_second: u64::from(scenario.portal.rate.1),
        uploads: m.uploaded,
        download_latency: scenario.portal.download_latency,
        upload_latency: scenario.upload_latency,
        concurrency: scenario.bound_concurrency(),
        bytes: loopback_bytes,
        loopback_bytes_per_s,
    }
}

/// Puts the export's measurements and the emulators' counters together into a row with its bound.
pub fn make_row(
    scenario: &Scenario,
    emulators: &Emulators,
    m: &ExportMeasure,
    placement: Placement,
    loopback_bytes_per_s: f64,
) -> RunRow {
    let ps = emulators.portal.stats();
    let ss = emulators.speech.stats();
    let batch_requests = ps.by_method.get("batch").copied().unwrap_or(0);
    let calls = match scenario.kind {
        Kind::Calls => scenario.portal.calls,
        Kind::Chats => scenario.portal.open_lines.sessions,
    } as u64;
    let loopback_bytes = ps.bytes_sent + ss.bytes_received;
    let bound = match &m.chat {
        Some(chat) => chat_bound(scenario, chat),
        None => Bound::compute(&bound_inputs(
            scenario,
            m,
            loopback_bytes,
            loopback_bytes_per_s,
        )),
    };
    let wall_s = m.wall_s.max(1e-9);
    let per_1000 = |x: f64| {
        if calls > 0 {
            x * 1000.0 / calls as f64
        } else {
            0.0
        }
    };
    let emulator_cpu_s = match placement {
        Placement::Child { emulator_cpu_s } => Some(emulator_cpu_s),
        Placement::Shared => None,
    };
    RunRow {
        scenario: scenario.name.clone(),
        settings: scenario.describe(),
        calls,
        found: m.found,
        uploaded: m.uploaded,
        skipped: m.skipped_by_reason.values().sum(),
        failed: m.failed_by_reason.values().sum(),
        skipped_by_reason: m.skipped_by_reason.clone(),
        failed_by_reason: m.failed_by_reason.clone(),
        talks_stored: emulators.speech.talk_count() as u64,
        stopped: m.stopped.clone(),
        timed_out: m.timed_out,
        wall_s: m.wall_s,
        http_requests: ps.http_requests,
        http_requests_per_1000_calls: per_1000(ps.http_requests as f64),
        batch_requests,
        listing_enrichment_requests: batch_requests.saturating_sub(m.disk_batches),
        disk_batches: m.disk_batches,
        by_method: ps.by_method.clone(),
        looked_up: m.looked_up,
        disk_resolved: m.disk_resolved,
        portal_downloads: m.portal_downloads_started,
        counted_downloads: m.counted_downloads,
        external_downloads: m.external_downloads,
        rate_limited: ps.rate_limited,
        uploads_per_s: m.uploaded as f64 / wall_s,
        mb_per_s: m.bytes_uploaded as f64 / 1e6 / wall_s,
        bytes_uploaded: m.bytes_uploaded,
        loopback_bytes,
        rss_baseline_mb: m.rss_baseline_bytes as f64 / 1048576.0,
        peak_rss_mb: m.peak_rss_bytes as f64 / 1048576.0,
        export_in_child: matches!(placement, Placement::Child { .. }),
        cpu_s: m.cpu_s,
        ledger_statements: m.ledger_statements,
        concurrency_trace: m.concurrency_trace.clone(),
        download_accounting: m.download_accounting.clone(),
        cpu_s_per_1000_calls: per_1000(m.cpu_s),
        emulator_cpu_s,
        emulator_cpu_s_per_1000_calls: emulator_cpu_s.map(per_1000),
        loopback_mb_per_s: loopback_bytes_per_s / 1e6,
        wall_over_bound: if bound.bound_s > 0.0 {
            m.wall_s / bound.bound_s
        } else {
            0.0
        },
        bound,
        chat: m.chat.clone(),
    }
}

/// Measures loopback throughput with `bytes` (0 = skip, returns 0).
pub async fn loopback(name: &str, bytes: u64) -> Result<f64, BenchError> {
    if bytes == 0 {
        return Ok(0.0);
    }
    eprintln!(
        "[{name}] measuring loopback throughput ({} MiB)…",
        bytes / 1024 / 1024
    );
    Ok(
        tokio::task::spawn_blocking(move || measure::loopback_throughput(bytes))
            .await
            .map_err(|e| BenchError::Internal(e.to_string()))??,
    )
}

/// Runs `scenario` once with the emulators and the export in this process (RSS and CPU then include the
/// emulators). The binary's default runs the export in a child process instead.
pub async fn run_scenario(scenario: &Scenario, opts: &RunOptions) -> Result<RunRow, BenchError> {
    let loopback_bps = loopback(&scenario.name, opts.loopback_probe_bytes).await?;
    eprintln!(
        "[{}] starting emulators: {}",
        scenario.name,
        scenario.describe()
    );
    let emulators = Emulators::start(scenario).await?;
    let m = run_export_side(scenario, emulators.target(), opts).await?;
    Ok(make_row(
        scenario,
        &emulators,
        &m,
        Placement::Shared,
        loopback_bps,
    ))
}

/// A fresh SQLite ledger in a temporary directory (kept alive by the returned guard).
pub(crate) async fn bench_ledger() -> Result<(tempfile::TempDir, Store), BenchError> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!(
        "sqlite:{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .map_err(|e| BenchError::Setup(format!("ledger: {e}")))?;
    Ok((dir, store))
}

/// The clients `export_command` builds, with the rate plan matching the emulated portal's bucket.
pub(crate) fn bench_clients(
    scenario: &Scenario,
    target: &Target,
) -> Result<(Bitrix24Client, SpeechSenseClient), BenchError> {
    let webhook = WebhookUrl::parse(&target.webhook_url)
        .map_err(|e| BenchError::Setup(format!("webhook: {e}")))?;
    let bitrix = Bitrix24Client::new(
        Bitrix24Credentials::Webhook(webhook),
        Bitrix24Config {
            rate: RatePlan {
                capacity: scenario.portal.rate.0,
                per_second: scenario.portal.rate.1,
            },
            ..Bitrix24Config::default()
        },
    )
    .map_err(|e| BenchError::Setup(format!("Bitrix24 client: {e}")))?;
    let speech = SpeechSenseClient::new(SpeechSenseConfig::new(
        target.speechsense_endpoint.clone(),
        SpeechSenseCredentials::ApiKey(SecretString::from(target.api_key.clone())),
    ))
    .map_err(|e| BenchError::Setup(format!("SpeechSense client: {e}")))?;
    Ok((bitrix, speech))
}

/// Runs an export for at most `limit`; past it, stops it (`shutdown`: in-flight uploads finish) and waits up to
/// two minutes more. Returns the export's result and whether it timed out.
pub(crate) async fn within<T>(
    name: &str,
    limit: Duration,
    shutdown: &CancellationToken,
    export: impl std::future::Future<Output = T>,
) -> Result<(T, bool), BenchError> {
    tokio::pin!(export);
    tokio::select! {
        r = &mut export => Ok((r, false)),
        _ = tokio::time::sleep(limit) => {
            eprintln!("[{name}] timeout after {limit:?}: stopping (in-flight uploads finish)");
            shutdown.cancel();
            match tokio::time::timeout(Duration::from_secs(120), &mut export).await {
                Ok(r) => Ok((r, true)),
                Err(_) => Err(BenchError::Timeout(limit)),
            }
        }
    }
}

fn log_summary(name: &str, summary: &Summary, wall: Duration) {
    eprintln!(
        "[{name}] done in {:.1} s: listed {}, uploaded {}, skipped {:?}, failed {:?}",
        wall.as_secs_f64(),
        summary.found,
        summary.uploaded,
        summary.skipped,
        summary.failed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::scenario;

    #[test]
    fn downloads_count_in_the_bound_only_where_the_portal_counts_them() {
        let m = ExportMeasure {
            found: 2_000,
            uploaded: 1_100,
            disk_resolved: 150,
            portal_downloads_started: 150,
            // The client's own count does not matter: the bound is what the portal imposes.
            counted_downloads: 150,
            ..ExportMeasure::default()
        };
        let plain = Bound::compute(&bound_inputs(
            &scenario("realistic-2k").unwrap(),
            &m,
            0,
            0.0,
        ));
        let counted = Bound::compute(&bound_inputs(
            &scenario("realistic-2k-counted").unwrap(),
            &m,
            0,
            0.0,
        ));
        // 1 listing + 3 Disk batches; + 150 downloads where counted: (154 − 50) ÷ 2 = 52 s.
        assert_eq!(plain.rest_min_requests, 4);
        assert_eq!(plain.rest_s, 0.0);
        assert_eq!(counted.rest_min_requests, 154);
        assert!((counted.rest_s - 52.0).abs() < 1e-9);
        assert_eq!(counted.limited_by, "rest");
        // Both: 1,100 × (150 + 100 ms) ÷ the adaptive ceiling.
        let ceiling = scenario("realistic-2k").unwrap().bound_concurrency() as f64;
        assert!((plain.upload_s - 1_100.0 * 0.25 / ceiling).abs() < 1e-9);
    }
}

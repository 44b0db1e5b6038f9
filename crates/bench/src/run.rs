//! Runs one scenario: both emulators on loopback, the ledger in a temporary SQLite file, and the export wired
//! exactly as `b24sense export` wires it (webhook client, API-key SpeechSense client, preflight, `run_export`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24sense_bitrix24::{
    Bitrix24Client, ClientConfig as Bitrix24Config, Credentials as Bitrix24Credentials, RatePlan,
    WebhookUrl,
};
use b24sense_core::{CallFilter, CrmRef};
use b24sense_emulators::bitrix24::Bitrix24Emulator;
use b24sense_emulators::speechsense::{SpeechSenseConfig as EmulatorConfig, SpeechSenseEmulator};
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::ports::{CallPage, CallSource, Names, Recording};
use b24sense_engine::{run_export, EngineError, ExportConfig, ProgressEvent, ProgressFn, Summary};
use b24sense_speechsense::{
    ClientConfig as SpeechSenseConfig, ConnectionCheck, Credentials as SpeechSenseCredentials,
    SpeechSenseClient,
};
use b24sense_store::Store;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::measure;
use crate::report::{Bound, BoundInputs, RunRow};
use crate::scenario::Scenario;
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
    /// Whether this process runs only this scenario (so `VmHWM` is the scenario's own peak).
    pub own_process: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(30 * 60),
            loopback_probe_bytes: 256 * 1024 * 1024,
            progress_every: Duration::from_secs(10),
            own_process: false,
        }
    }
}

/// What the engine asked of the portal, counted at the port (the real adapter does the work).
#[derive(Debug, Default)]
struct SourceCounters {
    list_calls: AtomicU64,
    lookups: AtomicU64,
    looked_up: AtomicU64,
    disk_requests: AtomicU64,
    disk_resolved: AtomicU64,
    portal_downloads: AtomicU64,
    external_downloads: AtomicU64,
}

/// [`Bitrix24Source`] with counters: the engine passes at most 50 file IDs per `resolve_files`, so each call is
/// one `disk.file.get` batch, which splits the portal's `batch` count into Disk and listing/lookup requests.
struct CountingSource {
    inner: Bitrix24Source,
    portal_origin: url::Origin,
    counters: Arc<SourceCounters>,
}

impl CallSource for CountingSource {
    type Error = b24sense_bitrix24::Error;

    async fn list_calls(
        &self,
        filter: &CallFilter,
        after_id: u64,
    ) -> Result<CallPage, Self::Error> {
        self.counters.list_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.list_calls(filter, after_id).await
    }

    async fn lookup(&self, users: &[u64], crm: &[CrmRef]) -> Result<Names, Self::Error> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        self.counters
            .looked_up
            .fetch_add((users.len() + crm.len()) as u64, Ordering::Relaxed);
        self.inner.lookup(users, crm).await
    }

    async fn resolve_files(
        &self,
        file_ids: &[u64],
    ) -> Result<HashMap<u64, Result<Url, String>>, Self::Error> {
        self.counters.disk_requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .disk_resolved
            .fetch_add(file_ids.len() as u64, Ordering::Relaxed);
        self.inner.resolve_files(file_ids).await
    }

    async fn download(&self, url: &Url) -> Result<Recording, Self::Error> {
        let counter = if url.origin() == self.portal_origin {
            &self.counters.portal_downloads
        } else {
            &self.counters.external_downloads
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.download(url).await
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

const PORTAL_KEY: &str = "bench.bitrix24.local";

/// Runs `scenario` once and measures it.
pub async fn run_scenario(scenario: &Scenario, opts: &RunOptions) -> Result<RunRow, BenchError> {
    let name = scenario.name.clone();
    let probe = opts.loopback_probe_bytes;
    let loopback = if probe > 0 {
        eprintln!(
            "[{name}] measuring loopback throughput ({} MiB)…",
            probe / 1024 / 1024
        );
        tokio::task::spawn_blocking(move || measure::loopback_throughput(probe))
            .await
            .map_err(|e| BenchError::Internal(e.to_string()))??
    } else {
        0.0
    };

    eprintln!("[{name}] starting emulators: {}", scenario.describe());
    let portal = Arc::new(
        Bitrix24Emulator::start(scenario.portal.clone())
            .await
            .map_err(BenchError::Emulator)?,
    );
    let speech_config = EmulatorConfig {
        upload_latency: scenario.upload_latency,
        ..EmulatorConfig::default()
    };
    let api_key = speech_config.api_keys[0].clone();
    let connection_id = speech_config.connections[0].id.clone();
    let speech = SpeechSenseEmulator::start(speech_config)
        .await
        .map_err(BenchError::Emulator)?;

    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!(
        "sqlite:{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .map_err(|e| BenchError::Setup(format!("ledger: {e}")))?;

    // The same clients `export_command` builds, with the rate plan matching the emulated portal's bucket.
    let webhook = WebhookUrl::parse(&portal.webhook_url())
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
    let speech_client = SpeechSenseClient::new(SpeechSenseConfig::new(
        speech.endpoint(),
        SpeechSenseCredentials::ApiKey(SecretString::from(api_key)),
    ))
    .map_err(|e| BenchError::Setup(format!("SpeechSense client: {e}")))?;
    match speech_client.check_connection(&connection_id).await {
        Ok(ConnectionCheck::Ok) => {}
        Ok(other) => {
            return Err(BenchError::Setup(format!(
                "SpeechSense refused: {}",
                other.message(b24sense_speechsense::Lang::En)
            )))
        }
        Err(e) => return Err(BenchError::Setup(format!("SpeechSense: {e}"))),
    }

    let mut config = ExportConfig::new(PORTAL_KEY, connection_id);
    config.concurrency = scenario.concurrency;

    let counters = Arc::new(SourceCounters::default());
    let source = Arc::new(CountingSource {
        inner: Bitrix24Source::new(bitrix.clone()),
        portal_origin: portal.base_url().origin(),
        counters: counters.clone(),
    });
    let sink = Arc::new(SpeechSenseSink::new(speech_client, None));
    let live = Arc::new(Live::default());
    let shutdown = CancellationToken::new();

    // The preflight above made one SpeechSense call; the portal has seen nothing yet. Start clean anyway.
    portal.reset_stats();
    let rss_baseline = measure::current_rss().unwrap_or(0);
    let cpu_before = measure::cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();

    let ticker = {
        let live = live.clone();
        let portal = portal.clone();
        let every = opts.progress_every;
        let name = name.clone();
        let calls = scenario.portal.calls;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = portal.stats();
                eprintln!(
                    "[{name}] {:>6.0} s · listed {}/{calls} · settled {} · uploaded {} · portal requests {} · rate-limited {}",
                    started.elapsed().as_secs_f64(),
                    live.found.load(Ordering::Relaxed),
                    live.settled.load(Ordering::Relaxed),
                    live.uploaded.load(Ordering::Relaxed),
                    s.http_requests,
                    s.rate_limited,
                );
            }
        })
    };

    let export = run_export(
        source,
        sink,
        store,
        config,
        progress_fn(live.clone()),
        shutdown.clone(),
    );
    tokio::pin!(export);
    let mut timed_out = false;
    let result = tokio::select! {
        r = &mut export => r,
        _ = tokio::time::sleep(opts.timeout) => {
            timed_out = true;
            eprintln!("[{name}] timeout after {:?}: stopping (in-flight uploads finish)", opts.timeout);
            shutdown.cancel();
            match tokio::time::timeout(Duration::from_secs(120), &mut export).await {
                Ok(r) => r,
                Err(_) => return Err(BenchError::Timeout(opts.timeout)),
            }
        }
    };
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

    let ps = portal.stats();
    let ss = speech.stats();
    let cs = bitrix.stats();
    let c = &counters;
    let disk_batches = c.disk_requests.load(Ordering::Relaxed);
    let batch_requests = ps.by_method.get("batch").copied().unwrap_or(0);
    let calls = scenario.portal.calls as u64;
    let loopback_bytes = ps.bytes_sent + ss.bytes_received;
    let bound = Bound::compute(&BoundInputs {
        listed: summary.found,
        looked_up: c.looked_up.load(Ordering::Relaxed),
        disk_resolved: c.disk_resolved.load(Ordering::Relaxed),
        counted_downloads: c.portal_downloads.load(Ordering::Relaxed),
        burst: u64::from(scenario.portal.rate.0),
        per_second: u64::from(scenario.portal.rate.1),
        uploads: summary.uploaded,
        upload_latency: scenario.upload_latency,
        concurrency: scenario.concurrency as u64,
        bytes: loopback_bytes,
        loopback_bytes_per_s: loopback,
    });
    let wall_s = wall.as_secs_f64();
    let per_1000 = |x: f64| {
        if calls > 0 {
            x * 1000.0 / calls as f64
        } else {
            0.0
        }
    };
    let row = RunRow {
        scenario: name.clone(),
        settings: scenario.describe(),
        calls,
        found: summary.found,
        uploaded: summary.uploaded,
        skipped: summary.skipped.values().sum(),
        failed: summary.failed_total(),
        skipped_by_reason: summary.skipped.clone(),
        failed_by_reason: summary.failed.clone(),
        talks_stored: speech.talk_count() as u64,
        stopped,
        timed_out,
        wall_s,
        http_requests: ps.http_requests,
        http_requests_per_1000_calls: per_1000(ps.http_requests as f64),
        batch_requests,
        listing_enrichment_requests: batch_requests.saturating_sub(disk_batches),
        disk_batches,
        by_method: ps.by_method.clone(),
        looked_up: c.looked_up.load(Ordering::Relaxed),
        disk_resolved: c.disk_resolved.load(Ordering::Relaxed),
        counted_downloads: cs.portal_downloads,
        external_downloads: c.external_downloads.load(Ordering::Relaxed),
        rate_limited: ps.rate_limited,
        uploads_per_s: summary.uploaded as f64 / wall_s.max(1e-9),
        mb_per_s: summary.bytes_uploaded as f64 / 1e6 / wall_s.max(1e-9),
        bytes_uploaded: summary.bytes_uploaded,
        loopback_bytes,
        rss_baseline_mb: rss_baseline as f64 / 1048576.0,
        peak_rss_mb: peak as f64 / 1048576.0,
        own_process: opts.own_process,
        cpu_s: cpu,
        cpu_s_per_1000_calls: per_1000(cpu),
        loopback_mb_per_s: loopback / 1e6,
        wall_over_bound: if bound.bound_s > 0.0 {
            wall_s / bound.bound_s
        } else {
            0.0
        },
        bound,
    };
    log_summary(&name, &summary, &row);
    Ok(row)
}

fn log_summary(name: &str, summary: &Summary, row: &RunRow) {
    eprintln!(
        "[{name}] done in {:.1} s: listed {}, uploaded {}, skipped {}, failed {}, talks stored {}, portal requests {}, rate-limited {}",
        row.wall_s,
        summary.found,
        summary.uploaded,
        row.skipped,
        row.failed,
        row.talks_stored,
        row.http_requests,
        row.rate_limited
    );
    if !summary.skipped.is_empty() || !summary.failed.is_empty() {
        eprintln!(
            "[{name}] skipped {:?} · failed {:?}",
            summary.skipped, summary.failed
        );
    }
}

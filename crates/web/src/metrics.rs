//! Prometheus metrics of the application server (`prometheus-client`, Prometheus text format 0.0.4).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upload latency buckets, seconds: a short call on loopback takes tens of milliseconds, a 4-hour recording
/// over a slow link several minutes.
const UPLOAD_BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Process-wide metrics, shared by every portal's runs.
pub struct Metrics {
    registry: Registry,
    /// Calls settled, by outcome (`uploaded`, `skipped`, `failed`).
    calls: Family<OutcomeLabel, Counter>,
    pub rest_requests: Counter,
    /// REST requests the portal refused for limits (`QUERY_LIMIT_EXCEEDED`, `OPERATION_TIME_LIMIT`).
    pub rest_rejections: Counter,
    pub upload_bytes: Counter,
    /// From an upload's first byte to the talk ID, per uploaded call.
    pub upload_duration: Histogram,
    /// Calls listed and not yet settled, over all running exports (set at scrape time).
    pub queue_depth: Gauge,
    pub events_accepted: Counter,
    pub events_rejected: Counter,
    pub installs: Counter,
    pub uninstalls: Counter,
    pub token_refreshes: Counter,
    /// Refreshes the OAuth server refused (`invalid_grant`, …): the installation needs the administrator.
    pub token_refresh_refusals: Counter,
    /// Refreshes of idle installations done by the keep-alive task.
    pub token_keepalives: Counter,
    pub runs_started: Counter,
    /// Runs started again after a restart interrupted them.
    pub runs_resumed: Counter,
    /// Times a run's ledger began refusing writes (`docs/ledger-faults.md`).
    pub ledger_outages: Counter,
    /// Runs whose ledger refuses writes now (they hold their outcomes and wait).
    pub ledger_down: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<OutcomeLabel, Counter>::default();
        // Every outcome shows from the start (0), so a dashboard's rate() has a series to work on.
        for outcome in ["uploaded", "skipped", "failed"] {
            let _ = calls.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        registry.register("b24sense_calls", "Calls settled, by outcome", calls.clone());
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let rest_requests = counter(
            &mut registry,
            "b24sense_rest_requests",
            "Bitrix24 REST requests sent",
        );
        let rest_rejections = counter(
            &mut registry,
            "b24sense_rest_rejections",
            "Bitrix24 REST requests refused for rate or operating-time limits",
        );
        let upload_bytes = counter(
            &mut registry,
            "b24sense_upload_bytes",
            "Audio bytes streamed to SpeechSense",
        );
        let upload_duration = Histogram::new(UPLOAD_BUCKETS);
        registry.register(
            "b24sense_upload_duration_seconds",
            "Time from an upload's first byte to SpeechSense's talk ID, per uploaded call",
            upload_duration.clone(),
        );
        let events_accepted = counter(
            &mut registry,
            "b24sense_events_accepted",
            "Bitrix24 events accepted",
        );
        let events_rejected = counter(
            &mut registry,
            "b24sense_events_rejected",
            "Bitrix24 events rejected (unknown portal or wrong application token)",
        );
        let installs = counter(
            &mut registry,
            "b24sense_installs",
            "Application installations",
        );
        let uninstalls = counter(
            &mut registry,
            "b24sense_uninstalls",
            "Application uninstallations",
        );
        let token_refreshes = counter(
            &mut registry,
            "b24sense_token_refreshes",
            "OAuth token refreshes that returned a new pair",
        );
        let token_refresh_refusals = counter(
            &mut registry,
            "b24sense_token_refresh_refusals",
            "OAuth token refreshes the OAuth server refused (the administrator must reopen or reinstall the application)",
        );
        let token_keepalives = counter(
            &mut registry,
            "b24sense_token_keepalive_refreshes",
            "Keep-alive refreshes of idle installations",
        );
        let runs_started = counter(&mut registry, "b24sense_export_runs", "Export runs started");
        let runs_resumed = counter(
            &mut registry,
            "b24sense_export_runs_resumed",
            "Export runs resumed after a restart interrupted them",
        );
        let ledger_outages = counter(
            &mut registry,
            "b24sense_ledger_outages",
            "Times a run's ledger began refusing writes (disk full, read-only, locked, unreachable)",
        );
        let ledger_down = Gauge::default();
        registry.register(
            "b24sense_ledger_down",
            "Export runs whose ledger refuses writes now (outcomes held, no new calls taken)",
            ledger_down.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "b24sense_queue_depth",
            "Calls listed and not yet settled",
            queue_depth.clone(),
        );
        Metrics {
            registry,
            calls,
            rest_requests,
            rest_rejections,
            upload_bytes,
            upload_duration,
            queue_depth,
            events_accepted,
            events_rejected,
            installs,
            uninstalls,
            token_refreshes,
            token_refresh_refusals,
            token_keepalives,
            runs_started,
            runs_resumed,
            ledger_outages,
            ledger_down,
        }
    }
}

impl Metrics {
    pub fn call_settled(&self, outcome: &str) {
        self.calls
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The text exposition ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

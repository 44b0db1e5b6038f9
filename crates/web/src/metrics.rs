//! Prometheus counters of the application server (text exposition format, written by hand: a few lines).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Process-wide counters, shared by every portal's runs.
#[derive(Default)]
pub struct Metrics {
    /// Calls settled, by outcome (`uploaded`, `skipped`, `failed`).
    calls: Mutex<BTreeMap<String, u64>>,
    pub rest_requests: AtomicU64,
    /// REST requests the portal refused for limits (`QUERY_LIMIT_EXCEEDED`, `OPERATION_TIME_LIMIT`).
    pub rest_rejections: AtomicU64,
    pub upload_bytes: AtomicU64,
    /// Calls listed and not yet settled, over all running exports.
    pub queue_depth: AtomicI64,
    pub events_accepted: AtomicU64,
    pub events_rejected: AtomicU64,
    pub installs: AtomicU64,
    pub uninstalls: AtomicU64,
    pub token_refreshes: AtomicU64,
    pub runs_started: AtomicU64,
}

impl Metrics {
    pub fn call_settled(&self, outcome: &str) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome.to_string())
            .or_insert(0) += 1;
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(o, "# HELP b24sense_calls_total Calls settled, by outcome.");
        let _ = writeln!(o, "# TYPE b24sense_calls_total counter");
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for outcome in ["uploaded", "skipped", "failed"] {
            let n = calls.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(o, "b24sense_calls_total{{outcome=\"{outcome}\"}} {n}");
        }
        let counters: [(&str, &str, u64); 8] = [
            (
                "b24sense_rest_requests_total",
                "Bitrix24 REST requests sent.",
                g(&self.rest_requests),
            ),
            (
                "b24sense_rest_rejections_total",
                "Bitrix24 REST requests refused for rate or operating-time limits.",
                g(&self.rest_rejections),
            ),
            (
                "b24sense_upload_bytes_total",
                "Audio bytes streamed to SpeechSense.",
                g(&self.upload_bytes),
            ),
            (
                "b24sense_events_accepted_total",
                "Bitrix24 events accepted.",
                g(&self.events_accepted),
            ),
            (
                "b24sense_events_rejected_total",
                "Bitrix24 events rejected (unknown portal or wrong application token).",
                g(&self.events_rejected),
            ),
            (
                "b24sense_installs_total",
                "Application installations.",
                g(&self.installs),
            ),
            (
                "b24sense_uninstalls_total",
                "Application uninstallations.",
                g(&self.uninstalls),
            ),
            (
                "b24sense_export_runs_total",
                "Export runs started.",
                g(&self.runs_started),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP b24sense_queue_depth Calls listed and not yet settled.\n# TYPE b24sense_queue_depth gauge\nb24sense_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed).max(0)
        );
        o
    }
}

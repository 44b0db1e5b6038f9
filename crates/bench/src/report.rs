//! One run's numbers, the bound it is compared with, and the table they are printed as.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the run could not have beaten, whatever the code did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    /// The fewest portal requests this run needed (listing, lookups, `disk.file.get`, counted downloads).
    pub rest_min_requests: u64,
    /// Those requests beyond the bucket's burst at the bucket's leak rate.
    pub rest_s: f64,
    /// Uploads × (download latency + upload latency) ÷ concurrency: each upload in flight first waits for its
    /// recording's first byte, then for SpeechSense's answer.
    pub upload_s: f64,
    /// Bytes over loopback (downloads + uploads) ÷ the loopback throughput measured in the same process.
    pub bytes_s: f64,
    /// The largest of the three.
    pub bound_s: f64,
    /// `rest`, `upload` or `bytes`.
    pub limited_by: String,
}

/// The inputs of [`Bound`].
#[derive(Debug, Clone, Default)]
pub struct BoundInputs {
    pub listed: u64,
    /// Users and CRM entities looked up.
    pub looked_up: u64,
    /// Recordings whose address came from `disk.file.get`.
    pub disk_resolved: u64,
    /// Recording downloads that take a bucket token: those from the portal's own host, when the portal counts them.
    pub counted_downloads: u64,
    /// The portal's bucket: capacity and leak per second.
    pub burst: u64,
    pub per_second: u64,
    pub uploads: u64,
    /// Time to a download's first byte.
    pub download_latency: Duration,
    pub upload_latency: Duration,
    pub concurrency: u64,
    pub bytes: u64,
    pub loopback_bytes_per_s: f64,
}

/// Rows per listing request (a batch of 50 pages of 50) and IDs per lookup request (50 commands of 50 IDs).
const PER_LISTING_REQUEST: u64 = 2_500;
const PER_LOOKUP_REQUEST: u64 = 2_500;
const PER_DISK_REQUEST: u64 = 50;

impl Bound {
    pub fn compute(i: &BoundInputs) -> Bound {
        let rest_min_requests = i.listed.div_ceil(PER_LISTING_REQUEST).max(1)
            + i.looked_up.div_ceil(PER_LOOKUP_REQUEST)
            + i.disk_resolved.div_ceil(PER_DISK_REQUEST)
            + i.counted_downloads;
        let rest_s = rest_min_requests.saturating_sub(i.burst) as f64 / i.per_second.max(1) as f64;
        let upload_s = i.uploads as f64 * (i.download_latency + i.upload_latency).as_secs_f64()
            / i.concurrency.max(1) as f64;
        let bytes_s = if i.loopback_bytes_per_s > 0.0 {
            i.bytes as f64 / i.loopback_bytes_per_s
        } else {
            0.0
        };
        let (bound_s, limited_by) = [(rest_s, "rest"), (upload_s, "upload"), (bytes_s, "bytes")]
            .into_iter()
            .fold((0.0, "rest"), |acc, x| if x.0 > acc.0 { x } else { acc });
        Bound {
            rest_min_requests,
            rest_s,
            upload_s,
            bytes_s,
            bound_s,
            limited_by: limited_by.to_string(),
        }
    }
}

/// One scenario's run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub scenario: String,
    /// The scenario's settings in words.
    pub settings: String,
    /// Calls on the emulated portal.
    pub calls: u64,
    /// Calls the export listed.
    pub found: u64,
    pub uploaded: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Skipped and failed calls by reason.
    pub skipped_by_reason: BTreeMap<String, u64>,
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Talks the SpeechSense emulator stored.
    pub talks_stored: u64,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    pub timed_out: bool,
    pub wall_s: f64,
    /// Every HTTP request the portal emulator saw: REST batches, downloads on both hosts, rejected requests.
    pub http_requests: u64,
    pub http_requests_per_1000_calls: f64,
    /// `batch` requests admitted by the portal.
    pub batch_requests: u64,
    /// Batches carrying `voximplant.statistic.get`, `user.get` and `crm.*.list` (all batches but the Disk ones).
    pub listing_enrichment_requests: u64,
    /// Batches carrying `disk.file.get`.
    pub disk_batches: u64,
    /// The portal's per-method counts (`batch` once per request, sub-commands under their own names).
    pub by_method: BTreeMap<String, u64>,
    /// Users and CRM entities the export asked names for.
    pub looked_up: u64,
    /// Disk files the export asked download addresses for.
    pub disk_resolved: u64,
    /// Downloads the engine started from the portal's own host (`/rest/download.json`), counted or not.
    pub portal_downloads: u64,
    /// Download requests to the portal's own host that took a token of the client's limiter (the client's count,
    /// every attempt): all of them once the client counts downloads, none before.
    pub counted_downloads: u64,
    /// Downloads from the external recording host (`CALL_RECORD_URL`), outside the bucket.
    pub external_downloads: u64,
    /// `QUERY_LIMIT_EXCEEDED` answers the portal gave.
    pub rate_limited: u64,
    pub uploads_per_s: f64,
    /// Audio megabytes (10^6) uploaded per second.
    pub mb_per_s: f64,
    pub bytes_uploaded: u64,
    /// Bytes over loopback: portal responses (JSON and recordings) + audio received by SpeechSense.
    pub loopback_bytes: u64,
    /// Resident set size of the export's process just before the export (with the emulators when they share it).
    pub rss_baseline_mb: f64,
    /// `VmHWM` of the export's process at the end.
    pub peak_rss_mb: f64,
    /// The export ran in a child process of its own: RSS and CPU are the export's alone. Otherwise they include
    /// the emulators (and the peak covers earlier runs in the same process).
    pub export_in_child: bool,
    /// CPU seconds (user + system) of the export's process during the export.
    pub cpu_s: f64,
    /// Statements the export's ledger sent to its database.
    pub ledger_statements: u64,
    /// How the limit on calls in flight moved during the run, in words.
    pub concurrency_trace: String,
    /// Whether the export counted downloads from the portal's host at the end (`counted`/`uncounted`).
    pub download_accounting: String,
    pub cpu_s_per_1000_calls: f64,
    /// CPU seconds of the emulators meanwhile (when the export ran in a child).
    pub emulator_cpu_s: Option<f64>,
    pub emulator_cpu_s_per_1000_calls: Option<f64>,
    pub loopback_mb_per_s: f64,
    pub bound: Bound,
    pub wall_over_bound: f64,
    /// A chat scenario's counts (`calls` is then the portal's sessions); its row is printed in the chat table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<crate::chats::ChatMeasure>,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The rows as fixed-width tables (calls, then chats), then each scenario's settings and a legend.
pub fn render_table(rows: &[RunRow]) -> String {
    let (chats, calls): (Vec<RunRow>, Vec<RunRow>) =
        rows.iter().cloned().partition(|r| r.chat.is_some());
    let mut out = if calls.is_empty() {
        String::new()
    } else {
        render_calls(&calls)
    };
    if !chats.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&crate::chats::render_chats(&chats));
    }
    out
}

/// Fixed-width columns: the first left-aligned, the others right-aligned, a rule under the header.
pub(crate) fn columns(cells: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..cells[0].len())
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out
}

fn render_calls(rows: &[RunRow]) -> String {
    let header = [
        "scenario",
        "calls",
        "uploaded",
        "talks",
        "wall s",
        "HTTP req",
        "req/1k",
        "list+enrich",
        "disk batches",
        "portal dl (counted)",
        "rate-limited",
        "uploads/s",
        "MB/s",
        "RSS base MiB",
        "peak RSS MiB",
        "CPU s/1k",
        "emu CPU s/1k",
        "bound s",
        "wall/bound",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        cells.push(vec![
            r.scenario.clone(),
            r.calls.to_string(),
            r.uploaded.to_string(),
            r.talks_stored.to_string(),
            format!("{:.1}", r.wall_s),
            r.http_requests.to_string(),
            format!("{:.1}", r.http_requests_per_1000_calls),
            r.listing_enrichment_requests.to_string(),
            r.disk_batches.to_string(),
            format!("{} ({})", r.portal_downloads, r.counted_downloads),
            r.rate_limited.to_string(),
            format!("{:.1}", r.uploads_per_s),
            format!("{:.2}", r.mb_per_s),
            format!("{:.1}", r.rss_baseline_mb),
            format!("{:.1}", r.peak_rss_mb),
            format!("{:.2}", r.cpu_s_per_1000_calls),
            r.emulator_cpu_s_per_1000_calls
                .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
            format!("{:.1} ({})", r.bound.bound_s, r.bound.limited_by),
            if r.bound.bound_s > 0.0 {
                format!("{:.2}", r.wall_over_bound)
            } else {
                "-".into()
            },
        ]);
    }
    let mut out = columns(&cells);
    out.push('\n');
    for r in rows {
        let _ = writeln!(out, "{}: {}", r.scenario, r.settings);
        let _ = writeln!(
            out,
            "  bound: {} portal requests min → {:.1} s; downloads + uploads {:.1} s; {:.0} MB over loopback at {:.0} MB/s → {:.1} s",
            r.bound.rest_min_requests,
            r.bound.rest_s,
            r.bound.upload_s,
            mb(r.loopback_bytes),
            r.loopback_mb_per_s,
            r.bound.bytes_s
        );
        let methods: Vec<String> = r
            .by_method
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "  portal methods: {}", methods.join(" "));
        let _ = writeln!(
            out,
            "  calls in flight {} · portal downloads at the end: {}",
            r.concurrency_trace,
            if r.download_accounting.is_empty() {
                "-"
            } else {
                &r.download_accounting
            }
        );
        let _ = writeln!(
            out,
            "  skipped {:?} · failed {:?} · external downloads {} · CPU {:.2} s · ledger statements {}{}{}",
            r.skipped_by_reason,
            r.failed_by_reason,
            r.external_downloads,
            r.cpu_s,
            r.ledger_statements,
            if r.timed_out { " · TIMED OUT" } else { "" },
            r.stopped
                .as_deref()
                .map(|s| format!(" · stopped: {s}"))
                .unwrap_or_default()
        );
    }
    if rows.iter().any(|r| r.export_in_child) {
        out.push_str(
            "\nThe export ran in a child process of its own: RSS and CPU s/1k are the export's alone (its ledger \
             included); the emulators ran in the parent (emu CPU s/1k). RSS base = before the export started.\n",
        );
    }
    if rows.iter().any(|r| !r.export_in_child) {
        out.push_str(
            "\nRuns marked emu CPU '-' shared one process with the emulators (--in-process): their RSS and CPU \
             include the emulators, and a peak covers the runs before it. RSS base = before the export started.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_bound_counts_requests_beyond_the_burst() {
        let b = Bound::compute(&BoundInputs {
            listed: 10_000,
            looked_up: 200,
            disk_resolved: 850,
            counted_downloads: 850,
            burst: 50,
            per_second: 2,
            uploads: 8_500,
            download_latency: Duration::ZERO,
            upload_latency: Duration::from_millis(100),
            concurrency: 8,
            bytes: 0,
            loopback_bytes_per_s: 1e9,
        });
        // 4 listing + 1 lookup + 17 disk + 850 downloads = 872; (872 - 50) / 2 = 411 s.
        assert_eq!(b.rest_min_requests, 872);
        assert!((b.rest_s - 411.0).abs() < 1e-9);
        assert!((b.upload_s - 106.25).abs() < 1e-9);
        assert_eq!(b.limited_by, "rest");
        assert!((b.bound_s - 411.0).abs() < 1e-9);
    }

    #[test]
    fn uploads_wait_for_the_download_and_the_upload() {
        let b = Bound::compute(&BoundInputs {
            listed: 2_000,
            burst: 50,
            per_second: 2,
            uploads: 1_100,
            download_latency: Duration::from_millis(150),
            upload_latency: Duration::from_millis(100),
            concurrency: 8,
            ..BoundInputs::default()
        });
        // 1,100 × 250 ms ÷ 8 = 34.375 s; the single listing request fits in the burst.
        assert!((b.upload_s - 34.375).abs() < 1e-9);
        assert_eq!(b.limited_by, "upload");
    }

    #[test]
    fn small_runs_fit_in_the_burst() {
        let b = Bound::compute(&BoundInputs {
            listed: 300,
            burst: 50,
            per_second: 2,
            bytes: 1_000_000,
            loopback_bytes_per_s: 1e9,
            ..BoundInputs::default()
        });
        assert_eq!(b.rest_min_requests, 1);
        assert_eq!(b.rest_s, 0.0);
        assert_eq!(b.limited_by, "bytes");
    }

    #[test]
    fn table_has_a_row_per_run() {
        let rows = vec![
            RunRow {
                scenario: "smoke".into(),
                calls: 300,
                ..RunRow::default()
            },
            RunRow {
                scenario: "big-recording".into(),
                calls: 5,
                ..RunRow::default()
            },
        ];
        let t = render_table(&rows);
        assert!(t.lines().nth(2).is_some_and(|l| l.starts_with("smoke")));
        assert!(t
            .lines()
            .nth(3)
            .is_some_and(|l| l.starts_with("big-recording")));
    }
}

//! Printing a run's summary (text or JSON) and writing the per-call report file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use b24sense_bitrix24::ClientStats;
use b24sense_engine::{CallReport, DownloadAccounting, Summary};
use serde_json::{json, Value};

/// The summary as JSON, with the REST client's counters.
pub fn stats_json(summary: &Summary, rest: &ClientStats) -> Value {
    let mut v = serde_json::to_value(summary).unwrap_or_else(|_| json!({}));
    v["rest"] = json!({
        "requests": rest.requests,
        "rate_limited": rest.rate_limited,
        "retries": rest.retries,
        "downloads": rest.downloads,
        "download_bytes": rest.download_bytes,
        "portal_downloads_counted": rest.portal_downloads,
        "portal_downloads_uncounted": rest.uncounted_portal_downloads,
    });
    v
}

/// The `--report` file: one JSON object per call (call ID, outcome, reason, talk ID, seconds, bytes), written as
/// each call settles, so a run of any size keeps none of them in memory and a killed run leaves the lines so far.
pub struct ReportFile {
    state: Mutex<ReportState>,
}

struct ReportState {
    out: BufWriter<File>,
    /// The first write error; later lines are not attempted.
    error: Option<std::io::Error>,
}

impl ReportFile {
    /// Creates (truncates) the file up front, so a path that cannot be written is refused before the export starts.
    pub fn create(path: &Path) -> std::io::Result<ReportFile> {
        Ok(ReportFile {
            state: Mutex::new(ReportState {
                out: BufWriter::new(File::create(path)?),
                error: None,
            }),
        })
    }

    pub fn write(&self, report: &CallReport) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.error.is_some() {
            return;
        }
        let written = serde_json::to_writer(&mut s.out, report)
            .map_err(std::io::Error::from)
            .and_then(|()| s.out.write_all(b"\n"));
        if let Err(e) = written {
            s.error = Some(e);
        }
    }

    /// Flushes; the first error of the whole run, if any.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        s.out.flush()
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

pub fn print_summary(summary: &Summary, stats: &Value, json: bool, dry_run: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(stats).unwrap_or_default()
        );
        return;
    }
    let secs = summary.wall_time.as_secs_f64();
    if dry_run {
        let w = summary.would_upload.clone().unwrap_or_default();
        println!(
            "dry run: {} qualifying calls found in {secs:.1} s",
            summary.found
        );
        println!(
            "  would upload      {:>7} calls, {} minutes of audio",
            w.calls, w.minutes
        );
        println!("  already uploaded  {:>7}", w.already_uploaded);
        println!("  no recording yet  {:>7}", w.without_recording);
        println!("nothing was uploaded");
        return;
    }
    println!(
        "export finished in {secs:.1} s: {} qualifying calls",
        summary.found
    );
    println!(
        "  uploaded          {:>7}  ({} mono)",
        summary.uploaded, summary.uploaded_mono
    );
    if summary.reuploaded_after_crash > 0 {
        println!(
            "  re-uploaded after crash {:>3}  (possible duplicates, see the report)",
            summary.reuploaded_after_crash
        );
    }
    for (reason, n) in &summary.skipped {
        println!("  skipped           {n:>7}  {reason}");
    }
    for (reason, n) in &summary.failed {
        println!("  failed            {n:>7}  {reason}");
    }
    if summary.bad_rows > 0 {
        println!("  unreadable rows   {:>7}", summary.bad_rows);
    }
    println!(
        "  audio             {} · {} minutes · {:.1} uploads/s",
        mb(summary.bytes_uploaded),
        summary.seconds_uploaded / 60,
        summary.uploaded as f64 / secs.max(0.001)
    );
    let rest = &stats["rest"];
    println!(
        "  Bitrix24 REST     {} requests · {} rate-limit rejections · {} downloads",
        rest["requests"], rest["rate_limited"], rest["downloads"]
    );
    match summary.download_accounting {
        Some(DownloadAccounting::Counted) => println!(
            "  portal downloads  counted in its request limit (learned from a refusal, remembered for later runs)"
        ),
        Some(DownloadAccounting::Uncounted) => {
            println!("  portal downloads  not counted in its request limit")
        }
        None => {}
    }
    if let Some(emu) = stats.get("emulators") {
        println!(
            "  emulated portal   {} HTTP requests · {} rejected by its rate limit · {} sent",
            emu["portal_http_requests"],
            emu["portal_rate_limited"],
            mb(emu["portal_bytes_sent"].as_u64().unwrap_or(0))
        );
        println!("  SpeechSense       {} talks stored", emu["talks_stored"]);
    }
    if let Some(reason) = &summary.stopped {
        println!("  stopped early: {reason}");
    }
    let failed = summary.failed_total();
    if failed > 0 {
        println!(
            "{failed} calls failed; run again to retry them (uploaded calls are never sent twice)"
        );
    }
}

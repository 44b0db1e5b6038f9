//! Progress display: a bar on a terminal (calls done/total, rate, ETA), plain log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::Outcome;
use b24sense_engine::{ProgressEvent, ProgressFn};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts shown while a run goes on.
#[derive(Default)]
struct Counts {
    found: AtomicU64,
    done: AtomicU64,
    uploaded: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    counts: Arc<Counts>,
    last_line: Arc<Mutex<Instant>>,
    started: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal (and `quiet` is off), log lines otherwise.
    pub fn new(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.green} [{elapsed_precise}] {bar:32.cyan/blue} {pos}/{len} calls · {per_sec} · ETA {eta} · {msg}",
                )
                .expect("valid template")
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            counts: Arc::default(),
            last_line: Arc::new(Mutex::new(Instant::now())),
            started: Instant::now(),
        }
    }

    /// The callback handed to the engine.
    pub fn callback(&self, quiet: bool) -> ProgressFn {
        let bar = self.bar.clone();
        let counts = self.counts.clone();
        let last_line = self.last_line.clone();
        let started = self.started;
        Arc::new(move |event: &ProgressEvent| match event {
            ProgressEvent::Found { n } => {
                counts.found.fetch_add(*n, Ordering::Relaxed);
                if let Some(bar) = &bar {
                    bar.inc_length(*n);
                }
            }
            ProgressEvent::ListingDone { total } => {
                if let Some(bar) = &bar {
                    bar.set_length(*total);
                } else if !quiet {
                    eprintln!("listing done: {total} qualifying calls");
                }
            }
            ProgressEvent::Settled(report) => {
                counts.done.fetch_add(1, Ordering::Relaxed);
                let slot = match report.outcome {
                    Outcome::Uploaded { .. } => &counts.uploaded,
                    Outcome::Skipped { .. } => &counts.skipped,
                    Outcome::Failed { .. } => &counts.failed,
                };
                slot.fetch_add(1, Ordering::Relaxed);
                if let Some(bar) = &bar {
                    bar.inc(1);
                    bar.set_message(format!(
                        "uploaded {} · skipped {} · failed {}",
                        counts.uploaded.load(Ordering::Relaxed),
                        counts.skipped.load(Ordering::Relaxed),
                        counts.failed.load(Ordering::Relaxed)
                    ));
                } else if !quiet {
                    let mut last = last_line.lock().unwrap();
                    if last.elapsed() >= Duration::from_secs(2) {
                        *last = Instant::now();
                        eprintln!("{}", line(&counts, started));
                    }
                }
            }
            // The CLI's one-shot export does not wait for late recordings; counted as done all the same.
            ProgressEvent::AwaitingRecording { .. } => {
                counts.done.fetch_add(1, Ordering::Relaxed);
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
            ProgressEvent::BadRow { detail } => {
                if let Some(bar) = &bar {
                    bar.println(format!("warning: unreadable call row: {detail}"));
                }
            }
        })
    }

    pub fn finish(&self, quiet: bool) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        } else if !quiet {
            eprintln!("{}", line(&self.counts, self.started));
        }
    }
}

fn line(c: &Counts, started: Instant) -> String {
    let done = c.done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    format!(
        "progress: {done}/{} calls settled (uploaded {}, skipped {}, failed {}) · {:.1} calls/s",
        c.found.load(Ordering::Relaxed),
        c.uploaded.load(Ordering::Relaxed),
        c.skipped.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        done as f64 / secs
    )
}

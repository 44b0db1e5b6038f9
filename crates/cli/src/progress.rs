//! Progress display: a bar on a terminal (calls done/total, rate, ETA), plain log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::Outcome;
use b24sense_engine::{ProgressEvent, ProgressFn};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::lang::pick;

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
    /// A bar when stderr is a terminal (and `quiet` is off), log lines otherwise; in colour unless `NO_COLOR`.
    pub fn new(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            let (spinner, bar_style) = match crate::hygiene::stderr_colour() {
                true => ("{spinner:.green}", "{bar:32.cyan/blue}"),
                false => ("{spinner}", "{bar:32}"),
            };
            let rest = pick(
                "{pos}/{len} звонков · {per_sec} · осталось {eta} · {msg}",
                "{pos}/{len} calls · {per_sec} · ETA {eta} · {msg}",
            );
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{spinner} [{{elapsed_precise}}] {bar_style} {rest}"
                ))
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
                    err!(
                        "{}",
                        pick(
                            format!("список готов: подходящих звонков {total}"),
                            format!("listing done: {total} qualifying calls"),
                        )
                    );
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
                    let (u, s, f) = (
                        counts.uploaded.load(Ordering::Relaxed),
                        counts.skipped.load(Ordering::Relaxed),
                        counts.failed.load(Ordering::Relaxed),
                    );
                    bar.set_message(pick(
                        format!("выгружено {u} · пропущено {s} · ошибок {f}"),
                        format!("uploaded {u} · skipped {s} · failed {f}"),
                    ));
                } else if !quiet {
                    let mut last = last_line.lock().unwrap();
                    if last.elapsed() >= Duration::from_secs(2) {
                        *last = Instant::now();
                        err!("{}", line(&counts, started));
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
                    bar.println(pick(
                        format!("внимание: нечитаемая строка звонка:\n  {detail}"),
                        format!("warning: unreadable call row: {detail}"),
                    ));
                }
            }
            // Printed in every output mode: it says what is wrong with the ledger and what to do.
            ProgressEvent::Ledger(health) => crate::ledger::print_health(health, bar.as_ref()),
        })
    }

    pub fn finish(&self, quiet: bool) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        } else if !quiet {
            err!("{}", line(&self.counts, self.started));
        }
    }
}

fn line(c: &Counts, started: Instant) -> String {
    let done = c.done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let (found, u, s, f, rate) = (
        c.found.load(Ordering::Relaxed),
        c.uploaded.load(Ordering::Relaxed),
        c.skipped.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        done as f64 / secs,
    );
    pick(
        format!(
            "ход выгрузки: обработано {done}/{found} звонков (выгружено {u}, пропущено {s}, ошибок {f}) · {rate:.1} \
             звонков/с"
        ),
        format!(
            "progress: {done}/{found} calls settled (uploaded {u}, skipped {s}, failed {f}) · {rate:.1} calls/s"
        ),
    )
}

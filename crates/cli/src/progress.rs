//! Progress display: a bar on a terminal (calls done/total, rate, ETA), plain log lines otherwise. With chats, a
//! second line of its own (a spinner with the sessions settled so far on a terminal, its own log lines
//! otherwise): the chat run goes on beside the call run and never moves the calls' bar.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::Outcome;
use b24sense_engine::chats::{ChatOutcome, ChatProgressFn, ChatReport};
use b24sense_engine::{ProgressEvent, ProgressFn};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

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

/// Chat sessions settled so far, by outcome.
#[derive(Default)]
struct ChatCounts {
    done: AtomicU64,
    uploaded: AtomicU64,
    already: AtomicU64,
    waiting: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

pub struct Progress {
    /// The calls' bar (none without calls, or off a terminal).
    bar: Option<ProgressBar>,
    /// The chats' line (none without chats, or off a terminal).
    chat_bar: Option<ProgressBar>,
    counts: Arc<Counts>,
    chat_counts: Arc<ChatCounts>,
    last_line: Arc<Mutex<Instant>>,
    last_chat_line: Arc<Mutex<Instant>>,
    started: Instant,
    calls: bool,
    chats: bool,
}

impl Progress {
    /// A bar when stderr is a terminal (and `quiet` is off), log lines otherwise; in colour unless `NO_COLOR`.
    /// `calls`, `chats`: what this run exports (each gets its own line).
    pub fn new(quiet: bool, calls: bool, chats: bool) -> Progress {
        let terminal = !quiet && std::io::stderr().is_terminal();
        let multi =
            (terminal && calls && chats).then(|| MultiProgress::with_draw_target(draw_target()));
        let add = |bar: ProgressBar| match &multi {
            Some(m) => m.add(bar),
            None => bar,
        };
        let bar = (terminal && calls).then(|| add(call_bar(multi.is_some())));
        let chat_bar = (terminal && chats).then(|| add(chat_spinner(multi.is_some())));
        Progress {
            bar,
            chat_bar,
            counts: Arc::default(),
            chat_counts: Arc::default(),
            last_line: Arc::new(Mutex::new(Instant::now())),
            last_chat_line: Arc::new(Mutex::new(Instant::now())),
            started: Instant::now(),
            calls,
            chats,
        }
    }
}

fn draw_target() -> ProgressDrawTarget {
    ProgressDrawTarget::stderr_with_hz(8)
}

/// The calls' bar; `in_multi`: drawn by a [`MultiProgress`] (which owns the draw target).
fn call_bar(in_multi: bool) -> ProgressBar {
    let bar = match in_multi {
        true => ProgressBar::new(0),
        false => ProgressBar::with_draw_target(Some(0), draw_target()),
    };
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
}

/// The chats' line: a spinner and the sessions settled so far (their total is not known in advance).
fn chat_spinner(in_multi: bool) -> ProgressBar {
    let bar = match in_multi {
        true => ProgressBar::new_spinner(),
        false => ProgressBar::with_draw_target(None, draw_target()),
    };
    let spinner = match crate::hygiene::stderr_colour() {
        true => "{spinner:.green}",
        false => "{spinner}",
    };
    let label = pick("чаты", "chats");
    bar.set_style(
        ProgressStyle::with_template(&format!("{spinner} [{{elapsed_precise}}] {label}: {{msg}}"))
            .expect("valid template"),
    );
    bar.set_message(pick("список сессий…", "listing sessions…"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

impl Progress {
    /// The callback handed to the chat run.
    pub fn chat_callback(&self, quiet: bool) -> ChatProgressFn {
        let bar = self.chat_bar.clone();
        let counts = self.chat_counts.clone();
        let last_line = self.last_chat_line.clone();
        let started = self.started;
        Arc::new(move |r: &ChatReport| {
            counts.done.fetch_add(1, Ordering::Relaxed);
            let slot = match r.outcome {
                ChatOutcome::Uploaded { .. } => Some(&counts.uploaded),
                ChatOutcome::AlreadyUploaded => Some(&counts.already),
                ChatOutcome::Waiting { .. } => Some(&counts.waiting),
                ChatOutcome::Skipped { .. } => Some(&counts.skipped),
                ChatOutcome::Failed { .. } => Some(&counts.failed),
                // A dry run: only counted as done (the summary says how many would go).
                ChatOutcome::WouldUpload { .. } => None,
            };
            if let Some(slot) = slot {
                slot.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(bar) = &bar {
                bar.set_message(chat_counts_text(&counts));
            } else if !quiet {
                let mut last = last_line.lock().unwrap();
                if last.elapsed() >= Duration::from_secs(2) {
                    *last = Instant::now();
                    err!("{}", chat_line(&counts, started));
                }
            }
        })
    }

    /// The callback handed to the call run.
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
        } else if !quiet && self.calls {
            err!("{}", line(&self.counts, self.started));
        }
        if let Some(bar) = &self.chat_bar {
            bar.finish_and_clear();
        } else if !quiet && self.chats {
            err!("{}", chat_line(&self.chat_counts, self.started));
        }
    }
}

fn chat_counts_text(c: &ChatCounts) -> String {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (done, u, a, w, s, f) = (
        get(&c.done),
        get(&c.uploaded),
        get(&c.already),
        get(&c.waiting),
        get(&c.skipped),
        get(&c.failed),
    );
    pick(
        format!(
            "обработано сессий {done} (выгружено {u}, уже выгружено {a}, ждут закрытия {w}, пропущено {s}, ошибок {f})"
        ),
        format!(
            "{done} sessions settled (uploaded {u}, already uploaded {a}, waiting to close {w}, skipped {s}, failed {f})"
        ),
    )
}

fn chat_line(c: &ChatCounts, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64();
    pick(
        format!("ход выгрузки чатов: {} · {secs:.1} с", chat_counts_text(c)),
        format!("chat progress: {} · {secs:.1} s", chat_counts_text(c)),
    )
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

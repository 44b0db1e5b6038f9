//! When the ledger itself fails (a full disk, a read-only file, a write lock held by another process, a server
//! that is unreachable or ended the connection): a failed ledger write is not a reason to forget an answer.
//!
//! - Every ledger operation of the pipeline goes through [`Run::ledger_op`]: on a failure that may pass, the
//!   ledger is marked *down* (the front end is told once, with the cause: [`LedgerHealth::Down`]), the operation is
//!   retried with backoff, and the first success marks it *up* again ([`LedgerHealth::Up`]).
//! - While it is down the run takes no new calls: workers wait before their next call ([`Run::wait_ledger_up`]) and
//!   an upload whose `uploading` mark failed was abandoned before its end (nothing stored) and waits too.
//! - An outcome the ledger could not take (a talk ID, a skip or failure reason) is *held*: kept in memory and at
//!   once appended to the recovery journal (fsynced; store `recovery`), so even a process killed now loses none.
//!   If even the journal cannot be written, the entry is printed on stderr as a JSON line, with what to do.
//! - After `ExportConfig::ledger_give_up` of continuous trouble (or at a shutdown whose grace ran out) the run
//!   ends; its held outcomes are in the journal, which the next start imports before anything else.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use b24sense_core::{Call, Outcome};
use b24sense_store::{Claim, Error as StoreError, LedgerFault, RecoveryEntry};
use tokio::sync::watch;

use super::Run;
use crate::ports::{CallSource, TalkSink};
use crate::report::{LedgerHealth, ProgressEvent};
use crate::EngineError;

/// The run's view of its ledger.
pub(super) struct LedgerGuard {
    state: Mutex<State>,
    /// True while the ledger takes writes; waiters wake when it turns true.
    up: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    down_since: Option<Instant>,
    fault: Option<LedgerFault>,
    /// Outcomes the ledger has not taken yet, by call ID.
    held: BTreeMap<u64, RecoveryEntry>,
    /// This run appended to the recovery journal (cleaned up at the end once everything reached the ledger).
    journaled: bool,
    /// Where the held outcomes went: the journal, or (`None`) stderr.
    journal: Option<PathBuf>,
    stderr_told: bool,
    given_up: bool,
}

impl LedgerGuard {
    pub(super) fn new() -> LedgerGuard {
        LedgerGuard {
            state: Mutex::new(State::default()),
            up: watch::Sender::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long an operation keeps trying.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Until the run stops taking calls (a shutdown, a fatal error) or gives up on the ledger.
    Stop,
    /// Until the calls in flight are abandoned or the run gives up on the ledger: for outcomes, which must not be
    /// dropped at a shutdown while the grace period still runs.
    Hard,
}

impl<S: CallSource, K: TalkSink> Run<S, K> {
    /// Runs a ledger operation, riding out ledger faults: retried with backoff while the failure may pass, until
    /// it succeeds, the run gives up on the ledger, or `until` says stop (then the last error is returned).
    pub(super) async fn ledger_op<T, F, Fut>(
        &self,
        until: Until,
        mut op: F,
    ) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut failures = 0u32;
        loop {
            match op().await {
                Ok(v) => {
                    // Any success says the ledger is up (a renewal's failure may have said it was down).
                    self.ledger_up();
                    return Ok(v);
                }
                Err(e) if !e.may_pass_later() => return Err(e.into()),
                Err(e) => {
                    failures += 1;
                    self.ledger_down(&e);
                    if !self.ledger_pause(failures, until).await {
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// The ledger refused a write: tell the front end once per change, with the cause.
    pub(super) fn ledger_down(&self, e: &StoreError) {
        let fault = e.fault();
        let event = {
            let mut st = self.ledger.lock();
            if st.down_since.is_some() && st.fault == Some(fault) {
                None
            } else {
                if st.down_since.is_none() {
                    st.down_since = Some(Instant::now());
                    self.summary.lock().unwrap().ledger.outages += 1;
                }
                st.fault = Some(fault);
                Some(LedgerHealth::Down {
                    fault,
                    cause: e.to_string(),
                    held: st.held.len() as u64,
                    give_up_secs: self.config.ledger_give_up.as_secs(),
                })
            }
        };
        self.ledger.up.send_replace(false);
        if let Some(event) = event {
            tracing::error!(error = %e, ?fault, "the ledger refuses writes; holding outcomes and retrying");
            (self.progress)(&ProgressEvent::Ledger(event));
        }
    }

    /// A ledger operation succeeded: if the ledger was down, it is up again.
    pub(super) fn ledger_up(&self) {
        if *self.ledger.up.borrow() {
            return;
        }
        let event = {
            let mut st = self.ledger.lock();
            let Some(since) = st.down_since.take() else {
                return;
            };
            st.fault = None;
            let down = since.elapsed();
            self.summary.lock().unwrap().ledger.down_secs += down.as_secs();
            LedgerHealth::Up {
                down_secs: down.as_secs(),
                held: st.held.len() as u64,
            }
        };
        self.ledger.up.send_replace(true);
        tracing::warn!("the ledger takes writes again; going on");
        (self.progress)(&ProgressEvent::Ledger(event));
    }

    /// Waits before the next try of a failed ledger operation: a backoff, cut short when the ledger is up again.
    /// False when the run gave up on the ledger (after `ledger_give_up` of trouble) or `until` says stop.
    pub(super) async fn ledger_pause(&self, failures: u32, until: Until) -> bool {
        self.summary.lock().unwrap().ledger.retries += 1;
        let Some(left) = self.ledger_time_left() else {
            self.give_up_on_ledger();
            return false;
        };
        let delay = self.config.backoff.delay(failures, None).min(left);
        let mut up = self.ledger.up.subscribe();
        up.mark_unchanged();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = up.wait_for(|up| *up) => {}
            _ = self.hard.cancelled() => return false,
            _ = self.stop.cancelled(), if until == Until::Stop => return false,
        }
        true
    }

    /// Time left before the run gives up on the ledger; `None` when it has.
    fn ledger_time_left(&self) -> Option<Duration> {
        let st = self.ledger.lock();
        if st.given_up {
            return None;
        }
        match st.down_since {
            // Up again since this operation failed (another one passed): try again at once.
            None => Some(self.config.ledger_give_up),
            Some(since) => self
                .config
                .ledger_give_up
                .checked_sub(since.elapsed())
                .filter(|d| !d.is_zero()),
        }
    }

    fn give_up_on_ledger(&self) {
        let (held, journal, fault) = {
            let mut st = self.ledger.lock();
            if std::mem::replace(&mut st.given_up, true) {
                return;
            }
            (st.held.len(), st.journal.clone(), st.fault)
        };
        let kept = match (held, journal) {
            (0, _) => "no outcome was lost".to_string(),
            (n, Some(path)) => format!(
                "{n} outcomes it could not take are kept in the recovery journal {}; the next run imports \
                 them before anything else",
                path.display()
            ),
            (n, None) => format!(
                "{n} outcomes it could not take were printed on stderr as JSON lines: append them to the \
                 ledger's recovery journal before the next run"
            ),
        };
        self.fail_run(format!(
            "the ledger refused writes for {:?} ({}); {kept}. {}",
            self.config.ledger_give_up,
            fault.map_or("unknown", fault_word),
            advice(fault.unwrap_or(LedgerFault::Other)),
        ));
        // Uploads in flight are not abandoned: their talks may be stored already, and their answers are held
        // (journaled) like the others as they come; everything else ends as the run stops.
    }

    /// The run gave up on the ledger: writes at its end (releasing leases) would only wait and fail.
    pub(super) fn ledger_given_up(&self) -> bool {
        self.ledger.lock().given_up
    }

    /// Waits while the ledger is down (another task's retries tell when it is up). False when the run stops.
    pub(super) async fn wait_ledger_up(&self) -> bool {
        let mut up = self.ledger.up.subscribe();
        tokio::select! {
            r = up.wait_for(|up| *up) => r.is_ok() && !self.stop.is_cancelled(),
            _ = self.stop.cancelled() => false,
        }
    }

    /// Holds an outcome the ledger could not take: in memory until it does, and in the recovery journal at once
    /// (or, failing that, on stderr).
    pub(super) fn hold(&self, claim: &Claim, outcome: &Outcome) {
        let entry = RecoveryEntry::new(&claim.portal, claim.call_id, outcome.clone());
        let written = self.store.append_recovery(std::slice::from_ref(&entry));
        let mut st = self.ledger.lock();
        st.held.insert(claim.call_id, entry.clone());
        self.summary.lock().unwrap().ledger.held += 1;
        match written {
            Ok(path) => {
                st.journaled = true;
                st.journal = Some(path);
            }
            Err(e) => {
                tracing::error!(error = %e, call = claim.call_id, "could not write the recovery journal");
                st.journal = None;
                if !std::mem::replace(&mut st.stderr_told, true) {
                    let path = self.store.recovery_path().map_or_else(
                        || "a file of your choice".to_string(),
                        |p| p.display().to_string(),
                    );
                    eprintln!(
                        "b24sense: the ledger and its recovery journal refuse writes ({e}). The lines that \
                         start with {{\"b24sense_recovery\" are outcomes SpeechSense answered that the ledger has \
                         not recorded. Keep them: before the next export, append them to {path} (for example \
                         `grep '^{{\"b24sense_recovery\"' THIS_LOG >> {path}`); the next export imports them first \
                         and uploads none of those calls again."
                    );
                }
                eprintln!("{}", entry.to_line());
            }
        }
    }

    /// The ledger took a held outcome.
    pub(super) fn took(&self, call: &Call) {
        self.ledger.lock().held.remove(&call.id);
    }

    /// The held outcome of this call, if any.
    pub(super) fn held_entry(&self, call_id: u64) -> Option<RecoveryEntry> {
        self.ledger.lock().held.get(&call_id).cloned()
    }

    /// Imports a recovery journal an earlier run left (before anything else of this run).
    pub(super) async fn import_recovery_journal(&self) -> Result<(), EngineError> {
        let imported = self.store.import_recovery().await.map_err(|e| {
            tracing::error!(error = %e, "could not import the recovery journal; nothing was uploaded");
            e
        })?;
        if let Some(r) = imported {
            tracing::warn!(path = %r.path.display(), entries = r.entries, applied = r.applied,
                "imported the outcomes an earlier run could not record");
            self.summary.lock().unwrap().ledger.imported = r.entries;
            (self.progress)(&ProgressEvent::Ledger(LedgerHealth::Imported {
                path: r.path,
                entries: r.entries,
                applied: r.applied,
            }));
        }
        Ok(())
    }

    /// At the end of the run: outcomes still held are in the journal (say so); if everything reached the ledger,
    /// the journal this run wrote is imported again (a no-op for the ledger) and removed.
    pub(super) async fn settle_ledger_guard(&self) {
        let (held, journal, journaled) = {
            let st = self.ledger.lock();
            (st.held.len() as u64, st.journal.clone(), st.journaled)
        };
        if held > 0 {
            self.summary.lock().unwrap().ledger.journaled = held;
            (self.progress)(&ProgressEvent::Ledger(LedgerHealth::Journaled {
                path: journal,
                held,
            }));
        } else if journaled {
            if let Err(e) = self.store.import_recovery().await {
                tracing::warn!(error = %e, "could not clear the recovery journal; the next run imports it");
            }
        }
    }
}

/// The fault in a few words (English: logs and the run's error).
pub(crate) fn fault_word(fault: LedgerFault) -> &'static str {
    match fault {
        LedgerFault::DiskFull => "disk full",
        LedgerFault::ReadOnly => "read-only",
        LedgerFault::Locked => "locked by another process",
        LedgerFault::Unreachable => "database unreachable",
        LedgerFault::Other => "database error",
    }
}

/// What to do about the fault (English: logs and the run's error; front ends translate from the fault kind).
pub(crate) fn advice(fault: LedgerFault) -> &'static str {
    match fault {
        LedgerFault::DiskFull => "Free space on the ledger's disk",
        LedgerFault::ReadOnly => {
            "Make the ledger file, its directory and filesystem writable again"
        }
        LedgerFault::Locked => {
            "Close the program that holds the ledger's write lock (another b24sense, an sqlite3 shell)"
        }
        LedgerFault::Unreachable => "Check that the database server runs and can be reached",
        LedgerFault::Other => "Check the database's own log",
    }
}

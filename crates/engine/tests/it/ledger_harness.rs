//! What the ledger-fault tests share: a run against the emulators watched from its progress events, the checks
//! (no duplicate talk, no lost call, every call settled), and the faults themselves — a size-limited filesystem, a
//! write lock held by another connection, a TCP proxy to PostgreSQL that can be cut, backends terminated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::{CallFilter, LedgerState};
use b24sense_emulators::speechsense::SpeechSenseConfig;
use b24sense_engine::retry::Backoff;
use b24sense_engine::{
    EngineError, ExportConfig, LedgerHealth, ProgressEvent, ProgressFn, Summary,
};
use b24sense_store::Store;
use tokio_util::sync::CancellationToken;

use crate::e2e::Env;

pub const PORTAL: &str = "emulated.bitrix24.test";

/// An export of `calls` calls whose uploads are answered `latency` after SpeechSense stored them (so that answers
/// are on their way when a fault strikes), watched.
pub struct Watched {
    pub env: Arc<Env>,
    pub events: Arc<Mutex<Vec<(Instant, LedgerHealth)>>>,
    pub settled: Arc<AtomicU64>,
}

impl Watched {
    pub async fn start(calls: usize, latency: Duration) -> Watched {
        let ss = SpeechSenseConfig {
            upload_latency: latency,
            ..SpeechSenseConfig::default()
        };
        Watched {
            env: Arc::new(Env::start_with(calls, ss).await),
            events: Arc::default(),
            settled: Arc::default(),
        }
    }

    pub fn config(&self) -> ExportConfig {
        let mut c = self.env.config(CallFilter::default());
        c.backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        c
    }

    fn progress(&self) -> ProgressFn {
        let (events, settled) = (self.events.clone(), self.settled.clone());
        Arc::new(move |e: &ProgressEvent| match e {
            ProgressEvent::Settled(_) => {
                settled.fetch_add(1, Ordering::Relaxed);
            }
            ProgressEvent::Ledger(h) => events.lock().unwrap().push((Instant::now(), h.clone())),
            _ => {}
        })
    }

    /// Starts the export in a task of its own.
    pub fn spawn(
        &self,
        store: &Store,
        config: ExportConfig,
    ) -> tokio::task::JoinHandle<Result<Summary, EngineError>> {
        let (env, store, progress) = (self.env.clone(), store.clone(), self.progress());
        tokio::spawn(async move {
            env.export_with(&store, config, progress, CancellationToken::new())
                .await
        })
    }

    /// Waits (at most 30 s) until `n` calls have settled.
    pub async fn settled_at_least(&self, n: u64) {
        until(
            Duration::from_secs(30),
            &format!("{n} calls settled"),
            || self.settled.load(Ordering::Relaxed) >= n,
        )
        .await;
    }

    /// Waits (at most `limit`) for a [`LedgerHealth::Down`] event after `since`; returns how long it took and the
    /// event.
    pub async fn told_down(&self, since: Instant, limit: Duration) -> (Duration, LedgerHealth) {
        let mut told = None;
        until(limit, "the user told the ledger is down", || {
            told = self.events.lock().unwrap().iter().find_map(|(at, h)| {
                (matches!(h, LedgerHealth::Down { .. }) && *at >= since).then(|| (*at, h.clone()))
            });
            told.is_some()
        })
        .await;
        let (at, h) = told.unwrap();
        (at - since, h)
    }

    pub fn saw(&self, pred: impl Fn(&LedgerHealth) -> bool) -> bool {
        self.events.lock().unwrap().iter().any(|(_, h)| pred(h))
    }

    /// Talks per call ID in SpeechSense.
    pub fn talks_by_call(&self) -> BTreeMap<u64, Vec<String>> {
        let mut by_call: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for t in self.env.speech.talks() {
            by_call
                .entry(t.fields["id"].parse().unwrap())
                .or_default()
                .push(t.id);
        }
        by_call
    }

    /// The targets: every call with a recording is `uploaded` in the ledger with the one talk SpeechSense holds
    /// for it (0 duplicates, 0 lost), every other call settled.
    pub async fn check(&self, store: &Store) {
        let expected = self.env.expected(&CallFilter::default());
        let talks = self.talks_by_call();
        let states = [
            LedgerState::Pending,
            LedgerState::Uploading,
            LedgerState::Uploaded,
            LedgerState::Skipped,
            LedgerState::Failed,
        ];
        let ledger: BTreeMap<u64, _> = store
            .entries(PORTAL, &states, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.call_id, e))
            .collect();
        let dups: Vec<_> = talks.iter().filter(|(_, t)| t.len() > 1).collect();
        assert!(dups.is_empty(), "duplicate talks: {dups:?}");
        for id in &expected {
            let e = ledger
                .get(id)
                .unwrap_or_else(|| panic!("call {id} not in the ledger"));
            let talk = talks
                .get(id)
                .unwrap_or_else(|| panic!("call {id} lost: no talk ({e:?})"));
            assert_eq!(e.state, LedgerState::Uploaded, "call {id}: {e:?}");
            assert_eq!(e.talk_id.as_deref(), Some(talk[0].as_str()), "call {id}");
        }
        for (id, e) in &ledger {
            assert!(
                matches!(e.state, LedgerState::Uploaded | LedgerState::Skipped),
                "call {id} left unsettled: {e:?}"
            );
        }
        assert!(talks.keys().all(|id| expected.contains(id)));
    }
}

/// Polls `cond` every 10 ms for at most `limit`.
pub async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out ({limit:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A size-limited filesystem (tmpfs) mounted on a temporary directory; unmounted on drop. `None` (with the reason
/// printed) where this machine does not let the test mount one: the test then injects the fault instead.
pub struct SmallFs {
    pub dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            Ok(o) => {
                println!(
                    "cannot mount a tmpfs here ({}): using the injected fault instead",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("cannot run mount ({e}): using the injected fault instead");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what space is left with a ballast file.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut small = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&small).is_ok() {}
        small.truncate(1);
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

//! What the tests that crash, pause and restart the real `b24sense` binary share: the emulators, the binary's
//! runs against them with their logs, signals, bounded waits, and the check that every recorded call ended up as
//! exactly one talk (or a flagged duplicate).

#![allow(dead_code)] // each test binary uses its own part

pub mod chats;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use b24sense_core::LedgerState;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, FaultConfig, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_store::{LedgerEntry, Store};

pub const PORTAL: &str = "crash-portal";
pub const SEARCH: [&str; 6] = [
    "--organization-id",
    "org-1",
    "--space-id",
    "space-1",
    "--project-id",
    "project-1",
];
pub const ALL_STATES: [LedgerState; 5] = [
    LedgerState::Pending,
    LedgerState::Uploading,
    LedgerState::Uploaded,
    LedgerState::Skipped,
    LedgerState::Failed,
];

pub struct World {
    pub portal: Bitrix24Emulator,
    pub speech: SpeechSenseEmulator,
    pub key: String,
    pub connection: String,
    pub dir: tempfile::TempDir,
}

pub async fn world(calls: usize, upload_latency: Duration, faults: FaultConfig) -> World {
    let portal = Bitrix24Emulator::start(PortalConfig {
        calls,
        seed: 4,
        faults,
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let config = SpeechSenseConfig {
        upload_latency,
        ..SpeechSenseConfig::default()
    };
    let key = config.api_keys[0].clone();
    let connection = config.connections[0].id.clone();
    let speech = SpeechSenseEmulator::start(config).await.unwrap();
    World {
        portal,
        speech,
        key,
        connection,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    /// `b24sense export` against the emulators, output to `<dir>/<log>.out|.err`, warnings and errors logged.
    pub fn spawn(&self, extra: &[&str], log: &str) -> Child {
        self.spawn_logging(extra, log, "warn")
    }

    /// [`World::spawn`] with `rust_log` as the log filter (`RUST_LOG`).
    pub fn spawn_logging(&self, extra: &[&str], log: &str, rust_log: &str) -> Child {
        let out = std::fs::File::create(self.dir.path().join(format!("{log}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("{log}.err"))).unwrap();
        Command::new(assert_cmd::cargo::cargo_bin("b24sense"))
            .env_clear()
            .env("HOME", self.dir.path())
            .env("RUST_LOG", rust_log)
            .arg("export")
            .args(["--bitrix24-webhook", &self.portal.webhook_url()])
            .args(["--speechsense-endpoint", &self.speech.endpoint()])
            .args(["--connection-id", &self.connection])
            .args(["--api-key", &self.key])
            .args([
                "--database",
                &format!("sqlite:{}", self.db_path().display()),
            ])
            .args(["--portal-key", PORTAL, "--json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap()
    }

    pub fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{log}.err"))).unwrap_or_default()
    }

    pub async fn store(&self) -> Store {
        Store::open(&format!("sqlite:{}", self.db_path().display()))
            .await
            .unwrap()
    }

    /// Call IDs with a recording: each must end up as exactly one talk.
    pub fn recorded_calls(&self) -> BTreeSet<u64> {
        self.portal
            .call_rows()
            .iter()
            .filter_map(|r| r["ID"].as_str()?.parse::<u64>().ok())
            .filter(|id| self.portal.recording(*id).is_some())
            .collect()
    }

    /// Talk IDs stored per call ID (the talk's `id` key).
    pub fn talks_by_call(&self) -> BTreeMap<u64, Vec<String>> {
        let mut by_call: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for t in self.speech.talks() {
            let call = t.fields.get("id").and_then(|v| v.parse().ok()).unwrap();
            by_call.entry(call).or_default().push(t.id);
        }
        by_call
    }
}

pub async fn entries(store: &Store) -> BTreeMap<u64, LedgerEntry> {
    store
        .entries(PORTAL, &ALL_STATES, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.call_id, e))
        .collect()
}

pub fn pid(child: &Child) -> String {
    child.id().to_string()
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid(child)])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for the child to exit, at most `limit`; kills it and panics on timeout.
pub async fn wait(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 20 ms for at most `limit`.
pub async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every recorded call is `uploaded` with a talk that exists and belongs to it; every talk in the emulator is either
/// the ledger's talk of its call or a duplicate of it. Returns the number of duplicates (extra talks per call).
pub async fn check_ledger_against_emulator(w: &World, store: &Store) -> (u64, BTreeSet<u64>) {
    let ledger = entries(store).await;
    let talks = w.talks_by_call();
    let recorded = w.recorded_calls();
    assert!(!recorded.is_empty());
    for (id, e) in &ledger {
        match e.state {
            LedgerState::Uploaded => assert!(recorded.contains(id), "call {id} has no recording"),
            LedgerState::Skipped => assert_eq!(e.reason.as_deref(), Some("no_recording")),
            other => panic!("call {id} left {other:?}: {e:?}"),
        }
    }
    let mut duplicated = BTreeSet::new();
    let mut duplicates = 0;
    for id in &recorded {
        let e = ledger
            .get(id)
            .unwrap_or_else(|| panic!("call {id} lost: not in the ledger"));
        let talk = e
            .talk_id
            .as_deref()
            .unwrap_or_else(|| panic!("call {id} has no talk ID"));
        let stored = talks
            .get(id)
            .unwrap_or_else(|| panic!("call {id} lost: no talk"));
        assert!(
            stored.iter().any(|t| t == talk),
            "ledger talk {talk} of call {id} missing"
        );
        if stored.len() > 1 {
            duplicates += stored.len() as u64 - 1;
            duplicated.insert(*id);
        }
    }
    for id in talks.keys() {
        assert!(
            recorded.contains(id),
            "a talk for call {id}, which has no recording"
        );
    }
    (duplicates, duplicated)
}

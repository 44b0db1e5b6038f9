//! Crash safety of the real `b24sense` binary against the emulators: `kill -9` at seeded random moments, graceful
//! shutdown on SIGTERM, and a worker paused (SIGSTOP) past its lease while another process takes its calls over.
//!
//! Every wait is bounded; the seeds are fixed, so a failure can be replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use b24sense_core::LedgerState;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, FaultConfig, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_store::{LedgerEntry, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PORTAL: &str = "crash-portal";
const SEARCH: [&str; 6] = [
    "--organization-id",
    "org-1",
    "--space-id",
    "space-1",
    "--project-id",
    "project-1",
];
const ALL_STATES: [LedgerState; 5] = [
    LedgerState::Pending,
    LedgerState::Uploading,
    LedgerState::Uploaded,
    LedgerState::Skipped,
    LedgerState::Failed,
];

struct World {
    portal: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    key: String,
    connection: String,
    dir: tempfile::TempDir,
}

async fn world(calls: usize, upload_latency: Duration, faults: FaultConfig) -> World {
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
    fn db_path(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    /// `b24sense export` against the emulators, output to `<dir>/<log>.out|.err`.
    fn spawn(&self, extra: &[&str], log: &str) -> Child {
        let out = std::fs::File::create(self.dir.path().join(format!("{log}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("{log}.err"))).unwrap();
        Command::new(assert_cmd::cargo::cargo_bin("b24sense"))
            .env_clear()
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "warn")
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

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{log}.err"))).unwrap_or_default()
    }

    async fn store(&self) -> Store {
        Store::open(&format!("sqlite:{}", self.db_path().display()))
            .await
            .unwrap()
    }

    /// Call IDs with a recording: each must end up as exactly one talk.
    fn recorded_calls(&self) -> BTreeSet<u64> {
        self.portal
            .call_rows()
            .iter()
            .filter_map(|r| r["ID"].as_str()?.parse::<u64>().ok())
            .filter(|id| self.portal.recording(*id).is_some())
            .collect()
    }

    /// Talk IDs stored per call ID (the talk's `id` key).
    fn talks_by_call(&self) -> BTreeMap<u64, Vec<String>> {
        let mut by_call: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for t in self.speech.talks() {
            let call = t.fields.get("id").and_then(|v| v.parse().ok()).unwrap();
            by_call.entry(call).or_default().push(t.id);
        }
        by_call
    }
}

async fn entries(store: &Store) -> BTreeMap<u64, LedgerEntry> {
    store
        .entries(PORTAL, &ALL_STATES, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.call_id, e))
        .collect()
}

fn pid(child: &Child) -> String {
    child.id().to_string()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid(child)])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for the child to exit, at most `limit`; kills it and panics on timeout.
async fn wait(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
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
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every recorded call is `uploaded` with a talk that exists and belongs to it; every talk in the emulator is either
/// the ledger's talk of its call or a duplicate of it. Returns the number of duplicates (extra talks per call).
async fn check_ledger_against_emulator(w: &World, store: &Store) -> (u64, BTreeSet<u64>) {
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

/// Kills the exporter 12 times at seeded random moments (50–800 ms after its first portal request), then runs it
/// to completion.
async fn kill_and_restart(reconcile: bool, seed: u64) -> (World, Store) {
    let started = Instant::now();
    let w = world(200, Duration::from_millis(150), FaultConfig::default()).await;
    let mut extra = vec!["--lease-seconds", "1.5", "--concurrency", "4"];
    if reconcile {
        extra.extend(SEARCH);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut killed = 0;
    for i in 0..12 {
        let delay = Duration::from_millis(rng.random_range(50..=800));
        let requests = w.portal.stats().http_requests;
        let mut child = w.spawn(&extra, &format!("kill{i}"));
        // Count from the first portal request (the process has started and holds the portal), so that the kill
        // lands in the export however slowly a loaded machine starts the binary.
        until(
            Duration::from_secs(15),
            "the run's first portal request",
            || w.portal.stats().http_requests > requests,
        )
        .await;
        tokio::time::sleep(delay).await;
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "run {i} failed: {}",
                w.log(&format!("kill{i}"))
            );
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed += 1;
        // The dead process's leases (1.5 s) run out by themselves: the next run waits for them while it starts.
    }
    assert!(killed >= 6, "the runs finished too early to test anything");
    println!("{killed} kills in {:?}", started.elapsed());
    let talks_before = w.speech.talk_count();
    let mut finished = false;
    for i in 0..3 {
        let mut child = w.spawn(&extra, &format!("final{i}"));
        let status = wait(&mut child, Duration::from_secs(30), "the final run").await;
        if status.success() {
            finished = true;
            break;
        }
        eprintln!(
            "final run {i} exited {status}: {}",
            w.log(&format!("final{i}"))
        );
    }
    assert!(finished, "no run finished");
    println!("finished after {:?}", started.elapsed());
    assert!(
        talks_before > 0 && talks_before < w.recorded_calls().len(),
        "the kills landed mid-export ({talks_before} talks before the final run)"
    );
    assert!(started.elapsed() < Duration::from_secs(58));
    let store = w.store().await;
    (w, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_reconciliation_loses_nothing_and_duplicates_nothing() {
    let (w, store) = kill_and_restart(true, 0x5eed_0001).await;
    let (duplicates, _) = check_ledger_against_emulator(&w, &store).await;
    assert_eq!(duplicates, 0, "reconciliation configured: no duplicates");
    // Ledger and emulator hold exactly the same talks.
    let ledger: BTreeSet<String> = entries(&store)
        .await
        .into_values()
        .filter_map(|e| e.talk_id)
        .collect();
    let stored: BTreeSet<String> = w.speech.talks().into_iter().map(|t| t.id).collect();
    assert_eq!(ledger, stored);
    assert!(
        w.speech.stats().searches > 0,
        "in-doubt calls were searched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_without_reconciliation_flags_every_duplicate() {
    let (w, store) = kill_and_restart(false, 0x5eed_0002).await;
    let (duplicates, duplicated) = check_ledger_against_emulator(&w, &store).await;
    println!(
        "kill -9 without reconciliation: {duplicates} duplicate talk(s) in {} call(s)",
        duplicated.len()
    );
    let ledger = entries(&store).await;
    for id in &duplicated {
        assert!(
            ledger[id].reuploaded_after_crash,
            "call {id} was uploaded twice without the reuploaded_after_crash flag"
        );
    }
    assert_eq!(w.speech.stats().searches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_uploads_in_flight_and_a_second_signal_exits_at_once() {
    let w = world(200, Duration::from_millis(300), FaultConfig::default()).await;
    let extra = [
        &["--lease-seconds", "2", "--concurrency", "4"][..],
        &SEARCH[..],
    ]
    .concat();
    let mut child = w.spawn(&extra, "term");
    until(Duration::from_secs(20), "first uploads", || {
        w.speech.talk_count() >= 3
    })
    .await;
    let t0 = Instant::now();
    signal(&child, "-TERM");
    let status = wait(&mut child, Duration::from_secs(15), "after SIGTERM").await;
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(status.code(), Some(130), "{}", w.log("term"));
    let store = w.store().await;
    let ledger = entries(&store).await;
    let by_state = |s: LedgerState| ledger.values().filter(|e| e.state == s).count();
    assert_eq!(
        by_state(LedgerState::Uploading),
        0,
        "in-flight uploads finished"
    );
    assert!(by_state(LedgerState::Pending) > 0, "the run stopped early");
    assert_eq!(
        by_state(LedgerState::Uploaded),
        w.speech.talk_count(),
        "every stored talk is in the ledger"
    );
    for e in ledger.values().filter(|e| e.state == LedgerState::Uploaded) {
        assert!(w.speech.talk(e.talk_id.as_deref().unwrap()).is_some());
    }

    // A second signal exits at once, still leaving a ledger the next run can finish from.
    let mut child = w.spawn(&extra, "term2");
    let before = w.speech.talk_count();
    until(Duration::from_secs(20), "more uploads", || {
        w.speech.talk_count() > before + 2
    })
    .await;
    signal(&child, "-TERM");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t1 = Instant::now();
    signal(&child, "-TERM");
    let status = wait(
        &mut child,
        Duration::from_secs(5),
        "after the second SIGTERM",
    )
    .await;
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "the second signal exits at once"
    );
    assert_eq!(status.code(), Some(130));

    let mut child = w.spawn(&extra, "term3");
    let status = wait(&mut child, Duration::from_secs(40), "the final run").await;
    assert!(status.success(), "{}", w.log("term3"));
    let (duplicates, _) = check_ledger_against_emulator(&w, &store).await;
    assert_eq!(duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_changes_nothing_when_it_resumes() {
    // Slow downloads and slow answers: the pause lands mid-stream or while an answer is pending.
    let faults = FaultConfig::default().with_slow_download(Duration::from_millis(150));
    let w = world(24, Duration::from_millis(600), faults).await;
    let extra = [
        &["--lease-seconds", "2", "--concurrency", "4"][..],
        &SEARCH[..],
    ]
    .concat();
    let mut paused = w.spawn(&extra, "paused");
    until(Duration::from_secs(20), "the first talk", || {
        w.speech.talk_count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    signal(&paused, "-STOP");
    let stored_at_pause = w.speech.talk_count();

    let mut other = w.spawn(&extra, "other");
    let status = wait(&mut other, Duration::from_secs(40), "the second worker").await;
    assert!(status.success(), "{}", w.log("other"));
    let store = w.store().await;
    let after_other = entries(&store).await;
    let talks_after_other = w.speech.talk_count();

    signal(&paused, "-CONT");
    let status = wait(&mut paused, Duration::from_secs(15), "the resumed worker").await;
    assert!(
        !status.success(),
        "the resumed worker lost the portal: {}",
        w.log("paused")
    );

    let after_resume = entries(&store).await;
    let view = |m: &BTreeMap<u64, LedgerEntry>| {
        m.values()
            .map(|e| (e.call_id, e.state, e.talk_id.clone(), e.reason.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        view(&after_other),
        view(&after_resume),
        "the resumed worker changed the ledger"
    );
    assert_eq!(
        w.speech.talk_count(),
        talks_after_other,
        "the resumed worker stored a talk"
    );
    let (duplicates, _) = check_ledger_against_emulator(&w, &store).await;
    assert_eq!(duplicates, 0, "exactly one talk per call");
    assert!(stored_at_pause < w.recorded_calls().len());
    assert!(
        w.speech.stats().searches > 0,
        "the second worker found calls in doubt and searched for them"
    );
}

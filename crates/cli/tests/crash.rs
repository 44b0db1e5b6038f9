//! Crash safety of the real `b24sense` binary against the emulators: `kill -9` at seeded random moments, graceful
//! shutdown on SIGTERM, and a worker paused (SIGSTOP) past its lease while another process takes its calls over.
//!
//! Every wait is bounded; the seeds are fixed, so a failure can be replayed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use b24sense_core::LedgerState;
use b24sense_emulators::bitrix24::FaultConfig;
use b24sense_store::{LedgerEntry, Store};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
        // The next run on this machine finds this process gone and takes its leases over at once.
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

//! Restarting after a crash on the same machine: the real `b24sense` binary, killed with `kill -9` mid-export, is
//! taken over at once by the next run (which finds the dead process in the portal lease's holder), while a live
//! holder, or one on another machine, is still waited for.
//!
//! Every wait is bounded; the speed of the takeover is shown by the restarted run's log (it never waited for the
//! lease), not by timing asserts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use b24sense_emulators::bitrix24::FaultConfig;
use b24sense_engine::holder::Holder;
use common::*;

/// The engine's lines about the portal lease, and the warnings.
const LOG: &str = "warn,b24sense_engine=info";
const TOOK_OVER_A_DEAD_RUN: &str = "is gone; taking the portal over";
const WAITED_FOR_THE_LEASE: &str = "another process holds this portal";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_kill_9_is_taken_over_at_once() {
    let w = world(120, Duration::from_millis(200), FaultConfig::default()).await;
    // The default leases (60 s): a restart that waited for them would not finish within the bounded wait below.
    let extra = [&["--concurrency", "4"][..], &SEARCH[..]].concat();
    let mut killed = w.spawn(&extra, "killed");
    until(Duration::from_secs(30), "the first uploads", || {
        w.speech.talk_count() >= 3
    })
    .await;
    let killed_pid = killed.id();
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    // A stream the killed run half-closed just before the kill is still stored (SpeechSense answers after its
    // 200 ms): let it land, so that the first talk counted below is the restarted run's own.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let talks_before = w.speech.talk_count();
    assert!(talks_before < w.recorded_calls().len(), "killed mid-export");

    let started = Instant::now();
    let mut restarted = w.spawn_logging(&extra, "restarted", LOG);
    until(
        Duration::from_secs(40),
        "the restarted run's first upload",
        || w.speech.talk_count() > talks_before,
    )
    .await;
    let first_upload = started.elapsed();
    let status = wait(&mut restarted, Duration::from_secs(40), "the restarted run").await;
    let log = w.log("restarted");
    assert!(status.success(), "{log}");
    println!(
        "after kill -9: first upload {first_upload:?} after the restart, finished after {:?}",
        started.elapsed()
    );
    assert!(
        log.contains(&format!(
            "the previous run (pid {killed_pid}) {TOOK_OVER_A_DEAD_RUN}"
        )),
        "{log}"
    );
    assert!(!log.contains(WAITED_FOR_THE_LEASE), "{log}");
    assert!(
        !log.contains("another worker still holds this call"),
        "the dead run's call leases were given back: {log}"
    );

    let store = w.store().await;
    let (duplicates, _) = check_ledger_against_emulator(&w, &store).await;
    assert_eq!(duplicates, 0, "every call exactly once");
}

/// A pid that belonged to a process that has exited.
fn a_dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_or_one_elsewhere_is_waited_for() {
    let w = world(10, Duration::ZERO, FaultConfig::default()).await;
    let store = w.store().await;
    let me = Holder::this_process().expect("Linux has /proc");
    let dead_pid = a_dead_pid();
    let cases = [
        ("alive", me.clone(), true),
        (
            "elsewhere",
            Holder {
                host: "another-host".into(),
                pid: dead_pid,
                ..me.clone()
            },
            true,
        ),
        (
            "dead-here",
            Holder {
                pid: dead_pid,
                ..me.clone()
            },
            false,
        ),
    ];
    for (name, holder, waits) in cases {
        // Held for 2 s by a run of another owner: this test process (alive), or a process elsewhere or gone.
        store
            .claim_portal(
                PORTAL,
                &format!("run-{name}"),
                Some(&holder.to_string()),
                Duration::from_secs(2),
            )
            .await
            .unwrap()
            .expect("the portal is free");
        let mut run = w.spawn_logging(&["--concurrency", "2"], name, LOG);
        let status = wait(&mut run, Duration::from_secs(30), name).await;
        let log = w.log(name);
        assert!(status.success(), "{name}: {log}");
        assert_eq!(log.contains(WAITED_FOR_THE_LEASE), waits, "{name}: {log}");
        assert_eq!(log.contains(TOOK_OVER_A_DEAD_RUN), !waits, "{name}: {log}");
    }
    assert!(w.speech.talk_count() > 0);
}

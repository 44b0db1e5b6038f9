//! A chat run whose ledger fails mid-run, over sockets: claims that take effect and then lose their answer (the
//! moment of a connection cut after the commit), and a ledger that refuses every write (a full disk), each for
//! about 2 s. The run rides them out by itself: no session uploaded twice, every finished session settled.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24sense_core::LedgerState;
use b24sense_emulators::speechsense::SpeechSenseConfig;
use b24sense_engine::chats::{run_chat_export, ChatReport};
use b24sense_engine::retry::Backoff;
use b24sense_store::{InjectedFault, LedgerFaults, OpenOptions, Store};
use tokio_util::sync::CancellationToken;

use super::emu::{Emu, PORTAL};
use crate::support::postgres_url;

/// A ledger with an injectable fault, on the backend the suite runs on.
async fn faulty_store(faults: &LedgerFaults) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = OpenOptions {
        faults: Some(faults.clone()),
        ..OpenOptions::default()
    };
    let store = if std::env::var("B24SENSE_TEST_LEDGER").is_ok_and(|v| v == "postgres") {
        let schema = format!("chat_faults_{}", uuid::Uuid::new_v4().simple());
        let options = OpenOptions {
            schema: Some(schema),
            ..options
        };
        Store::open_with(&postgres_url(), options).await.unwrap()
    } else {
        let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
        Store::open_with(&url, options).await.unwrap()
    };
    (store, dir)
}

/// Injects `fault` once 30 sessions have settled, keeps it 2 s, clears it; the run must finish by itself well
/// within 40 s, without a search scope, every finished session settled and none uploaded twice.
async fn ride_out(fault: InjectedFault) {
    let ss = SpeechSenseConfig {
        upload_latency: Duration::from_millis(100),
        ..SpeechSenseConfig::default()
    };
    let emu = Arc::new(Emu::start(240, ss).await);
    let faults = LedgerFaults::new();
    let (store, _dir) = faulty_store(&faults).await;
    let oracle = emu.portal.chat_sessions();
    let finished = oracle.iter().filter(|s| s.completed).count() as u64;
    let settled = Arc::new(AtomicU64::new(0));
    let counter = settled.clone();
    let progress = Arc::new(move |_: &ChatReport| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut c = emu.config();
    c.backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    let started = Instant::now();
    let run = {
        let (emu, store) = (emu.clone(), store.clone());
        tokio::spawn(async move {
            run_chat_export(
                emu.source.clone(),
                emu.sink(false),
                store,
                c,
                progress,
                CancellationToken::new(),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while settled.load(Ordering::Relaxed) < 30 {
        assert!(
            Instant::now() < deadline,
            "30 sessions did not settle in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = settled.load(Ordering::Relaxed);
    faults.set(Some(fault));
    tokio::time::sleep(Duration::from_secs(2)).await;
    faults.set(None);
    let summary = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the chat run went on by itself and finished")
        .unwrap()
        .unwrap();
    println!(
        "{fault:?} after {at} of {} settled: finished in {:?}, {} uploaded, {} ledger retries in {} outage(s)",
        oracle.len(),
        started.elapsed(),
        summary.uploaded,
        summary.ledger_retries,
        summary.ledger_outages
    );
    assert!(summary.stopped.is_none(), "{summary:?}");
    assert!(summary.ledger_retries >= 1, "the fault struck: {summary:?}");
    assert_eq!(
        (summary.failed_total(), summary.unsettled),
        (0, 0),
        "{summary:?}"
    );
    assert_eq!(summary.reuploaded_after_crash, 0, "{summary:?}");
    let skipped: u64 = summary.skipped.values().sum();
    assert_eq!(summary.uploaded + skipped, finished, "{summary:?}");
    // No part twice, and the ledger knows every talk stored.
    let talks = emu.chat_talks();
    let distinct: BTreeSet<&(String, String)> = talks.iter().collect();
    assert_eq!(distinct.len(), talks.len(), "no part uploaded twice");
    assert_eq!(talks.len() as u64, summary.talks);
    let rows = store.chat_ledger_page(PORTAL, None, 10_000).await.unwrap();
    let recorded: usize = rows.iter().map(|r| r.talk_ids.len()).sum();
    assert_eq!(recorded, talks.len(), "every talk ID recorded");
    let unfinished: Vec<u64> = rows
        .iter()
        .filter(|r| r.state == LedgerState::Uploading || r.lease_owner.is_some())
        .map(|r| r.session_id)
        .collect();
    assert!(unfinished.is_empty(), "held or in doubt: {unfinished:?}");
}

/// Claims take effect and then lose their answer: the claim's retry, under the same owner, takes the session back
/// instead of waiting a whole lease (60 s) for it as another worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_claims_whose_answer_was_lost_are_taken_back_not_waited_for() {
    ride_out(InjectedFault::ClaimAnswerLost).await;
}

/// Every ledger statement fails as on a full disk: no session is claimed or marked, none uploads, the talk IDs
/// already answered are held until the ledger takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_run_rides_out_a_full_disk() {
    ride_out(InjectedFault::DiskFull).await;
}

//! When the ledger itself fails mid-run (`docs/ledger-faults.md`): a SQLite file whose filesystem fills up, a
//! database turned read-only, a write lock another connection holds — and a fault that outlasts the give-up time.
//! Targets, without a SpeechSense search scope: 0 duplicate talks, 0 lost calls, every call settled once the fault
//! clears (by the run itself, or by one more run after it gave up), and the user told the cause within 5 s.
//!
//! The full disk is a real size-limited tmpfs where the test may mount one (as root here and in CI), else the
//! store's fault-injecting layer (the test says so). A read-only database cannot be made under a running
//! process (a read-only remount refuses while files are open for writing, and root ignores file modes), so it is
//! injected; the real binary meets a filesystem turned read-only in `crates/cli/tests/ledger_faults.rs`.

use std::time::{Duration, Instant};

use b24sense_engine::{Concurrency, EngineError, LedgerFault, LedgerHealth};
use b24sense_store::{InjectedFault, LedgerFaults, OpenOptions, Store};
use sqlx::Connection;

use crate::ledger_harness::{SmallFs, Watched};
use crate::support::postgres_url;

/// A ledger with an injectable fault, on the backend the suite runs on (SQLite in a temporary directory, or a
/// PostgreSQL schema of its own whose recovery journal is kept in that directory).
async fn faulty_store(faults: &LedgerFaults) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = OpenOptions {
        faults: Some(faults.clone()),
        ..OpenOptions::default()
    };
    let store = if std::env::var("B24SENSE_TEST_LEDGER").is_ok_and(|v| v == "postgres") {
        let schema = format!("ledger_faults_{}", uuid::Uuid::new_v4().simple());
        let options = OpenOptions {
            schema: Some(schema),
            ..options
        };
        Store::open_with(&postgres_url(), options)
            .await
            .unwrap()
            .with_recovery_dir(dir.path())
    } else {
        let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
        Store::open_with(&url, options).await.unwrap()
    };
    (store, dir)
}

/// Injects `fault` once 40 calls have settled, keeps it 2 s, clears it; the run must say so at once and finish
/// by itself.
async fn ride_out_injected(fault: InjectedFault, expect: LedgerFault) {
    let w = Watched::start(240, Duration::from_millis(150)).await;
    let faults = LedgerFaults::new();
    let (store, _dir) = faulty_store(&faults).await;
    let run = w.spawn(&store, w.config());
    w.settled_at_least(40).await;
    let at = Instant::now();
    faults.set(Some(fault));
    let (told, event) = w.told_down(at, Duration::from_secs(5)).await;
    println!("{fault:?}: told after {told:?}: {event:?}");
    assert!(
        matches!(event, LedgerHealth::Down { fault, .. } if fault == expect),
        "{event:?}"
    );
    let settled = w.settled.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // While the ledger refused writes, no call reached an outcome and none was lost.
    faults.set(None);
    let summary = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the run went on by itself and finished")
        .unwrap()
        .unwrap();
    println!("{:?} after {settled} settled: {:?}", fault, summary.ledger);
    assert!(w.saw(|h| matches!(h, LedgerHealth::Up { .. })));
    assert!(summary.stopped.is_none(), "{summary:?}");
    assert!(summary.ledger.outages >= 1 && summary.ledger.journaled == 0);
    w.check(&store).await;
    assert!(
        store.pending_recovery().unwrap().is_none(),
        "the journal of outcomes the ledger took later is cleared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_ledger_mid_run_holds_outcomes_and_goes_on_by_itself() {
    ride_out_injected(InjectedFault::ReadOnly, LedgerFault::ReadOnly).await;
}

/// Every statement takes effect and then fails, as when the connection to a database server is cut after it
/// committed (the PostgreSQL outage of `ledger_faults_pg`): an outcome committed without an answer is not
/// uploaded again, and the run goes on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_whose_answer_was_lost_are_not_done_twice() {
    ride_out_injected(InjectedFault::AnswerLost, LedgerFault::Unreachable).await;
}

/// Claims take effect and then fail (the cut at the moment that made `ledger_faults_pg`'s outage test hang now and
/// then): the retry of a claim must take its calls back, not wait a whole lease (60 s here) for them as another
/// worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_whose_answer_was_lost_are_taken_back_not_waited_for() {
    ride_out_injected(InjectedFault::ClaimAnswerLost, LedgerFault::Unreachable).await;
}

/// The disk under a SQLite ledger fills up mid-run: a real tmpfs filled by a ballast file (a reader keeps the WAL
/// from being reset, so every commit needs new space), freed after 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_mid_run_holds_outcomes_and_goes_on_by_itself() {
    let Some(fs) = SmallFs::mount("64m") else {
        return ride_out_injected(InjectedFault::DiskFull, LedgerFault::DiskFull).await;
    };
    let w = Watched::start(240, Duration::from_millis(150)).await;
    let url = format!("sqlite:{}", fs.path().join("ledger.db").display());
    let store = Store::open(&url).await.unwrap();
    let mut reader = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT COUNT(*) FROM ledger;")
        .execute(&mut reader)
        .await
        .unwrap();
    let run = w.spawn(&store, w.config());
    w.settled_at_least(40).await;
    let at = Instant::now();
    let ballast = fs.fill();
    let (told, event) = w.told_down(at, Duration::from_secs(5)).await;
    println!("disk full: told after {told:?}: {event:?}");
    assert!(
        matches!(
            event,
            LedgerHealth::Down {
                fault: LedgerFault::DiskFull,
                ..
            }
        ),
        "{event:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(ballast).unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the run went on by itself and finished")
        .unwrap()
        .unwrap();
    println!("disk full: {:?}", summary.ledger);
    assert!(w.saw(|h| matches!(h, LedgerHealth::Up { .. })));
    assert!(summary.stopped.is_none() && summary.ledger.outages >= 1);
    w.check(&store).await;
    drop(reader);
    store.close().await;
}

/// Another connection holds SQLite's write lock (`BEGIN IMMEDIATE`) for 6 s mid-run: the store's writes fail with
/// `SQLITE_BUSY` after its busy timeout; the run holds, says so, and goes on once the lock is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_from_another_connection_mid_run() {
    let w = Watched::start(240, Duration::from_millis(150)).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let store = Store::open(&url).await.unwrap();
    let run = w.spawn(&store, w.config());
    w.settled_at_least(40).await;
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let at = Instant::now();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let (told, event) = w.told_down(at, Duration::from_secs(5)).await;
    println!("busy: told after {told:?}: {event:?}");
    assert!(
        matches!(
            event,
            LedgerHealth::Down {
                fault: LedgerFault::Locked,
                ..
            }
        ),
        "{event:?}"
    );
    tokio::time::sleep((at + Duration::from_secs(6)).saturating_duration_since(Instant::now()))
        .await;
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the run went on by itself and finished")
        .unwrap()
        .unwrap();
    println!("busy: {:?}", summary.ledger);
    assert!(w.saw(|h| matches!(h, LedgerHealth::Up { .. })));
    assert!(summary.stopped.is_none() && summary.ledger.outages >= 1);
    w.check(&store).await;
}

/// The fault outlasts the give-up time: the run ends with the outcomes it could not record in the recovery
/// journal, which the next run imports before anything else — so none of those calls is uploaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_past_the_give_up_time_leaves_a_journal_the_next_run_imports() {
    let w = Watched::start(240, Duration::from_millis(300)).await;
    let faults = LedgerFaults::new();
    let (store, _dir) = faulty_store(&faults).await;
    let mut config = w.config();
    config.ledger_give_up = Duration::from_millis(1500);
    config.concurrency = Concurrency::Pinned(8);
    // Its leases could not be given back (the ledger refused): the next run, in this same live process, waits
    // for them to run out, as a replica would (a new process finds a dead holder's lease and takes it at once).
    config.lease = Duration::from_secs(3);
    config.portal_lease = Duration::from_secs(3);
    let run = w.spawn(&store, config);
    w.settled_at_least(30).await;
    faults.set(Some(InjectedFault::DiskFull));
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run gave up in time")
        .unwrap();
    let Err(EngineError::Stopped { reason, summary }) = result else {
        panic!("expected the run to stop: {result:?}");
    };
    println!("gave up: {reason}\n{:?}", summary.ledger);
    assert!(reason.contains("recovery journal"), "{reason}");
    let (path, entries) = store.pending_recovery().unwrap().expect("a journal");
    let talks: Vec<(u64, String)> = entries
        .iter()
        .filter_map(|e| Some((e.call_id, e.talk_id()?.to_string())))
        .collect();
    println!(
        "{}: {} entries, {} talk IDs",
        path.display(),
        entries.len(),
        talks.len()
    );
    assert!(
        !talks.is_empty(),
        "answers were on their way when the disk filled"
    );
    assert_eq!(summary.ledger.journaled, entries.len() as u64);
    assert!(w.saw(|h| matches!(h, LedgerHealth::Journaled { path: Some(_), .. })));
    // Those calls are in SpeechSense once, and the ledger does not know it yet.
    let before = w.talks_by_call();
    for (id, talk) in &talks {
        assert_eq!(before[id], vec![talk.clone()]);
    }

    faults.set(None);
    let again = w.spawn(&store, w.config());
    let summary = tokio::time::timeout(Duration::from_secs(40), again)
        .await
        .expect("the next run finished")
        .unwrap()
        .unwrap();
    assert_eq!(
        summary.ledger.imported,
        entries.len() as u64,
        "{:?}",
        summary.ledger
    );
    assert!(w.saw(|h| matches!(h, LedgerHealth::Imported { .. })));
    assert!(store.pending_recovery().unwrap().is_none());
    w.check(&store).await;
}

//! The real `b24sense` binary when its SQLite ledger refuses writes for longer than `--ledger-give-up`
//! (`docs/ledger-faults.md`): another connection holds the write lock (`BEGIN IMMEDIATE`), so every write fails
//! with `SQLITE_BUSY`. The run tells the user within 5 s, ends after the give-up time with the outcomes it could not
//! record in the recovery journal beside the ledger — or, when even that cannot be written, on stderr as JSON
//! lines — `status` shows the pending journal and names the ledger, and one re-run imports it before anything
//! else: 0 duplicate talks, 0 lost calls, every call settled. No SpeechSense search scope.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use b24sense_emulators::bitrix24::FaultConfig;
use common::*;
use sqlx::Connection;

/// `b24sense status` on the world's ledger: its stdout.
fn ledger_status(w: &World) -> String {
    let out = Command::new(assert_cmd::cargo::cargo_bin("b24sense"))
        .env_clear()
        .env("HOME", w.dir.path())
        .args(["status", "--database"])
        .arg(format!("sqlite:{}", w.db_path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn journal_path(w: &World) -> std::path::PathBuf {
    w.dir.path().join("ledger.db.recovery.jsonl")
}

/// Runs an export until answers are flowing, then holds the ledger's write lock (from this process, another
/// than the binary's) until the run gives up, 2 s after the first refused write; then lets it go.
async fn run_into_a_held_lock(w: &World, log: &str, before_lock: impl FnOnce()) {
    let extra = ["--concurrency", "4", "--ledger-give-up", "2s"];
    let mut child = w.spawn(&extra, log);
    until(Duration::from_secs(30), "the first 20 talks", || {
        w.speech.talk_count() >= 20
    })
    .await;
    before_lock();
    let url = format!("sqlite:{}", w.db_path().display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let locked = Instant::now();
    until(
        Duration::from_secs(5),
        "the user told the ledger refuses writes",
        || {
            w.log(log)
                .contains("the ledger refuses writes (locked by another process")
        },
    )
    .await;
    println!("told after {:?}", locked.elapsed());
    let status = wait(&mut child, Duration::from_secs(40), "the run that gives up").await;
    assert_eq!(status.code(), Some(4), "{}", w.log(log));
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
}

/// The re-run after the fault: exit 0, the journal imported first, every call once.
async fn rerun_and_check(w: &World, imported: usize) {
    let mut child = w.spawn(&[], "rerun");
    let status = wait(&mut child, Duration::from_secs(40), "the re-run").await;
    assert!(status.success(), "{}", w.log("rerun"));
    let out = std::fs::read_to_string(w.dir.path().join("rerun.out")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["ledger"]["imported"], imported as u64, "{out}");
    assert!(w.log("rerun").contains("imported the recovery journal"));
    assert!(!journal_path(w).exists());
    let store = w.store().await;
    let (duplicates, which) = check_ledger_against_emulator(w, &store).await;
    if duplicates > 0 {
        for l in ["locked", "rerun"] {
            println!("--- {l}\n{}", w.log(l));
        }
        for id in &which {
            println!("call {id}: {:?}", store.entry(PORTAL, *id).await.unwrap());
        }
    }
    assert_eq!(duplicates, 0, "calls uploaded twice: {which:?}");
    assert!(!ledger_status(w).contains("recovery journal"));
}

/// Talk IDs in journal lines (the file, or lines copied from stderr).
fn talk_ids(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter(|l| l.starts_with("{\"b24sense_recovery\""))
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["call_id"].as_u64()?, v["talk_id"].as_str()?.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_past_the_give_up_time_leaves_a_journal_status_shows_and_one_rerun_imports() {
    let w = world(200, Duration::from_millis(300), FaultConfig::default()).await;
    run_into_a_held_lock(&w, "locked", || {}).await;
    let log = w.log("locked");
    assert!(log.contains("kept in the recovery journal"), "{log}");

    let journal = std::fs::read_to_string(journal_path(&w)).unwrap();
    let talks = talk_ids(&journal);
    println!(
        "journal: {} lines, {} talk IDs",
        journal.lines().count(),
        talks.len()
    );
    assert!(
        !talks.is_empty(),
        "answers were on their way when the lock was taken"
    );
    // SpeechSense holds those talks once; the ledger does not know them yet.
    let store = w.store().await;
    for (id, talk) in &talks {
        assert_eq!(w.talks_by_call()[id], vec![talk.clone()]);
        let e = store.entry(PORTAL, *id).await.unwrap().unwrap();
        assert!(e.talk_id.is_none(), "{e:?}");
    }
    store.close().await;

    let shown = ledger_status(&w);
    assert!(
        shown.contains(&format!("ledger: sqlite:{}", w.db_path().display())),
        "status names the ledger it read: {shown}"
    );
    assert!(shown.contains("recovery journal pending"), "{shown}");
    assert!(
        shown.contains(&format!("{} with a talk ID", talks.len())),
        "{shown}"
    );

    rerun_and_check(&w, journal.lines().count()).await;
}

/// Even the recovery journal cannot be written (its path is taken by a directory, as a read-only or full
/// filesystem would refuse it): the outcomes are printed on stderr as JSON lines with what to do, and doing it —
/// appending them to the journal — lets one re-run import them: still no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_journal_cannot_be_written_the_talk_ids_go_to_stderr() {
    let w = world(200, Duration::from_millis(300), FaultConfig::default()).await;
    let journal = journal_path(&w);
    let block = journal.clone();
    run_into_a_held_lock(&w, "locked", move || {
        std::fs::create_dir(&block).unwrap();
    })
    .await;
    let log = w.log("locked");
    assert!(
        log.contains("append them to") && log.contains("the next export imports them first"),
        "instructions on stderr: {log}"
    );
    let talks = talk_ids(&log);
    println!("stderr: {} talk IDs", talks.len());
    assert!(!talks.is_empty(), "{log}");
    let shown = ledger_status(&w);
    assert!(
        shown.contains("recovery journal"),
        "status says the journal cannot be read: {shown}"
    );

    // What the message says to do: the lines into the journal (once its place is free).
    std::fs::remove_dir(&journal).unwrap();
    let lines: String = log
        .lines()
        .filter(|l| l.starts_with("{\"b24sense_recovery\""))
        .map(|l| format!("{l}\n"))
        .collect();
    append(&journal, &lines);
    rerun_and_check(&w, lines.lines().count()).await;
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

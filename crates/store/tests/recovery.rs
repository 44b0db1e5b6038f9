//! The recovery journal (outcomes the ledger could not take, `docs/ledger-faults.md`) and the ledger's faults as
//! the store reports them: a full disk (a real tmpfs where the test may mount one, else the fault-injecting
//! layer — the test says which), a read-only database (injected), a write lock held by another connection, and
//! where the ledger is, as `status` names it.

use std::process::Command;
use std::time::{Duration, Instant};

use b24sense_core::{Call, FailReason, LedgerState, Outcome, SkipReason};
use b24sense_store::{
    read_recovery_journal, InjectedFault, LedgerFault, LedgerFaults, OpenOptions, RecoveryEntry,
    Store,
};
use sqlx::Connection;

const PORTAL: &str = "p.bitrix24.test";

fn call(id: u64) -> Call {
    let row = serde_json::json!({
        "ID": id.to_string(), "CALL_ID": format!("call-{id}"), "CALL_DURATION": "60", "CALL_TYPE": "1",
        "CALL_START_DATE": "2026-03-10T11:19:38+03:00", "CALL_RECORD_URL": format!("https://rec.test/{id}.mp3"),
        "PORTAL_USER_ID": "12", "PHONE_NUMBER": "+79001234567",
    });
    Call::from_bitrix(&row, chrono::FixedOffset::east_opt(3 * 3600).unwrap()).unwrap()
}

async fn sqlite(dir: &std::path::Path, faults: Option<LedgerFaults>) -> (Store, String) {
    let url = format!("sqlite:{}", dir.join("ledger.db").display());
    let options = OpenOptions {
        faults,
        ..OpenOptions::default()
    };
    (Store::open_with(&url, options).await.unwrap(), url)
}

fn uploaded(talk: &str) -> Outcome {
    Outcome::Uploaded {
        talk_id: talk.into(),
        mono: false,
        reuploaded_after_crash: false,
    }
}

#[tokio::test]
async fn a_journal_is_imported_once_and_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite(dir.path(), None).await;
    let calls: Vec<Call> = (1..=5).map(call).collect();
    store.register(PORTAL, &calls).await.unwrap();
    // Call 1 in doubt (`uploading`), 2 pending, 3 uploaded by another run with its own talk, 4 skipped.
    let c1 = store
        .claim(PORTAL, 1, "w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .mark_uploading(&c1, Duration::from_secs(60))
        .await
        .unwrap());
    let c3 = store
        .claim(PORTAL, 3, "w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(store.finish(&c3, &uploaded("talk-3-ledger")).await.unwrap());
    let skip = Outcome::Skipped {
        reason: SkipReason::NoRecording,
    };
    assert!(store.settle_unheld(PORTAL, 4, &skip).await.unwrap());

    let failed = Outcome::Failed {
        reason: FailReason::UploadFailed,
        detail: "x".into(),
    };
    let entries = vec![
        RecoveryEntry::new(PORTAL, 1, uploaded("talk-1")),
        RecoveryEntry::new(PORTAL, 2, failed.clone()),
        RecoveryEntry::new(PORTAL, 3, uploaded("talk-3-journal")),
        RecoveryEntry::new(PORTAL, 4, failed),
    ];
    let path = store.append_recovery(&entries[..2]).unwrap();
    assert_eq!(
        path,
        dir.path().join("ledger.db.recovery.jsonl"),
        "beside the ledger"
    );
    store.append_recovery(&entries[2..]).unwrap();
    let (_, pending) = store.pending_recovery().unwrap().unwrap();
    assert_eq!(pending, entries, "appended, in order");

    let done = store.import_recovery().await.unwrap().unwrap();
    assert_eq!((done.entries, done.applied), (4, 2));
    assert!(!path.exists(), "removed once imported");
    let e = |id| {
        let store = store.clone();
        async move { store.entry(PORTAL, id).await.unwrap().unwrap() }
    };
    let one = e(1).await;
    assert_eq!(
        (one.state, one.talk_id.as_deref()),
        (LedgerState::Uploaded, Some("talk-1"))
    );
    assert!(one.lease_owner.is_none());
    assert_eq!(e(2).await.state, LedgerState::Failed);
    assert_eq!(
        e(3).await.talk_id.as_deref(),
        Some("talk-3-ledger"),
        "an upload is never replaced"
    );
    assert_eq!(
        e(4).await.state,
        LedgerState::Skipped,
        "a settled row is not failed after the fact"
    );
    // The claim the lost run held can change nothing any more.
    assert!(!store.finish(&c1, &uploaded("talk-1-late")).await.unwrap());
    assert!(
        store.import_recovery().await.unwrap().is_none(),
        "nothing left"
    );

    // Imported twice (a crash between the import and the removal): nothing changes.
    store.append_recovery(&entries).unwrap();
    let again = store.import_recovery().await.unwrap().unwrap();
    assert_eq!(again.applied, 0);
}

#[tokio::test]
async fn journal_lines_from_a_log_count_and_a_cut_last_line_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.jsonl");
    let a = RecoveryEntry::new(PORTAL, 7, uploaded("t7"));
    let b = RecoveryEntry::new(PORTAL, 8, uploaded("t8"));
    let cut = &b.to_line()[..20];
    std::fs::write(
        &path,
        format!("\n2025-01-01 ERROR {}\n{}\n{cut}", a.to_line(), b.to_line()),
    )
    .unwrap();
    assert_eq!(read_recovery_journal(&path).unwrap(), vec![a.clone(), b]);
    // A damaged line in the middle is refused, naming it: a talk ID must not vanish silently.
    std::fs::write(
        &path,
        format!("{{\"b24sense_recovery\":1,\"oops\"\n{}\n", a.to_line()),
    )
    .unwrap();
    let err = read_recovery_journal(&path).unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
}

#[tokio::test]
async fn injected_faults_fail_every_statement_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let faults = LedgerFaults::new();
    let (store, _) = sqlite(dir.path(), Some(faults.clone())).await;
    for (fault, kind) in [
        (InjectedFault::DiskFull, LedgerFault::DiskFull),
        (InjectedFault::ReadOnly, LedgerFault::ReadOnly),
    ] {
        faults.set(Some(fault));
        let e = store.register(PORTAL, &[call(1)]).await.unwrap_err();
        assert_eq!(e.fault(), kind, "{e}");
        assert!(e.may_pass_later());
        faults.set(None);
        store.register(PORTAL, &[call(1)]).await.unwrap();
    }
}

/// A real full disk: a tmpfs of 2 MiB, filled by a ballast file, then freed.
#[tokio::test]
async fn a_full_disk_is_reported_as_such_and_passes_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    let faults = LedgerFaults::new();
    let (store, url) = sqlite(dir.path(), (!mounted).then(|| faults.clone())).await;
    store.register(PORTAL, &[call(1)]).await.unwrap();
    let ballast = dir.path().join("ballast");
    if mounted {
        // A reader keeps the WAL from being reset, so the next commit needs new space.
        let mut reader = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN; SELECT COUNT(*) FROM ledger;")
            .execute(&mut reader)
            .await
            .unwrap();
        let _ = std::fs::write(&ballast, vec![0u8; 4 << 20]);
        let calls: Vec<Call> = (2..200).map(call).collect();
        let e = store.register(PORTAL, &calls).await.unwrap_err();
        assert_eq!(e.fault(), LedgerFault::DiskFull, "{e}");
        std::fs::remove_file(&ballast).unwrap();
        sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
        store.register(PORTAL, &calls).await.unwrap();
        store.close().await;
        drop(reader);
        let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
    } else {
        println!("cannot mount a tmpfs here: using the injected fault instead");
        faults.set(Some(InjectedFault::DiskFull));
        let e = store.register(PORTAL, &[call(2)]).await.unwrap_err();
        assert_eq!(e.fault(), LedgerFault::DiskFull, "{e}");
        faults.set(None);
        store.register(PORTAL, &[call(2)]).await.unwrap();
    }
}

/// Another connection holds the write lock: a write fails with `SQLITE_BUSY` after the busy timeout (3 s by
/// default, so the engine can tell the user within seconds), and passes once the lock is let go.
#[tokio::test]
async fn a_write_lock_held_elsewhere_is_reported_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = sqlite(dir.path(), None).await;
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let at = Instant::now();
    let e = store.register(PORTAL, &[call(1)]).await.unwrap_err();
    println!("busy after {:?}: {e}", at.elapsed());
    assert_eq!(e.fault(), LedgerFault::Locked, "{e}");
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    store.register(PORTAL, &[call(1)]).await.unwrap();
}

#[tokio::test]
async fn the_ledger_is_named_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite(dir.path(), None).await;
    let file = dir.path().join("ledger.db");
    assert_eq!(store.describe(), format!("sqlite:{}", file.display()));
    // PostgreSQL trusts local connections here, so a password in the URL is accepted and must not be shown.
    let url = std::env::var("B24SENSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
        .replacen("postgres@", "postgres:s3cret-pw@", 1);
    let schema = format!("recovery_{}", uuid::Uuid::new_v4().simple());
    let pg = Store::open_postgres_schema(&url, &schema).await.unwrap();
    assert!(!pg.describe().contains("s3cret-pw"), "{}", pg.describe());
    assert!(pg.describe().contains(&schema), "{}", pg.describe());
    assert!(
        pg.recovery_path().is_none(),
        "no local place until the front end names one"
    );
    let pg = pg.with_recovery_dir(dir.path());
    let journal = pg.recovery_path().unwrap().to_path_buf();
    assert!(journal.starts_with(dir.path()), "{}", journal.display());
    pg.append_recovery(&[RecoveryEntry::new(PORTAL, 1, uploaded("t"))])
        .unwrap();
    assert_eq!(pg.pending_recovery().unwrap().unwrap().1.len(), 1);
}

//! The ledger suite, written once and run against SQLite (a temp file) and PostgreSQL (a random schema in
//! postgres://postgres@127.0.0.1:5432/test, dropped afterwards).
//!
//! Each part is a module of `async fn name(fx: &Fx)` bodies; `suite!` below makes `sqlite::name` and
//! `postgres::name` tests of every one:
//! - `fixture`: `Fx` (where a test's database lives) and the shared helpers;
//! - `register`: registering calls;
//! - `leases`: claims, leases and the fence;
//! - `claims`: handing out and giving back many rows at once;
//! - `settle`: outcomes reached without an upload;
//! - `coinciding_writes`: marks and outcomes written together by many workers;
//! - `reads`: counts, entries and the report's pages;
//! - `runs`: the cursor and the journal of runs;
//! - `schema`: reopening, newer and older ledgers, failed migrations;
//! - `portals`: portal leases.
//!
//! The backend-specific failures are plain tests at the end of this file.

mod claims;
mod coinciding_writes;
mod fixture;
mod leases;
mod portals;
mod reads;
mod register;
mod runs;
mod schema;
mod settle;

use std::time::{Duration, Instant};

use b24sense_store::{Error, OpenOptions, Store};

use crate::fixture::{call, Fx, LEASE, P, PG_URL};

macro_rules! suite {
    ($($module:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        mod sqlite {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$module::$name(&super::Fx::sqlite()).await;
                }
            )*)*
        }
        mod postgres {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$module::$name(&super::Fx::pg()).await;
                }
            )*)*
        }
    };
}

suite!(
    register: [
        register_is_idempotent_and_refreshes_calls,
        register_a_large_page_in_one_transaction,
        ids_beyond_63_bits_are_refused,
    ],
    leases: [
        claim_holds_until_the_lease_expires,
        fencing_stops_a_worker_whose_lease_was_taken_over,
        an_expired_upload_is_in_doubt,
        an_expired_lease_nobody_took_still_commits,
        concurrent_claims_have_one_winner,
        the_upload_mark_needs_the_fence_not_an_unexpired_lease,
    ],
    claims: [
        claim_next_hands_out_disjoint_rows,
        release_gives_the_row_back,
        claim_many_takes_what_is_free_and_release_held_gives_it_back,
    ],
    settle: [
        calls_awaiting_a_recording_wait_their_turn,
        coinciding_settlements_share_a_statement,
        settling_a_call_nobody_holds_takes_one_statement,
    ],
    coinciding_writes: [
        coinciding_writes_are_each_answered_for_their_own_claim,
    ],
    reads: [
        counts_entries_and_reset_failed,
        ledger_pages_walk_every_row_once,
    ],
    runs: [
        cursor_only_moves_forward,
        runs_are_journaled,
        web_runs_journal_progress_and_are_taken_over_once,
    ],
    schema: [
        reopening_keeps_everything_and_rows_cannot_be_deleted,
        a_ledger_from_a_newer_version_is_refused,
        a_failed_migration_leaves_the_data_as_it_was,
        a_ledger_from_an_older_version_is_upgraded_in_place,
    ],
    portals: [
        one_replica_holds_a_portal,
        a_dead_holders_portal_is_taken_over_once,
    ],
);

// Backend-specific failures.

#[tokio::test]
async fn a_file_that_is_not_a_database_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap_err();
    match &err {
        Error::Corrupt { path: p, reason } => {
            assert_eq!(p, &path);
            assert!(reason.contains("not a database"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "file bytes unchanged"
    );
}

#[tokio::test]
async fn an_unreachable_postgres_fails_fast() {
    let started = Instant::now();
    let options = OpenOptions {
        connect_timeout: Duration::from_secs(2),
        ..OpenOptions::default()
    };
    let err = Store::open_with("postgres://postgres:hunter2@127.0.0.1:1/test", options)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    assert!(err.class().is_retryable());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "password leaked: {shown}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bad_urls_and_schema_names_are_refused() {
    for url in [
        "mysql://x/y",
        "ledger.db",
        "sqlite:",
        "sqlite://a.db?mode=ro",
    ] {
        assert!(
            matches!(Store::open(url).await, Err(Error::InvalidUrl(_))),
            "{url}"
        );
    }
    assert!(matches!(
        Store::open_postgres_schema(PG_URL, "Bad; drop").await,
        Err(Error::InvalidUrl(_))
    ));
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    store.register(P, &[call(1, None)]).await.unwrap();
    assert!(store.claim(P, 1, "a", LEASE).await.unwrap().is_some());
}

#[tokio::test]
async fn schemas_isolate_stores_in_one_database() {
    let (a, b) = (Fx::pg(), Fx::pg());
    let (sa, sb) = (a.store().await, b.store().await);
    sa.register(P, &[call(1, None)]).await.unwrap();
    assert!(sb.entry(P, 1).await.unwrap().is_none());
    assert!(sa.entry(P, 1).await.unwrap().is_some());
}

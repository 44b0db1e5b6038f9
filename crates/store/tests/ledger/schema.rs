//! The schema over time: reopening, refusing a newer ledger, upgrading an older one, failed migrations.

use b24sense_core::LedgerState;
use b24sense_store::{Backend, Error};

use crate::fixture::{call, settle, uploaded, Fx, LEASE, P};

pub(crate) async fn reopening_keeps_everything_and_rows_cannot_be_deleted(fx: &Fx) {
    let store = fx.store().await;
    store
        .register(P, &[call(1, None), call(2, None)])
        .await
        .unwrap();
    settle(&store, P, 1, uploaded("t1")).await;
    store.set_cursor(P, "k", 2).await.unwrap();
    store.close().await;
    drop(store);

    let store = fx.store().await;
    let e = store.entry(P, 1).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.talk_id.as_deref()),
        (LedgerState::Uploaded, Some("t1"))
    );
    assert_eq!(store.cursor(P, "k").await.unwrap(), Some(2));
    let refused = fx.raw("DELETE FROM ledger").await;
    assert!(refused.is_err(), "the trigger refuses deletes: {refused:?}");
    assert_eq!(fx.raw_count("SELECT COUNT(*) FROM ledger").await, 2);
}

pub(crate) async fn a_ledger_from_a_newer_version_is_refused(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(1, None)]).await.unwrap();
    store.close().await;
    drop(store);
    let checksum = match fx.backend() {
        Backend::Sqlite => "X'00'",
        Backend::Postgres => "'\\x00'::bytea",
    };
    fx.raw(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, {checksum}, 0)"
    ))
    .await
    .unwrap();
    match fx.open().await {
        Err(Error::TooNew { found, known }) => {
            assert_eq!(found, 99990101000000);
            assert!(known < found);
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let err = fx.open().await.unwrap_err();
    assert!(err.to_string().contains("newer b24sense"), "{err}");
    assert_eq!(err.class(), b24sense_core::ErrorClass::Fatal);
    assert_eq!(
        fx.raw_count("SELECT COUNT(*) FROM ledger").await,
        1,
        "rows untouched"
    );
    assert_eq!(
        fx.raw_count("SELECT COUNT(*) FROM _sqlx_migrations WHERE version = 99990101000000")
            .await,
        1
    );
}

pub(crate) async fn a_failed_migration_leaves_the_data_as_it_was(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(1, None)]).await.unwrap();
    let lease = store
        .claim_portal(P, "a", None, LEASE)
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    drop(store);
    // Pretend migration 2 never ran although its table exists: re-running it must fail, atomically.
    fx.raw("DELETE FROM _sqlx_migrations WHERE version = 2")
        .await
        .unwrap();
    match fx.open().await {
        Err(Error::Migration(e)) => assert!(e.to_string().contains("portal_leases"), "{e}"),
        other => panic!("expected a migration error, got {other:?}"),
    }
    assert_eq!(fx.raw_count("SELECT COUNT(*) FROM ledger").await, 1);
    assert_eq!(
        fx.raw_count("SELECT COUNT(*) FROM portal_leases").await,
        1,
        "{lease:?} kept"
    );
    assert_eq!(
        fx.raw_count("SELECT COUNT(*) FROM _sqlx_migrations WHERE version = 2")
            .await,
        0
    );
}

pub(crate) async fn a_ledger_from_an_older_version_is_upgraded_in_place(fx: &Fx) {
    let store = fx.store().await;
    store
        .register(P, &[call(1, None), call(2, None)])
        .await
        .unwrap();
    settle(&store, P, 1, uploaded("aud-old")).await;
    store.close().await;
    drop(store);
    // Make it a ledger as the first release left it: only migration 1 applied, the later tables absent.
    fx.raw("DROP TABLE portal_settings").await.unwrap();
    fx.raw("DROP TABLE portals").await.unwrap();
    fx.raw("DROP TABLE portal_leases").await.unwrap();
    fx.raw("DROP TABLE portal_download_accounting")
        .await
        .unwrap();
    fx.raw("DROP INDEX ledger_waiting").await.unwrap();
    fx.raw("ALTER TABLE ledger DROP COLUMN retry_at")
        .await
        .unwrap();
    for column in ["progress", "updated_at"] {
        fx.raw(&format!("ALTER TABLE runs DROP COLUMN {column}"))
            .await
            .unwrap();
    }
    fx.raw("DELETE FROM _sqlx_migrations WHERE version > 1")
        .await
        .unwrap();

    let store = fx.store().await;
    let e1 = store.entry(P, 1).await.unwrap().unwrap();
    assert_eq!(
        (e1.state, e1.talk_id.as_deref()),
        (LedgerState::Uploaded, Some("aud-old"))
    );
    assert_eq!(
        store.entry(P, 2).await.unwrap().unwrap().state,
        LedgerState::Pending
    );
    assert!(
        store
            .claim_portal(P, "a", None, LEASE)
            .await
            .unwrap()
            .is_some(),
        "newer tables exist"
    );
    assert_eq!(
        fx.raw_count("SELECT COUNT(*) FROM ledger").await,
        2,
        "no row lost"
    );
}

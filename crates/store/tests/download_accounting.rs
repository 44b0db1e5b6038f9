//! Download accounting per portal round-trips on SQLite (a temp file) and PostgreSQL (a random schema in
//! postgres://postgres@127.0.0.1:5432/test, dropped afterwards), and survives reopening the ledger.

use b24sense_store::Store;
use sqlx::{Connection, Executor};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Opens the store twice over the same database: what a run learned must be there for the next one.
async fn remembers_per_portal<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Store>,
{
    let store = open().await;
    assert!(
        !store
            .portal_counts_downloads("a.bitrix24.ru")
            .await
            .unwrap(),
        "unknown: not counted"
    );
    store
        .remember_portal_counts_downloads("a.bitrix24.ru", true)
        .await
        .unwrap();
    store
        .remember_portal_counts_downloads("b.bitrix24.ru", false)
        .await
        .unwrap();
    store.close().await;

    let store = open().await;
    assert!(store
        .portal_counts_downloads("a.bitrix24.ru")
        .await
        .unwrap());
    assert!(!store
        .portal_counts_downloads("b.bitrix24.ru")
        .await
        .unwrap());
    assert!(!store
        .portal_counts_downloads("c.bitrix24.ru")
        .await
        .unwrap());
    store
        .remember_portal_counts_downloads("a.bitrix24.ru", false)
        .await
        .unwrap();
    assert!(
        !store
            .portal_counts_downloads("a.bitrix24.ru")
            .await
            .unwrap(),
        "overwritten, not added"
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_remembers_download_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    remembers_per_portal(|| {
        let url = url.clone();
        async move { Store::open(&url).await.expect("open sqlite") }
    })
    .await;
}

#[tokio::test]
async fn postgres_remembers_download_accounting() {
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    remembers_per_portal(|| {
        let schema = schema.clone();
        async move {
            Store::open_postgres_schema(PG_URL, &schema)
                .await
                .expect("open postgres")
        }
    })
    .await;
    let mut c = sqlx::PgConnection::connect(PG_URL).await.unwrap();
    c.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
        .await
        .unwrap();
}

//! Shared test helpers: ledgers on SQLite (temp file) and PostgreSQL (a schema per test).

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use b24sense_engine::{CallReport, ProgressEvent, ProgressFn, Summary};
use b24sense_store::Store;

/// A run's summary with every call's report, collected from the progress events.
#[derive(Debug)]
pub struct Ran {
    pub summary: Summary,
    pub calls: Vec<CallReport>,
}

impl Deref for Ran {
    type Target = Summary;
    fn deref(&self) -> &Summary {
        &self.summary
    }
}

/// A progress callback that keeps every call's report.
pub fn collector() -> (ProgressFn, Arc<Mutex<Vec<CallReport>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let keep = calls.clone();
    let f: ProgressFn = Arc::new(move |ev: &ProgressEvent| {
        if let ProgressEvent::Settled(r) = ev {
            keep.lock().unwrap().push(r.clone());
        }
    });
    (f, calls)
}

impl Ran {
    pub fn new(summary: Summary, calls: &Mutex<Vec<CallReport>>) -> Ran {
        Ran {
            summary,
            calls: std::mem::take(&mut *calls.lock().unwrap()),
        }
    }
}

/// A fresh ledger for one test: SQLite in a temporary directory (kept alive by the returned guard), or — with
/// `B24SENSE_TEST_LEDGER=postgres`, as CI runs the engine suite a second time — PostgreSQL in a schema of its own.
pub async fn test_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var("B24SENSE_TEST_LEDGER").is_ok_and(|v| v == "postgres") {
        return (postgres_store().await, dir);
    }
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    (Store::open(&url).await.unwrap(), dir)
}

/// PostgreSQL URL for tests (CI provides it; the default is the machine's local server).
pub fn postgres_url() -> String {
    std::env::var("B24SENSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL ledger in its own schema.
pub async fn postgres_store() -> Store {
    let schema = format!("engine_{}", uuid::Uuid::new_v4().simple());
    Store::open_postgres_schema(&postgres_url(), &schema)
        .await
        .expect("PostgreSQL at B24SENSE_TEST_POSTGRES_URL")
}

/// A fresh ledger, on the backend [`test_store`] picks, in which another process takes a call over the moment
/// `loser` claims it: a trigger hands the lease to `winner` for an hour and moves the fence on, as a replica does
/// once a paused worker's lease has run out. This times the race between a claim and its commit, which a test
/// cannot time from outside.
pub async fn store_taken_over_from(loser: &str, winner: &str) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var("B24SENSE_TEST_LEDGER").is_ok_and(|v| v == "postgres") {
        let schema = format!("engine_{}", uuid::Uuid::new_v4().simple());
        let store = Store::open_postgres_schema(&postgres_url(), &schema)
            .await
            .expect("PostgreSQL at B24SENSE_TEST_POSTGRES_URL");
        let db = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
        let trigger = format!(
            "CREATE FUNCTION {schema}.take_over() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               UPDATE {schema}.ledger SET lease_owner = '{winner}', lease_until = now() + interval '1 hour', \
               fence = fence + 1 WHERE portal = NEW.portal AND call_id = NEW.call_id; RETURN NULL; END $$; \
             CREATE TRIGGER take_over AFTER UPDATE OF lease_owner ON {schema}.ledger FOR EACH ROW \
               WHEN (NEW.lease_owner LIKE '{loser}/%') EXECUTE FUNCTION {schema}.take_over();"
        );
        sqlx::raw_sql(&trigger).execute(&db).await.unwrap();
        return (store, dir);
    }
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let store = Store::open(&url).await.unwrap();
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let trigger = format!(
        "CREATE TRIGGER take_over AFTER UPDATE OF lease_owner ON ledger WHEN NEW.lease_owner LIKE '{loser}/%' BEGIN \
           UPDATE ledger SET lease_owner = '{winner}', \
           lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 hour'), fence = fence + 1 \
           WHERE portal = NEW.portal AND call_id = NEW.call_id; END"
    );
    sqlx::raw_sql(&trigger).execute(&db).await.unwrap();
    (store, dir)
}

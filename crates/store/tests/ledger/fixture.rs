//! Where a test's database lives (`Fx`) and the helpers every part of the suite shares.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use b24sense_core::{Call, FailReason, Outcome};
use b24sense_store::{Backend, Claim, Error, Store};
use chrono::FixedOffset;
use serde_json::json;
use sqlx::{Connection, Executor};

pub(crate) const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub(crate) const LEASE: Duration = Duration::from_secs(1);
pub(crate) const P: &str = "acme.bitrix24.ru";

/// Where one test's database lives; dropping it removes the PostgreSQL schema (also when the test panics).
pub(crate) enum Fx {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Pg {
        schema: String,
    },
}

impl Fx {
    pub(crate) fn sqlite() -> Fx {
        let dir = tempfile::tempdir().expect("tempdir");
        // A nested path: open must create the parent directories.
        let path = dir.path().join("nested/dir/ledger.db");
        Fx::Sqlite { _dir: dir, path }
    }

    pub(crate) fn pg() -> Fx {
        Fx::Pg {
            schema: format!("t_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Fx::Sqlite { .. } => Backend::Sqlite,
            Fx::Pg { .. } => Backend::Postgres,
        }
    }

    pub(crate) async fn open(&self) -> Result<Store, Error> {
        match self {
            Fx::Sqlite { path, .. } => Store::open(&format!("sqlite:{}", path.display())).await,
            Fx::Pg { schema } => Store::open_postgres_schema(PG_URL, schema).await,
        }
    }

    pub(crate) async fn store(&self) -> Store {
        let store = self.open().await.expect("open store");
        assert_eq!(store.backend(), self.backend());
        store
    }

    /// Runs one statement on a separate raw connection (what an operator or another program would do).
    pub(crate) async fn raw(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Fx::Sqlite { path, .. } => {
                let mut c =
                    sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display())).await?;
                Ok(c.execute(sql).await?.rows_affected())
            }
            Fx::Pg { schema } => {
                let mut c = sqlx::PgConnection::connect(PG_URL).await?;
                c.execute(format!("SET search_path TO {schema}").as_str())
                    .await?;
                Ok(c.execute(sql).await?.rows_affected())
            }
        }
    }

    pub(crate) async fn raw_count(&self, sql: &str) -> i64 {
        match self {
            Fx::Sqlite { path, .. } => {
                let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
                    .await
                    .unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            Fx::Pg { schema } => {
                let mut c = sqlx::PgConnection::connect(PG_URL).await.unwrap();
                c.execute(format!("SET search_path TO {schema}").as_str())
                    .await
                    .unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        if let Fx::Pg { schema } = self {
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            // Drop may run inside the test's runtime: do the async cleanup on a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(mut c) = sqlx::PgConnection::connect(PG_URL).await {
                        let _ = c.execute(sql.as_str()).await;
                    }
                });
            })
            .join();
        }
    }
}

pub(crate) fn call(id: u64, record_url: Option<&str>) -> Call {
    let row = json!({
        "ID": id.to_string(), "CALL_ID": format!("call-{id}"), "CALL_DURATION": "60", "CALL_TYPE": "1",
        "CALL_START_DATE": "2026-03-10T11:19:38+03:00", "CALL_RECORD_URL": record_url.unwrap_or(""),
        "PORTAL_USER_ID": "12", "PHONE_NUMBER": "+79001234567",
    });
    Call::from_bitrix(&row, FixedOffset::east_opt(3 * 3600).unwrap()).unwrap()
}

pub(crate) fn uploaded(talk: &str) -> Outcome {
    Outcome::Uploaded {
        talk_id: talk.into(),
        mono: false,
        reuploaded_after_crash: false,
    }
}

pub(crate) fn failed(reason: FailReason) -> Outcome {
    Outcome::Failed {
        reason,
        detail: format!("detail of {reason}"),
    }
}

/// A claim that must succeed.
pub(crate) async fn claimed(store: &Store, id: u64, owner: &str, lease: Duration) -> Claim {
    store
        .claim(P, id, owner, lease)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("call {id} not claimable by {owner}"))
}

/// A claim whose upload has reached its half-close: marked `uploading` with the same lease.
pub(crate) async fn uploading(store: &Store, id: u64, owner: &str, lease: Duration) -> Claim {
    let c = claimed(store, id, owner, lease).await;
    assert!(store.mark_uploading(&c, lease).await.unwrap());
    c
}

/// Retries `claim` until the current lease has expired (bounded: 5 s).
pub(crate) async fn claim_after_expiry(store: &Store, id: u64, owner: &str) -> Claim {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(c) = store.claim(P, id, owner, LEASE).await.unwrap() {
            return c;
        }
        assert!(Instant::now() < deadline, "lease on {id} never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Claim, finish with `outcome`.
pub(crate) async fn settle(store: &Store, portal: &str, id: u64, outcome: Outcome) {
    let c = store
        .claim(portal, id, "settler", LEASE)
        .await
        .unwrap()
        .expect("claimable");
    assert!(store.finish(&c, &outcome).await.unwrap());
}

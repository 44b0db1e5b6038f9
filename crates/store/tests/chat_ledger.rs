//! The chat ledger, run against SQLite (a temp file) and PostgreSQL (a random schema in
//! postgres://postgres@127.0.0.1:5432/test, or `B24SENSE_TEST_POSTGRES_URL`; dropped afterwards).

use std::time::Duration;

use b24sense_core::{Call, LedgerState, Outcome};
use b24sense_store::{ChatClaim, ChatVerdict, ListedSession, StateCount, Store};
use chrono::FixedOffset;
use serde_json::json;
use sqlx::{Connection, Executor};

const P: &str = "acme.bitrix24.ru";
const LEASE: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(300);

fn pg_url() -> String {
    std::env::var("B24SENSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// One test's database; dropping it removes the PostgreSQL schema.
enum Fx {
    Sqlite(tempfile::TempDir),
    Pg(String),
}

impl Fx {
    async fn store(&self) -> Store {
        match self {
            Fx::Sqlite(dir) => {
                let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
                Store::open(&url).await.unwrap()
            }
            Fx::Pg(schema) => Store::open_postgres_schema(&pg_url(), schema)
                .await
                .unwrap(),
        }
    }

    /// A statement on a connection of its own (an operator's).
    async fn raw(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Fx::Sqlite(dir) => {
                let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await?;
                Ok(c.execute(sql).await?.rows_affected())
            }
            Fx::Pg(schema) => {
                let mut c = sqlx::PgConnection::connect(&pg_url()).await?;
                c.execute(format!("SET search_path TO {schema}").as_str())
                    .await?;
                Ok(c.execute(sql).await?.rows_affected())
            }
        }
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        if let Fx::Pg(schema) = self {
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&pg_url()).await {
                        let _ = c.execute(sql.as_str()).await;
                    }
                });
            })
            .join();
        }
    }
}

fn call(id: u64) -> Call {
    let row = json!({
        "ID": id.to_string(), "CALL_ID": format!("call-{id}"), "CALL_DURATION": "60", "CALL_TYPE": "1",
        "CALL_START_DATE": "2026-03-10T11:19:38+03:00", "CALL_RECORD_URL": "https://x/r.mp3",
        "PORTAL_USER_ID": "12", "PHONE_NUMBER": "+79001234567",
    });
    Call::from_bitrix(&row, FixedOffset::east_opt(3 * 3600).unwrap()).unwrap()
}

fn listed(session_id: u64, activity_id: u64) -> ListedSession {
    ListedSession {
        session_id,
        activity_id,
    }
}

async fn claim(store: &Store, id: u64, owner: &str, lease: Duration) -> ChatClaim {
    store
        .claim_chat(P, id, owner, lease)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{owner} could not claim session {id}"))
}

async fn calls_and_sessions_with_one_number_never_share_a_row(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(42)]).await.unwrap();
    let rows = store.register_chats(P, &[listed(42, 900)]).await.unwrap();
    assert_eq!(rows[0].state, LedgerState::Pending);

    // The call is uploaded; the session with the same number is untouched and still claimable.
    let c = store.claim(P, 42, "w", LEASE).await.unwrap().unwrap();
    let done = Outcome::Uploaded {
        talk_id: "call-talk".into(),
        mono: false,
        reuploaded_after_crash: false,
    };
    assert!(store.finish(&c, &done).await.unwrap());
    let s = store.chat_entry(P, 42).await.unwrap().unwrap();
    assert_eq!((s.state, s.talk_ids.len()), (LedgerState::Pending, 0));
    let sc = claim(&store, 42, "w", LEASE).await;
    assert!(store
        .record_chat_parts(&sc, &["chat-talk".into()])
        .await
        .unwrap());
    let up = ChatVerdict::Uploaded {
        reuploaded_after_crash: false,
    };
    assert!(store.finish_chat(&sc, up).await.unwrap());

    let call_row = store.entry(P, 42).await.unwrap().unwrap();
    assert_eq!(call_row.talk_id.as_deref(), Some("call-talk"));
    let chat_row = store.chat_entry(P, 42).await.unwrap().unwrap();
    assert_eq!(chat_row.talk_ids, vec!["chat-talk".to_string()]);
    assert_eq!(chat_row.activity_id, 900);
    // Counted apart.
    let one = |state| {
        vec![StateCount {
            state,
            reason: None,
            count: 1,
        }]
    };
    assert_eq!(
        store.counts(Some(P)).await.unwrap(),
        one(LedgerState::Uploaded)
    );
    assert_eq!(
        store.chat_counts(Some(P)).await.unwrap(),
        one(LedgerState::Uploaded)
    );
    // Uploaded: nobody claims it again.
    assert!(store.claim_chat(P, 42, "x", LEASE).await.unwrap().is_none());
}

async fn registering_again_keeps_the_state_and_follows_the_activity(fx: &Fx) {
    let store = fx.store().await;
    store
        .register_chats(P, &[listed(1, 10), listed(2, 20)])
        .await
        .unwrap();
    let c = claim(&store, 1, "w", LEASE).await;
    let skip = ChatVerdict::Skipped {
        reason: "no_client_message",
    };
    assert!(store.finish_chat(&c, skip).await.unwrap());
    // Listed again, in another order, one twice, session 2 under a new activity.
    let rows = store
        .register_chats(
            P,
            &[listed(2, 21), listed(1, 10), listed(3, 30), listed(2, 21)],
        )
        .await
        .unwrap();
    let seen: Vec<(u64, u64, LedgerState, Option<&str>)> = rows
        .iter()
        .map(|r| (r.session_id, r.activity_id, r.state, r.reason.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (2, 21, LedgerState::Pending, None),
            (1, 10, LedgerState::Skipped, Some("no_client_message")),
            (3, 30, LedgerState::Pending, None),
            (2, 21, LedgerState::Pending, None),
        ]
    );
    let unfinished = store
        .chat_entries(P, &[LedgerState::Pending, LedgerState::Uploading], 0, 10)
        .await
        .unwrap();
    let ids: Vec<u64> = unfinished.iter().map(|e| e.session_id).collect();
    assert_eq!(ids, vec![2, 3]);
    // Rows are never deleted.
    assert!(fx.raw("DELETE FROM chat_ledger").await.is_err());
    assert!(store.chat_entry(P, 1).await.unwrap().is_some());
}

async fn a_part_left_uploading_is_in_doubt_and_the_old_holder_is_fenced_off(fx: &Fx) {
    let store = fx.store().await;
    store.register_chats(P, &[listed(7, 70)]).await.unwrap();
    let a = claim(&store, 7, "a", SHORT).await;
    assert!(!a.in_doubt);
    // Part 1 of 2 stored and recorded: nothing in doubt.
    assert!(store.mark_chat_uploading(&a, 2, SHORT).await.unwrap());
    assert!(store.record_chat_parts(&a, &["t1".into()]).await.unwrap());
    assert_eq!(
        store.chat_entry(P, 7).await.unwrap().unwrap().state,
        LedgerState::Pending
    );
    // Part 2 marked, then the worker stalls past its lease.
    assert!(store.mark_chat_uploading(&a, 2, SHORT).await.unwrap());
    assert!(
        store.claim_chat(P, 7, "b", LEASE).await.unwrap().is_none(),
        "lease still held"
    );
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
    let b = claim(&store, 7, "b", LEASE).await;
    assert!(b.in_doubt);
    assert_eq!((b.talk_ids.clone(), b.parts), (vec!["t1".to_string()], 2));
    // The stalled worker can neither record nor commit.
    assert!(!store
        .record_chat_parts(&a, &["t1".into(), "dup".into()])
        .await
        .unwrap());
    let up = ChatVerdict::Uploaded {
        reuploaded_after_crash: false,
    };
    assert!(!store.finish_chat(&a, up).await.unwrap());
    assert!(!store.mark_chat_uploading(&a, 2, SHORT).await.unwrap());
    // The new holder waits (a verdict that keeps the doubt), releases, claims again: still in doubt.
    let wait = ChatVerdict::Waiting {
        reason: "session_open",
    };
    assert!(store.finish_chat(&b, wait).await.unwrap());
    let e = store.chat_entry(P, 7).await.unwrap().unwrap();
    assert_eq!((e.state, e.attempts), (LedgerState::Uploading, 0));
    let b2 = claim(&store, 7, "b", LEASE).await;
    assert!(b2.in_doubt);
    assert!(store
        .record_chat_parts(&b2, &["t1".into(), "t2".into()])
        .await
        .unwrap());
    let up = ChatVerdict::Uploaded {
        reuploaded_after_crash: true,
    };
    assert!(store.finish_chat(&b2, up).await.unwrap());
    let e = store.chat_entry(P, 7).await.unwrap().unwrap();
    assert_eq!(e.state, LedgerState::Uploaded);
    assert_eq!(e.talk_ids, vec!["t1".to_string(), "t2".to_string()]);
    assert!(e.reuploaded_after_crash);
    assert_eq!((e.attempts, e.reason, e.lease_owner), (1, None, None));
}

async fn a_run_gives_back_what_it_held(fx: &Fx) {
    let store = fx.store().await;
    store
        .register_chats(P, &[listed(1, 1), listed(2, 2), listed(3, 3)])
        .await
        .unwrap();
    let one = claim(&store, 1, "run", LEASE).await;
    let two = claim(&store, 2, "run", LEASE).await;
    claim(&store, 3, "other", LEASE).await;
    assert!(store.mark_chat_uploading(&two, 1, LEASE).await.unwrap());
    let failed = ChatVerdict::Failed {
        reason: "invalid_data",
        detail: "refused",
    };
    assert!(store.finish_chat(&one, failed).await.unwrap());
    // Session 1 is settled, 2 is in doubt and held, 3 is someone else's.
    assert_eq!(store.release_held_chats(P, "run").await.unwrap(), 1);
    let e2 = store.chat_entry(P, 2).await.unwrap().unwrap();
    assert_eq!((e2.state, e2.lease_owner), (LedgerState::Uploading, None));
    assert!(claim(&store, 2, "next", LEASE).await.in_doubt);
    assert!(store
        .claim_chat(P, 3, "next", LEASE)
        .await
        .unwrap()
        .is_none());
    let e1 = store.chat_entry(P, 1).await.unwrap().unwrap();
    assert_eq!(
        (e1.state, e1.reason.as_deref(), e1.detail.as_deref()),
        (LedgerState::Failed, Some("invalid_data"), Some("refused"))
    );
    // A talk ID that could not be read back is refused before it is written.
    let c1 = claim(&store, 1, "run", LEASE).await;
    assert!(store.record_chat_parts(&c1, &["a,b".into()]).await.is_err());
}

/// Each claim has an owner of its own (`<run>/<n>`): a claim whose answer was lost is taken back by its retry under
/// the same owner, never by another; the end of the run gives back every claim of the run (by prefix), none of a
/// run whose ID merely starts alike. A dry run reads rows without registering them.
async fn a_claim_is_taken_back_by_its_owner_and_a_run_gives_back_its_claims(fx: &Fx) {
    let store = fx.store().await;
    store
        .register_chats(P, &[listed(1, 1), listed(2, 2), listed(3, 3)])
        .await
        .unwrap();
    let first = claim(&store, 1, "run/0", LEASE).await;
    let again = claim(&store, 1, "run/0", LEASE).await;
    assert_eq!(again.fence, first.fence + 1, "the retry takes it back");
    assert!(store
        .claim_chat(P, 1, "run/1", LEASE)
        .await
        .unwrap()
        .is_none());
    let two = claim(&store, 2, "run/1", LEASE).await;
    assert!(store.mark_chat_uploading(&two, 1, LEASE).await.unwrap());
    claim(&store, 3, "runner/0", LEASE).await;
    assert_eq!(store.release_held_chats(P, "run").await.unwrap(), 2);
    let rows = store.chat_entries_of(P, &[2, 9, 1, 3]).await.unwrap();
    let seen: Vec<Option<(u64, LedgerState, Option<String>)>> = rows
        .into_iter()
        .map(|e| e.map(|e| (e.session_id, e.state, e.lease_owner)))
        .collect();
    assert_eq!(
        seen,
        vec![
            Some((2, LedgerState::Uploading, None)),
            None,
            Some((1, LedgerState::Pending, None)),
            Some((3, LedgerState::Pending, Some("runner/0".into()))),
        ]
    );
    assert!(
        store.chat_entry(P, 9).await.unwrap().is_none(),
        "nothing registered"
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Fx::Sqlite(tempfile::tempdir().unwrap())).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let schema = format!("chat_{}", uuid::Uuid::new_v4().simple());
                    super::$name(&super::Fx::Pg(schema)).await;
                }
            )*
        }
    };
}

suite!(
    calls_and_sessions_with_one_number_never_share_a_row,
    registering_again_keeps_the_state_and_follows_the_activity,
    a_part_left_uploading_is_in_doubt_and_the_old_holder_is_fenced_off,
    a_run_gives_back_what_it_held,
    a_claim_is_taken_back_by_its_owner_and_a_run_gives_back_its_claims,
);

//! The ledger suite, written once and run against SQLite (a temp file) and PostgreSQL (a random schema in
//! postgres://postgres@127.0.0.1:5432/test, dropped afterwards).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24sense_core::{Call, FailReason, LedgerState, Outcome, SkipReason};
use b24sense_store::{Backend, Claim, Error, OpenOptions, StateCount, Store};
use chrono::FixedOffset;
use serde_json::json;
use sqlx::{Connection, Executor};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const LEASE: Duration = Duration::from_secs(1);
const P: &str = "acme.bitrix24.ru";

/// Where one test's database lives; dropping it removes the PostgreSQL schema (also when the test panics).
enum Fx {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Pg {
        schema: String,
    },
}

impl Fx {
    fn sqlite() -> Fx {
        let dir = tempfile::tempdir().expect("tempdir");
        // A nested path: open must create the parent directories.
        let path = dir.path().join("nested/dir/ledger.db");
        Fx::Sqlite { _dir: dir, path }
    }

    fn pg() -> Fx {
        Fx::Pg {
            schema: format!("t_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn backend(&self) -> Backend {
        match self {
            Fx::Sqlite { .. } => Backend::Sqlite,
            Fx::Pg { .. } => Backend::Postgres,
        }
    }

    async fn open(&self) -> Result<Store, Error> {
        match self {
            Fx::Sqlite { path, .. } => Store::open(&format!("sqlite:{}", path.display())).await,
            Fx::Pg { schema } => Store::open_postgres_schema(PG_URL, schema).await,
        }
    }

    async fn store(&self) -> Store {
        let store = self.open().await.expect("open store");
        assert_eq!(store.backend(), self.backend());
        store
    }

    /// Runs one statement on a separate raw connection (what an operator or another program would do).
    async fn raw(&self, sql: &str) -> Result<u64, sqlx::Error> {
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

    async fn raw_count(&self, sql: &str) -> i64 {
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

fn call(id: u64, record_url: Option<&str>) -> Call {
    let row = json!({
        "ID": id.to_string(), "CALL_ID": format!("call-{id}"), "CALL_DURATION": "60", "CALL_TYPE": "1",
        "CALL_START_DATE": "2026-03-10T11:19:38+03:00", "CALL_RECORD_URL": record_url.unwrap_or(""),
        "PORTAL_USER_ID": "12", "PHONE_NUMBER": "+79001234567",
    });
    Call::from_bitrix(&row, FixedOffset::east_opt(3 * 3600).unwrap()).unwrap()
}

fn uploaded(talk: &str) -> Outcome {
    Outcome::Uploaded {
        talk_id: talk.into(),
        mono: false,
        reuploaded_after_crash: false,
    }
}

fn failed(reason: FailReason) -> Outcome {
    Outcome::Failed {
        reason,
        detail: format!("detail of {reason}"),
    }
}

/// A claim that must succeed.
async fn claimed(store: &Store, id: u64, owner: &str, lease: Duration) -> Claim {
    store
        .claim(P, id, owner, lease)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("call {id} not claimable by {owner}"))
}

/// A claim whose upload has reached its half-close: marked `uploading` with the same lease.
async fn uploading(store: &Store, id: u64, owner: &str, lease: Duration) -> Claim {
    let c = claimed(store, id, owner, lease).await;
    assert!(store.mark_uploading(&c, lease).await.unwrap());
    c
}

/// Retries `claim` until the current lease has expired (bounded: 5 s).
async fn claim_after_expiry(store: &Store, id: u64, owner: &str) -> Claim {
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
async fn settle(store: &Store, portal: &str, id: u64, outcome: Outcome) {
    let c = store
        .claim(portal, id, "settler", LEASE)
        .await
        .unwrap()
        .expect("claimable");
    assert!(store.finish(&c, &outcome).await.unwrap());
}

async fn register_is_idempotent_and_refreshes_calls(fx: &Fx) {
    let store = fx.store().await;
    let first = store
        .register(P, &[call(3, None), call(1, None), call(2, None)])
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|e| e.call_id).collect::<Vec<_>>(),
        [3, 1, 2],
        "input order"
    );
    for e in &first {
        assert_eq!(
            (e.state, e.attempts, e.portal.as_str()),
            (LedgerState::Pending, 0, P)
        );
        assert_eq!(e.call.as_ref().unwrap(), &call(e.call_id, None));
        assert!(e.lease_owner.is_none() && e.lease_until.is_none() && e.talk_id.is_none());
    }
    settle(&store, P, 1, uploaded("talk-1")).await;
    settle(
        &store,
        P,
        3,
        Outcome::Skipped {
            reason: SkipReason::NoRecording,
        },
    )
    .await;

    // Again, with recordings that appeared meanwhile, a duplicate ID and a new call.
    let rec = Some("https://acme.bitrix24.ru/rec.mp3");
    let again = store
        .register(
            P,
            &[
                call(1, rec),
                call(2, rec),
                call(3, rec),
                call(4, None),
                call(2, rec),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|e| e.call_id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 2]
    );
    assert_eq!(again[0].state, LedgerState::Uploaded);
    assert_eq!(again[0].talk_id.as_deref(), Some("talk-1"));
    assert_eq!(
        again[0].call.as_ref().unwrap(),
        &call(1, None),
        "uploaded rows keep their call"
    );
    assert_eq!(
        again[1].call.as_ref().unwrap(),
        &call(2, rec),
        "pending rows are refreshed"
    );
    assert_eq!(
        again[2].state,
        LedgerState::Skipped,
        "register never changes a state"
    );
    assert_eq!(again[2].reason.as_deref(), Some("no_recording"));
    assert_eq!(
        again[2].call.as_ref().unwrap(),
        &call(3, rec),
        "skipped rows are refreshed"
    );
    assert_eq!(again[3].state, LedgerState::Pending);
    assert_eq!(again[4], again[1]);

    // Same input once more: nothing changes, not even updated_at.
    let same = store.register(P, &[call(2, rec)]).await.unwrap();
    assert_eq!(same[0], again[1]);
    // Another portal's call 1 is another row.
    let other = store
        .register("other.bitrix24.ru", &[call(1, None)])
        .await
        .unwrap();
    assert_eq!(other[0].state, LedgerState::Pending);
    assert!(store.register(P, &[]).await.unwrap().is_empty());
    assert!(store.entry(P, 99).await.unwrap().is_none());
}

async fn register_a_large_page_in_one_transaction(fx: &Fx) {
    let store = fx.store().await;
    let calls: Vec<Call> = (1..=2500).map(|i| call(i, None)).collect();
    let started = Instant::now();
    let entries = store.register(P, &calls).await.unwrap();
    eprintln!(
        "{:?}: register 2500 new calls took {:?}",
        fx.backend(),
        started.elapsed()
    );
    assert_eq!(entries.len(), 2500);
    assert!(entries
        .iter()
        .zip(1..)
        .all(|(e, id)| e.call_id == id && e.state == LedgerState::Pending));
    let started = Instant::now();
    store.register(P, &calls).await.unwrap();
    eprintln!(
        "{:?}: register 2500 known calls took {:?}",
        fx.backend(),
        started.elapsed()
    );
    let counts = store.counts(Some(P)).await.unwrap();
    assert_eq!(
        counts,
        [StateCount {
            state: LedgerState::Pending,
            reason: None,
            count: 2500
        }]
    );
}

async fn ids_beyond_63_bits_are_refused(fx: &Fx) {
    let store = fx.store().await;
    let mut c = call(1, None);
    c.id = u64::MAX;
    assert!(matches!(store.register(P, &[c]).await, Err(Error::Data(_))));
    assert!(matches!(
        store.claim(P, u64::MAX, "a", LEASE).await,
        Err(Error::Data(_))
    ));
}

async fn claim_holds_until_the_lease_expires(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(7, None)]).await.unwrap();
    assert!(
        store.claim(P, 8, "a", LEASE).await.unwrap().is_none(),
        "unknown call"
    );

    let a = store
        .claim(P, 7, "a", LEASE)
        .await
        .unwrap()
        .expect("free row");
    assert_eq!((a.call_id, a.owner.as_str(), a.fence), (7, "a", 1));
    assert_eq!(
        (a.in_doubt, a.attempts, a.previous),
        (false, 0, LedgerState::Pending)
    );
    let e = store.entry(P, 7).await.unwrap().unwrap();
    assert_eq!(e.lease_owner.as_deref(), Some("a"));
    let until = e.lease_until.expect("lease time");
    let ahead = until - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::zero() && ahead <= chrono::Duration::seconds(2),
        "{ahead}"
    );

    assert!(
        store.claim(P, 7, "b", LEASE).await.unwrap().is_none(),
        "held by a"
    );
    // An owner names one claim: its retry (the first answer lost on the way) takes the row back, with a new
    // fence that leaves the first answer's claim stale.
    let again = store
        .claim(P, 7, "a", LEASE)
        .await
        .unwrap()
        .expect("the claim's retry");
    assert_eq!(again.fence, 2);
    assert!(!store.renew(&a, LEASE).await.unwrap(), "fenced out");
    assert!(store.renew(&again, LEASE).await.unwrap());

    let b = claim_after_expiry(&store, 7, "b").await;
    assert_eq!(
        (b.fence, b.previous, b.in_doubt),
        (3, LedgerState::Pending, false)
    );

    // Renewing keeps b's lease alive past the original expiry.
    assert!(store.renew(&b, Duration::from_secs(30)).await.unwrap());
    tokio::time::sleep(LEASE + Duration::from_millis(200)).await;
    assert!(
        store.claim(P, 7, "c", LEASE).await.unwrap().is_none(),
        "renewed lease still held"
    );
}

async fn fencing_stops_a_worker_whose_lease_was_taken_over(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(5, None)]).await.unwrap();
    let a = claimed(&store, 5, "worker-a", LEASE).await;
    let b = claim_after_expiry(&store, 5, "worker-b").await;
    assert!(b.fence > a.fence);
    let before = store.entry(P, 5).await.unwrap().unwrap();

    assert!(!store.finish(&a, &uploaded("talk-from-a")).await.unwrap());
    assert!(!store.mark_uploading(&a, LEASE).await.unwrap());
    assert!(!store.renew(&a, LEASE).await.unwrap());
    assert!(!store.release(&a).await.unwrap());
    assert_eq!(
        store.entry(P, 5).await.unwrap().unwrap(),
        before,
        "a's calls changed nothing"
    );

    assert!(store.mark_uploading(&b, LEASE).await.unwrap());
    let done = Outcome::Uploaded {
        talk_id: "talk-from-b".into(),
        mono: true,
        reuploaded_after_crash: false,
    };
    assert!(store.finish(&b, &done).await.unwrap());
    let e = store.entry(P, 5).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.talk_id.as_deref(), e.attempts, e.mono),
        (LedgerState::Uploaded, Some("talk-from-b"), 1, true)
    );
    assert!(e.lease_owner.is_none() && e.lease_until.is_none());
    assert!(
        !store.finish(&b, &uploaded("again")).await.unwrap(),
        "a finished claim is spent"
    );
    assert!(
        store.claim(P, 5, "c", LEASE).await.unwrap().is_none(),
        "uploaded calls are never claimed"
    );
}

async fn an_expired_upload_is_in_doubt(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(9, None)]).await.unwrap();
    uploading(&store, 9, "a", LEASE).await;
    assert_eq!(
        store.entry(P, 9).await.unwrap().unwrap().state,
        LedgerState::Uploading
    );
    // a "crashes"; b finds the upload in doubt.
    let b = claim_after_expiry(&store, 9, "b").await;
    assert!(b.in_doubt);
    assert_eq!(b.previous, LedgerState::Uploading);
    let done = Outcome::Uploaded {
        talk_id: "t9".into(),
        mono: false,
        reuploaded_after_crash: true,
    };
    assert!(store.finish(&b, &done).await.unwrap());
    let e = store.entry(P, 9).await.unwrap().unwrap();
    assert!(e.reuploaded_after_crash && !e.mono);
    assert_eq!((e.state, e.attempts), (LedgerState::Uploaded, 1));
}

async fn an_expired_lease_nobody_took_still_commits(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(11, None)]).await.unwrap();
    let a = uploading(&store, 11, "a", Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The fence has not moved: the finished upload must be recorded, not lost.
    assert!(store.finish(&a, &uploaded("t11")).await.unwrap());
    assert_eq!(
        store.entry(P, 11).await.unwrap().unwrap().state,
        LedgerState::Uploaded
    );
}

async fn concurrent_claims_have_one_winner(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(42, None)]).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .claim(P, 42, &format!("w{i}"), Duration::from_secs(30))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(c) = t.await.unwrap() {
            winners.push(c);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let e = store.entry(P, 42).await.unwrap().unwrap();
    assert_eq!(e.lease_owner.as_deref(), Some(winners[0].owner.as_str()));
}

async fn claim_next_hands_out_disjoint_rows(fx: &Fx) {
    let store = fx.store().await;
    let calls: Vec<Call> = (1..=20).map(|i| call(i, None)).collect();
    store.register(P, &calls).await.unwrap();
    settle(&store, P, 1, uploaded("t1")).await;
    settle(&store, P, 2, failed(FailReason::DownloadFailed)).await;

    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_next(
                        P,
                        &[LedgerState::Pending],
                        &format!("w{i}"),
                        Duration::from_secs(30),
                        5,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        let claims = t.await.unwrap();
        assert!(
            claims.windows(2).all(|w| w[0].call_id < w[1].call_id),
            "ascending"
        );
        for c in claims {
            assert!(
                seen.insert(c.call_id),
                "call {} handed out twice",
                c.call_id
            );
            assert_eq!((c.fence, c.previous), (1, LedgerState::Pending));
        }
    }
    let rest = store
        .claim_next(P, &[LedgerState::Pending], "late", LEASE, 100)
        .await
        .unwrap();
    seen.extend(rest.iter().map(|c| c.call_id));
    assert_eq!(
        seen,
        (3..=20).collect::<HashSet<u64>>(),
        "every pending row exactly once, none uploaded/failed"
    );
    // Failed rows are picked only when asked for; uploaded never.
    let retry = store
        .claim_next(
            P,
            &[LedgerState::Failed, LedgerState::Uploaded],
            "r",
            LEASE,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        retry
            .iter()
            .map(|c| (c.call_id, c.previous))
            .collect::<Vec<_>>(),
        [(2, LedgerState::Failed)]
    );
    assert!(store
        .claim_next(P, &[LedgerState::Uploaded], "r", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn release_gives_the_row_back(fx: &Fx) {
    let store = fx.store().await;
    store
        .register(P, &[call(1, None), call(2, None), call(3, None)])
        .await
        .unwrap();

    // Released before the upload began: pending again, immediately claimable.
    let a = claimed(&store, 1, "a", Duration::from_secs(30)).await;
    assert!(store.release(&a).await.unwrap());
    let e = store.entry(P, 1).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.lease_owner, e.lease_until, e.attempts),
        (LedgerState::Pending, None, None, 0)
    );
    assert!(!store.release(&a).await.unwrap(), "released twice");
    assert!(
        !store.finish(&a, &uploaded("late")).await.unwrap(),
        "a released claim cannot commit"
    );
    assert!(store.claim(P, 1, "b", LEASE).await.unwrap().is_some());

    // Released after the upload began: stays uploading (in doubt).
    let a = claimed(&store, 2, "a", Duration::from_secs(30)).await;
    assert!(store.mark_uploading(&a, LEASE).await.unwrap());
    assert!(store.release(&a).await.unwrap());
    let e = store.entry(P, 2).await.unwrap().unwrap();
    assert_eq!((e.state, e.lease_owner), (LedgerState::Uploading, None));
    let b = claimed(&store, 2, "b", LEASE).await;
    assert!(b.in_doubt);

    // A failed row claimed for a retry and released: pending, without the old reason.
    settle(&store, P, 3, failed(FailReason::PortalError)).await;
    let c = claimed(&store, 3, "c", LEASE).await;
    assert_eq!((c.previous, c.attempts), (LedgerState::Failed, 1));
    assert!(store.release(&c).await.unwrap());
    let e = store.entry(P, 3).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.reason, e.attempts),
        (LedgerState::Pending, None, 1)
    );
}

async fn e_owner(store: &Store, id: u64) -> Option<String> {
    store.entry(P, id).await.unwrap().unwrap().lease_owner
}

async fn claim_many_takes_what_is_free_and_release_held_gives_it_back(fx: &Fx) {
    let store = fx.store().await;
    let calls: Vec<Call> = (1..=6).map(|id| call(id, None)).collect();
    store.register(P, &calls).await.unwrap();
    settle(&store, P, 2, uploaded("t2")).await;
    let other = claimed(&store, 3, "other", Duration::from_secs(30)).await;
    // 4 was left in doubt by a crashed worker whose lease ran out.
    let crashed = uploading(&store, 4, "crashed", Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Unknown (99), uploaded (2) and held (3) calls are left out; duplicates count once; ascending order.
    let claims = store
        .claim_many(P, &[5, 4, 99, 3, 2, 1, 5], "w", LEASE)
        .await
        .unwrap();
    let ids: Vec<u64> = claims.iter().map(|c| c.call_id).collect();
    assert_eq!(ids, vec![1, 4, 5]);
    let four = &claims[1];
    assert!(four.in_doubt && four.previous == LedgerState::Uploading);
    assert!(four.fence > crashed.fence);
    assert!(!claims[0].in_doubt && claims[0].previous == LedgerState::Pending);
    assert!(
        store.claim(P, 1, "x", LEASE).await.unwrap().is_none(),
        "a claim taken in a batch holds like one taken alone"
    );
    let retried = store
        .claim_many(P, &[5, 4, 99, 3, 2, 1, 5], "w", LEASE)
        .await
        .unwrap();
    assert_eq!(
        retried
            .iter()
            .map(|c| (c.call_id, c.fence))
            .collect::<Vec<_>>(),
        claims
            .iter()
            .map(|c| (c.call_id, c.fence + 1))
            .collect::<Vec<_>>(),
        "the batch's retry (its answer lost) takes its own rows back, and only those"
    );
    let claims = retried;
    assert!(store
        .claim_many(P, &[1, 4, 5], "x", LEASE)
        .await
        .unwrap()
        .is_empty());
    assert!(
        !store.finish(&crashed, &uploaded("stale")).await.unwrap(),
        "the batch claim fenced out the crashed worker"
    );
    // Each batch claim works as a claim: 5 is finished, the rest stays held by w.
    assert!(store.finish(&claims[2], &uploaded("t5")).await.unwrap());

    // Claims of the run `w` made as `w/N` (one owner per claim), and of a run whose name only starts with `w`.
    store
        .register(P, &[call(7, None), call(8, None)])
        .await
        .unwrap();
    claimed(&store, 7, &b24sense_store::claim_owner("w", 7), LEASE).await;
    claimed(&store, 8, "w2/1", Duration::from_secs(30)).await;

    // The run ends: what w still holds, under any of its claims, is given back (an in-doubt row stays in doubt);
    // others' leases stay.
    assert_eq!(store.release_held(P, "w").await.unwrap(), 3);
    assert_eq!(e_owner(&store, 7).await, None);
    assert_eq!(e_owner(&store, 8).await.as_deref(), Some("w2/1"));
    let e = |id| {
        let store = store.clone();
        async move {
            let e = store.entry(P, id).await.unwrap().unwrap();
            (e.state, e.lease_owner)
        }
    };
    assert_eq!(e(1).await, (LedgerState::Pending, None));
    assert_eq!(e(4).await, (LedgerState::Uploading, None));
    assert_eq!(e(5).await.0, LedgerState::Uploaded);
    assert_eq!(e(3).await.1.as_deref(), Some("other"));
    assert_eq!(store.release_held(P, "w").await.unwrap(), 0);
    assert!(store
        .claim(P, 1, "next-run", LEASE)
        .await
        .unwrap()
        .is_some());
    assert!(store.release(&other).await.unwrap());

    // A batch larger than one statement's chunk.
    let many: Vec<Call> = (1_000..2_200).map(|id| call(id, None)).collect();
    store.register(P, &many).await.unwrap();
    let ids: Vec<u64> = many.iter().map(|c| c.id).collect();
    assert_eq!(
        store.claim_many(P, &ids, "big", LEASE).await.unwrap().len(),
        1_200
    );
}

async fn the_upload_mark_needs_the_fence_not_an_unexpired_lease(fx: &Fx) {
    let store = fx.store().await;
    store.register(P, &[call(8, None)]).await.unwrap();
    let a = claimed(&store, 8, "a", Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Expired, but nobody took it over: the mark (at the half-close) succeeds and renews the lease.
    assert!(store
        .mark_uploading(&a, Duration::from_secs(30))
        .await
        .unwrap());
    let e = store.entry(P, 8).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.lease_owner.as_deref()),
        (LedgerState::Uploading, Some("a"))
    );
    assert!(
        store.claim(P, 8, "b", LEASE).await.unwrap().is_none(),
        "renewed by the mark"
    );
}

async fn counts_entries_and_reset_failed(fx: &Fx) {
    let store = fx.store().await;
    let q = "other.bitrix24.ru";
    store
        .register(P, &(1..=7).map(|i| call(i, None)).collect::<Vec<_>>())
        .await
        .unwrap();
    store.register(q, &[call(1, None)]).await.unwrap();
    settle(&store, P, 1, uploaded("t1")).await;
    settle(
        &store,
        P,
        2,
        Outcome::Skipped {
            reason: SkipReason::NoRecording,
        },
    )
    .await;
    settle(&store, P, 3, failed(FailReason::DownloadFailed)).await;
    settle(&store, P, 4, failed(FailReason::DownloadFailed)).await;
    settle(&store, P, 5, failed(FailReason::InvalidData)).await;
    settle(
        &store,
        P,
        6,
        Outcome::Skipped {
            reason: SkipReason::AlreadyUploaded,
        },
    )
    .await;
    settle(&store, q, 1, failed(FailReason::DownloadFailed)).await;

    let sc = |state, reason: Option<&str>, count| StateCount {
        state,
        reason: reason.map(Into::into),
        count,
    };
    assert_eq!(
        store.counts(Some(P)).await.unwrap(),
        [
            sc(LedgerState::Failed, Some("download_failed"), 2),
            sc(LedgerState::Failed, Some("invalid_data"), 1),
            sc(LedgerState::Pending, None, 1),
            sc(LedgerState::Skipped, Some("no_recording"), 1),
            sc(LedgerState::Uploaded, None, 1),
            sc(LedgerState::Uploaded, Some("already_uploaded"), 1),
        ]
    );
    let all = store.counts(None).await.unwrap();
    assert_eq!(all[0], sc(LedgerState::Failed, Some("download_failed"), 3));

    let failed_rows = store.entries(P, &[LedgerState::Failed], 10).await.unwrap();
    assert_eq!(
        failed_rows.iter().map(|e| e.call_id).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(
        failed_rows[0].detail.as_deref(),
        Some("detail of download_failed")
    );
    assert_eq!(failed_rows[0].call.as_ref().unwrap(), &call(3, None));
    let two = store
        .entries(P, &[LedgerState::Pending, LedgerState::Skipped], 2)
        .await
        .unwrap();
    assert_eq!(two.iter().map(|e| e.call_id).collect::<Vec<_>>(), [2, 7]);
    assert!(store.entries(P, &[], 10).await.unwrap().is_empty());

    assert_eq!(
        store
            .reset_failed(Some(P), Some("download_failed"))
            .await
            .unwrap(),
        2
    );
    let e = store.entry(P, 3).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.reason, e.detail, e.attempts),
        (LedgerState::Pending, None, None, 1)
    );
    assert_eq!(
        store.entry(q, 1).await.unwrap().unwrap().state,
        LedgerState::Failed,
        "other portal untouched"
    );
    assert_eq!(
        store.entry(P, 5).await.unwrap().unwrap().state,
        LedgerState::Failed,
        "other reason untouched"
    );
    assert_eq!(store.reset_failed(None, None).await.unwrap(), 2);
    assert_eq!(store.reset_failed(None, None).await.unwrap(), 0);
    assert_eq!(
        store.counts(Some(q)).await.unwrap(),
        [sc(LedgerState::Pending, None, 1)]
    );
}

async fn cursor_only_moves_forward(fx: &Fx) {
    let store = fx.store().await;
    assert_eq!(store.cursor(P, "f1").await.unwrap(), None);
    store.set_cursor(P, "f1", 10).await.unwrap();
    assert_eq!(store.cursor(P, "f1").await.unwrap(), Some(10));
    store.set_cursor(P, "f1", 5).await.unwrap();
    assert_eq!(store.cursor(P, "f1").await.unwrap(), Some(10));
    store.set_cursor(P, "f1", 25).await.unwrap();
    assert_eq!(store.cursor(P, "f1").await.unwrap(), Some(25));
    store.set_cursor(P, "f2", 3).await.unwrap();
    store.set_cursor("other", "f1", 1).await.unwrap();
    assert_eq!(store.cursor(P, "f2").await.unwrap(), Some(3));
    assert_eq!(store.cursor("other", "f1").await.unwrap(), Some(1));
    assert_eq!(store.cursor(P, "f1").await.unwrap(), Some(25));
}

async fn runs_are_journaled(fx: &Fx) {
    let store = fx.store().await;
    assert!(store.last_run(None).await.unwrap().is_none());
    let params = json!({"from": "2026-03-01", "filter": {"min_duration": 10}});
    let r1 = store.start_run(P, &params).await.unwrap();
    let run = store.last_run(Some(P)).await.unwrap().unwrap();
    assert_eq!((run.id, run.portal.as_str(), &run.params), (r1, P, &params));
    assert!(run.finished_at.is_none() && run.status.is_none() && run.summary.is_none());
    let summary = json!({"uploaded": 3, "failed": {"download_failed": 1}});
    store.finish_run(r1, "completed", &summary).await.unwrap();
    let run = store.last_run(None).await.unwrap().unwrap();
    assert_eq!(
        (run.status.as_deref(), run.summary.as_ref()),
        (Some("completed"), Some(&summary))
    );
    assert!(run.finished_at.unwrap() >= run.started_at);

    let r2 = store.start_run("other", &json!({})).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(store.last_run(None).await.unwrap().unwrap().id, r2);
    assert_eq!(store.last_run(Some(P)).await.unwrap().unwrap().id, r1);
    assert!(store.last_run(Some("nobody")).await.unwrap().is_none());
    assert!(matches!(
        store.finish_run(r2 + 100, "x", &json!(null)).await,
        Err(Error::Data(_))
    ));
}

/// The application server's journal: progress with a heartbeat, which runs need resuming, and one winner
/// when replicas take an interrupted run over.
async fn web_runs_journal_progress_and_are_taken_over_once(fx: &Fx) {
    let store = fx.store().await;
    let stale = Duration::from_secs(3600);
    assert!(store.last_run_progress(P, stale).await.unwrap().is_none());
    // A CLI run (no progress) is not the application's.
    store.start_run(P, &json!({})).await.unwrap();
    assert!(store.last_run_progress(P, stale).await.unwrap().is_none());

    let first = json!({"running": true, "settled": 0});
    let r1 = store
        .start_web_run(P, &json!({"trigger": "page"}), &first)
        .await
        .unwrap();
    let run = store.last_run_progress(P, stale).await.unwrap().unwrap();
    assert_eq!(
        (run.id, run.status.as_deref(), &run.progress, run.stale),
        (r1, None, &first, false)
    );
    let beat = run.updated_at;
    let later = json!({"running": true, "settled": 7});
    assert!(store.set_run_progress(r1, &later).await.unwrap());
    let run = store.last_run_progress(P, stale).await.unwrap().unwrap();
    assert_eq!(run.progress, later);
    assert!(run.updated_at >= beat);
    // A live heartbeat: nothing to resume, and no one can take it over.
    assert!(store.runs_to_resume(stale).await.unwrap().is_empty());
    assert!(!store.take_over_run(r1, stale, &json!({})).await.unwrap());

    // The heartbeat stops (a crash): stale after the limit, resumable, taken over exactly once.
    fx.raw(&format!(
        "UPDATE runs SET updated_at = '2000-01-01T00:00:00Z' WHERE id = {r1}"
    ))
    .await
    .unwrap();
    let run = store.last_run_progress(P, stale).await.unwrap().unwrap();
    assert!(run.stale);
    let due = store.runs_to_resume(stale).await.unwrap();
    assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r1]);
    let marked = json!({"interrupted": true});
    let takers: Vec<_> = (0..4)
        .map(|_| {
            let (store, marked) = (store.clone(), marked.clone());
            tokio::spawn(async move { store.take_over_run(r1, stale, &marked).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in takers {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    let run = store.last_run_progress(P, stale).await.unwrap().unwrap();
    assert_eq!(
        (run.status.as_deref(), &run.progress, run.stale),
        (Some("interrupted"), &marked, false)
    );
    assert!(
        !store.set_run_progress(r1, &later).await.unwrap(),
        "taken over: no more writes"
    );
    assert!(store.runs_to_resume(stale).await.unwrap().is_empty());

    // A run stopped by a shutdown is resumable at once; only the portal's latest run counts.
    let r2 = store.start_web_run(P, &json!({}), &first).await.unwrap();
    store
        .finish_web_run(
            r2,
            "shutdown",
            &json!({"uploaded": 1}),
            &json!({"interrupted": true}),
        )
        .await
        .unwrap();
    let r3 = store
        .start_web_run("other", &json!({}), &first)
        .await
        .unwrap();
    store
        .finish_web_run(r3, "finished", &json!({}), &json!({"finished": true}))
        .await
        .unwrap();
    let due = store.runs_to_resume(stale).await.unwrap();
    assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r2]);
    assert!(store.take_over_run(r2, stale, &marked).await.unwrap());
    assert!(store.runs_to_resume(stale).await.unwrap().is_empty());
    let r4 = store.start_web_run(P, &json!({}), &first).await.unwrap();
    store
        .finish_web_run(r4, "shutdown", &json!({}), &first)
        .await
        .unwrap();
    let r5 = store.start_web_run(P, &json!({}), &first).await.unwrap();
    store
        .finish_web_run(r5, "finished", &json!({}), &first)
        .await
        .unwrap();
    assert!(
        store.runs_to_resume(stale).await.unwrap().is_empty(),
        "an older shutdown run is history"
    );
    assert!(matches!(
        store
            .finish_web_run(r5 + 100, "finished", &json!({}), &first)
            .await,
        Err(Error::Data(_))
    ));
}

/// The report's pages: keyset by call ID, every row once, the stored call not read.
async fn ledger_pages_walk_every_row_once(fx: &Fx) {
    let store = fx.store().await;
    let calls: Vec<Call> = (1..=25).map(|i| call(i * 3, None)).collect();
    store.register(P, &calls).await.unwrap();
    store.register("other", &[call(4, None)]).await.unwrap();
    settle(&store, P, 6, failed(FailReason::DownloadFailed)).await;
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = store.ledger_page(P, after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        assert!(page.iter().all(|e| e.portal == P && e.call.is_none()));
        after = page.last().map(|e| e.call_id);
        seen.extend(page);
    }
    assert_eq!(
        seen.iter().map(|e| e.call_id).collect::<Vec<_>>(),
        (1..=25).map(|i| i * 3).collect::<Vec<_>>()
    );
    let six = seen.iter().find(|e| e.call_id == 6).unwrap();
    assert_eq!(
        (six.state, six.reason.as_deref(), six.attempts),
        (LedgerState::Failed, Some("download_failed"), 1)
    );
    assert_eq!(six.detail.as_deref(), Some("detail of download_failed"));
}

async fn reopening_keeps_everything_and_rows_cannot_be_deleted(fx: &Fx) {
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

async fn a_ledger_from_a_newer_version_is_refused(fx: &Fx) {
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

async fn a_failed_migration_leaves_the_data_as_it_was(fx: &Fx) {
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

async fn a_ledger_from_an_older_version_is_upgraded_in_place(fx: &Fx) {
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

async fn one_replica_holds_a_portal(fx: &Fx) {
    let store = fx.store().await;
    let a = store
        .claim_portal(P, "replica-a", None, LEASE)
        .await
        .unwrap()
        .expect("free portal");
    assert_eq!(
        (a.portal.as_str(), a.owner.as_str(), a.fence),
        (P, "replica-a", 1)
    );
    assert!(
        store
            .claim_portal(P, "replica-b", None, LEASE)
            .await
            .unwrap()
            .is_none(),
        "held by a"
    );
    assert!(
        store
            .claim_portal("other", "replica-b", None, LEASE)
            .await
            .unwrap()
            .is_some(),
        "portals are independent"
    );
    let a = store
        .claim_portal(P, "replica-a", None, LEASE)
        .await
        .unwrap()
        .expect("a may re-take its own lease");
    assert_eq!(a.fence, 2);
    assert!(store.renew_portal(&a, LEASE).await.unwrap());
    assert!(store.release_portal(&a).await.unwrap());
    let b = store
        .claim_portal(P, "replica-b", None, LEASE)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(b.fence, 3);
    assert!(
        !store.renew_portal(&a, LEASE).await.unwrap(),
        "a was taken over"
    );
    assert!(!store.release_portal(&a).await.unwrap());

    // b stops renewing: after expiry a takes over and b's renewals fail.
    let deadline = Instant::now() + Duration::from_secs(5);
    let a = loop {
        if let Some(l) = store
            .claim_portal(P, "replica-a", None, LEASE)
            .await
            .unwrap()
        {
            break l;
        }
        assert!(Instant::now() < deadline, "portal lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a.fence, 4);
    assert!(!store.renew_portal(&b, LEASE).await.unwrap());

    // Eight replicas race for a fresh portal: one wins.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_portal("race", &format!("r{i}"), None, Duration::from_secs(30))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);
}

async fn a_dead_holders_portal_is_taken_over_once(fx: &Fx) {
    let store = fx.store().await;
    let long = Duration::from_secs(600);
    let dead = store
        .claim_portal(P, "dead", Some("pid=1"), long)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .claim_portal(P, "new", None, long)
            .await
            .unwrap()
            .is_none(),
        "held, far from expiry"
    );
    let seen = store.portal_holder(P).await.unwrap().expect("a holder");
    assert_eq!(
        (seen.owner.as_str(), seen.fence, seen.holder.as_deref()),
        ("dead", dead.fence, Some("pid=1"))
    );
    assert_eq!(store.portal_holder("nobody").await.unwrap(), None);

    // Several runs found the same dead holder: one takes the lease over, unexpired as it is.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (store, seen) = (store.clone(), seen.clone());
            tokio::spawn(async move {
                let owner = format!("new{i}");
                store
                    .take_over_portal(P, &seen, &owner, Some(&format!("pid={i}")), long)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let won = &winners[0];
    assert_eq!(won.fence, dead.fence + 1);
    let now = store.portal_holder(P).await.unwrap().unwrap();
    assert_eq!(now.owner, won.owner);
    assert_eq!(
        now.holder.as_deref(),
        Some(format!("pid={}", &won.owner[3..]).as_str()),
        "the new holder is recorded"
    );
    assert!(
        !store.renew_portal(&dead, long).await.unwrap(),
        "the dead holder's lease is fenced off"
    );
    assert!(
        store
            .take_over_portal(P, &seen, "late", None, long)
            .await
            .unwrap()
            .is_none(),
        "a stale view of the holder takes nothing"
    );
    assert!(store.renew_portal(won, long).await.unwrap());
    assert!(
        store
            .take_over_portal("nobody", &seen, "late", None, long)
            .await
            .unwrap()
            .is_none(),
        "no lease, nothing to take over"
    );
    // A claim without a holder clears the recorded one (nothing stale is left to judge by).
    assert!(store.release_portal(won).await.unwrap());
    store
        .claim_portal(P, "plain", None, long)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.portal_holder(P).await.unwrap().unwrap().holder, None);
}

async fn calls_awaiting_a_recording_wait_their_turn(fx: &Fx) {
    let store = fx.store().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let calls: Vec<Call> = (1..=5).map(|id| call(id, None)).collect();
    store.register(P, &calls).await.unwrap();
    let long = Duration::from_secs(30);
    let claim = |id| {
        let store = store.clone();
        async move { store.claim(P, id, "w", long).await.unwrap().unwrap() }
    };

    // 1 is checked again soon, 2 in an hour; 3 uploaded, 5 failed, 4 left pending by a stopped run.
    let c1 = claim(1).await;
    assert!(c1.first_seen >= before && c1.first_seen <= chrono::Utc::now());
    assert!(store
        .wait_for_recording(&c1, Duration::from_millis(600))
        .await
        .unwrap());
    assert!(
        !store.wait_for_recording(&c1, long).await.unwrap(),
        "a released claim is stale"
    );
    let e1 = store.entry(P, 1).await.unwrap().unwrap();
    assert_eq!(
        (e1.state, e1.reason.as_deref(), e1.lease_owner.as_deref()),
        (LedgerState::Pending, Some("awaiting_recording"), None)
    );
    assert!(e1.retry_at.is_some_and(|t| t > chrono::Utc::now()));
    let c2 = claim(2).await;
    assert!(store
        .wait_for_recording(&c2, Duration::from_secs(3600))
        .await
        .unwrap());
    let c3 = claim(3).await;
    assert!(store.finish(&c3, &uploaded("t3")).await.unwrap());
    let c5 = claim(5).await;
    assert!(store
        .finish(&c5, &failed(FailReason::DownloadFailed))
        .await
        .unwrap());

    let ids = |entries: Vec<b24sense_store::LedgerEntry>| -> Vec<u64> {
        entries.iter().map(|e| e.call_id).collect()
    };
    assert_eq!(ids(store.due(P, 0, 5, 100).await.unwrap()), vec![4]);
    assert!(store.portals_due().await.unwrap().is_empty());

    // Once its time has come, 1 is due too; the range and the limit hold.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.portals_due().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "call 1 never became due");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.portals_due().await.unwrap(), vec![P.to_string()]);
    assert_eq!(ids(store.due(P, 0, 5, 100).await.unwrap()), vec![1, 4]);
    assert_eq!(ids(store.due(P, 0, 3, 100).await.unwrap()), vec![1]);
    assert_eq!(ids(store.due(P, 1, 5, 100).await.unwrap()), vec![4]);
    assert_eq!(ids(store.due(P, 0, 5, 1).await.unwrap()), vec![1]);
    assert!(store
        .due("other.portal", 0, 5, 100)
        .await
        .unwrap()
        .is_empty());
    let due = store.due(P, 0, 5, 100).await.unwrap();
    assert_eq!(
        due[0].call.as_ref().map(|c| c.id),
        Some(1),
        "the stored call comes along"
    );

    // An outcome ends the wait; so does a release (the call is taken up at once next time).
    let c1 = claim(1).await;
    assert!(store.finish(&c1, &uploaded("t1")).await.unwrap());
    assert_eq!(store.entry(P, 1).await.unwrap().unwrap().retry_at, None);
    assert!(store.portals_due().await.unwrap().is_empty());
    let c2 = claim(2).await;
    assert!(store.release(&c2).await.unwrap());
    let e2 = store.entry(P, 2).await.unwrap().unwrap();
    assert_eq!(
        (e2.state, e2.retry_at, e2.reason),
        (LedgerState::Pending, None, None)
    );
    assert_eq!(ids(store.due(P, 0, 5, 100).await.unwrap()), vec![2, 4]);

    // A call in doubt whose recording is gone for now stays in doubt while it waits.
    let c4 = claim(4).await;
    assert!(store.mark_uploading(&c4, LEASE).await.unwrap());
    assert!(store.wait_for_recording(&c4, long).await.unwrap());
    let e4 = store.entry(P, 4).await.unwrap().unwrap();
    assert_eq!(
        (e4.state, e4.reason.as_deref()),
        (LedgerState::Uploading, Some("awaiting_recording"))
    );
    assert_eq!(ids(store.due(P, 0, 5, 100).await.unwrap()), vec![2]);
}

/// Settlements made at the same moment (a listing page of calls without recordings) share one statement, and
/// each still gets its own answer: the free rows are settled, the held, uploaded and unknown ones are not.
async fn coinciding_settlements_share_a_statement(fx: &Fx) {
    let store = fx.store().await;
    store
        .register(P, &(1..=40).map(|id| call(id, None)).collect::<Vec<_>>())
        .await
        .unwrap();
    let held = claimed(&store, 7, "w", Duration::from_secs(30)).await;
    settle(&store, P, 8, uploaded("t8")).await;
    let no_recording = Outcome::Skipped {
        reason: SkipReason::NoRecording,
    };
    let before = store.statements();
    let answers = futures::future::join_all(
        (1..=40)
            .chain([99])
            .map(|id| store.settle_unheld(P, id, &no_recording)),
    )
    .await;
    let statements = store.statements() - before;
    assert!(
        statements <= 3,
        "41 coinciding settlements took {statements} statements"
    );
    for (id, answer) in (1..=40).chain([99]).zip(answers) {
        let expected = !matches!(id, 7 | 8 | 99);
        assert_eq!(answer.unwrap(), expected, "call {id}");
    }
    let e = store.entry(P, 1).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.reason.as_deref(), e.attempts, e.lease_owner),
        (LedgerState::Skipped, Some("no_recording"), 1, None)
    );
    let e = store.entry(P, 7).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.lease_owner.as_deref()),
        (LedgerState::Pending, Some("w")),
        "the held call is its holder's"
    );
    assert!(store.finish(&held, &uploaded("t7")).await.unwrap());
    let e = store.entry(P, 8).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.talk_id.as_deref()),
        (LedgerState::Uploaded, Some("t8"))
    );
    assert!(store.entry(P, 99).await.unwrap().is_none());
}

/// Claim and commit in one statement, for outcomes reached without an upload: only for a call nobody holds.
async fn settling_a_call_nobody_holds_takes_one_statement(fx: &Fx) {
    let store = fx.store().await;
    store
        .register(P, &(1..=4).map(|id| call(id, None)).collect::<Vec<_>>())
        .await
        .unwrap();
    let no_recording = Outcome::Skipped {
        reason: SkipReason::NoRecording,
    };
    // 1 is free; 2 is held; 3 is uploaded; 4 was claimed by a worker whose lease has run out; 99 is unknown.
    let held = claimed(&store, 2, "w", Duration::from_secs(30)).await;
    settle(&store, P, 3, uploaded("t3")).await;
    let expired = claimed(&store, 4, "gone", Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;

    assert!(store.settle_unheld(P, 1, &no_recording).await.unwrap());
    let e = store.entry(P, 1).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.reason.as_deref(), e.attempts, e.lease_owner),
        (LedgerState::Skipped, Some("no_recording"), 1, None)
    );
    assert!(
        !store.settle_unheld(P, 2, &no_recording).await.unwrap(),
        "held by w"
    );
    let e = store.entry(P, 2).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.lease_owner.as_deref()),
        (LedgerState::Pending, Some("w"))
    );
    assert!(
        store
            .finish(&held, &failed(FailReason::DownloadFailed))
            .await
            .unwrap(),
        "w's claim still stands"
    );
    assert!(
        !store.settle_unheld(P, 3, &no_recording).await.unwrap(),
        "uploaded"
    );
    assert_eq!(
        store.entry(P, 3).await.unwrap().unwrap().talk_id.as_deref(),
        Some("t3")
    );
    assert!(
        !store.settle_unheld(P, 99, &no_recording).await.unwrap(),
        "unknown"
    );

    let failure = failed(FailReason::RecordingUnavailable);
    assert!(
        store.settle_unheld(P, 4, &failure).await.unwrap(),
        "an expired lease is free"
    );
    assert!(
        !store.finish(&expired, &uploaded("late")).await.unwrap(),
        "the settle moved the fence on: the earlier claim can commit nothing"
    );
    let e = store.entry(P, 4).await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.detail, e.talk_id, e.attempts),
        (
            LedgerState::Failed,
            Some("detail of recording_unavailable".to_string()),
            None,
            1
        )
    );
}

/// A fenced write in a wave of concurrent ones, and the answer it must get.
enum Wave {
    Mark(Claim, bool),
    Finish(Claim, Outcome, bool),
}

/// Runs every write of a wave at once, each in its own task, and checks each answer.
async fn run_wave(store: &Store, wave: Vec<Wave>) {
    let mut tasks = tokio::task::JoinSet::new();
    for write in wave {
        let store = store.clone();
        tasks.spawn(async move {
            let (claim, got, expect) = match write {
                Wave::Mark(c, expect) => {
                    let got = store.mark_uploading(&c, LEASE).await.unwrap();
                    (c, got, expect)
                }
                Wave::Finish(c, outcome, expect) => {
                    let got = store.finish(&c, &outcome).await.unwrap();
                    (c, got, expect)
                }
            };
            assert_eq!(
                got, expect,
                "{} {} fence {}",
                claim.portal, claim.call_id, claim.fence
            );
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Many workers marking and finishing at once: the store writes coinciding writes together (marks and outcomes in
/// one statement), and each answer and each row must still be that claim's own — a stale claim of the same call in
/// the same batch changes nothing, and the same call ID under another portal is another row.
async fn coinciding_writes_are_each_answered_for_their_own_claim(fx: &Fx) {
    const P2: &str = "other.bitrix24.ru";
    let store = fx.store().await;
    let calls: Vec<Call> = (1..=40).map(|id| call(id, None)).collect();
    store.register(P, &calls).await.unwrap();
    store.register(P2, &calls[..4]).await.unwrap();
    // Calls 1..=6 and 21..=26 were claimed by a worker whose lease ran out before "live" took them over.
    let mut stale = Vec::new();
    for id in (1..=6).chain(21..=26) {
        let c = store.claim(P, id, "crashed", Duration::from_millis(50));
        stale.push(c.await.unwrap().unwrap());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let ids: Vec<u64> = (1..=40).collect();
    let live = store.claim_many(P, &ids, "live", LEASE).await.unwrap();
    assert_eq!(live.len(), 40);
    let elsewhere = store
        .claim_many(P2, &ids[..4], "live", LEASE)
        .await
        .unwrap();
    assert_eq!(elsewhere.len(), 4);
    let (first, second) = live.split_at(20);
    let outcome = |id: u64| match id % 3 {
        0 => uploaded(&format!("talk-{id}")),
        1 => failed(FailReason::DownloadFailed),
        _ => Outcome::Skipped {
            reason: SkipReason::NoRecording,
        },
    };

    // Wave 1: the first half and the other portal are marked; the stale claims' marks are refused.
    let mut wave: Vec<Wave> = first
        .iter()
        .chain(&elsewhere)
        .map(|c| Wave::Mark(c.clone(), true))
        .collect();
    wave.extend(stale.iter().map(|c| Wave::Mark(c.clone(), false)));
    run_wave(&store, wave).await;
    // Wave 2: the first half finishes while the second half is marked; stale outcomes are refused.
    let mut wave: Vec<Wave> = first
        .iter()
        .map(|c| Wave::Finish(c.clone(), outcome(c.call_id), true))
        .chain(second.iter().map(|c| Wave::Mark(c.clone(), true)))
        .chain(
            elsewhere
                .iter()
                .map(|c| Wave::Finish(c.clone(), uploaded(&format!("p2-{}", c.call_id)), true)),
        )
        .collect();
    wave.extend(
        stale
            .iter()
            .map(|c| Wave::Finish(c.clone(), uploaded("stale"), false)),
    );
    run_wave(&store, wave).await;
    for c in second {
        let e = store.entry(P, c.call_id).await.unwrap().unwrap();
        assert_eq!(
            (e.state, e.lease_owner.as_deref(), e.attempts, e.reason),
            (LedgerState::Uploading, Some("live"), 0, None),
            "call {} is marked, not finished",
            c.call_id
        );
        assert!(e.lease_until.is_some());
    }
    // Wave 3: the second half finishes.
    run_wave(
        &store,
        second
            .iter()
            .map(|c| Wave::Finish(c.clone(), outcome(c.call_id), true))
            .collect(),
    )
    .await;

    for id in ids.iter().copied() {
        let e = store.entry(P, id).await.unwrap().unwrap();
        let want = outcome(id);
        assert_eq!(e.state, want.state(), "call {id}");
        assert_eq!(e.reason.as_deref(), want.reason(), "call {id}");
        let (talk, detail) = match &want {
            Outcome::Uploaded { talk_id, .. } => (Some(talk_id.clone()), None),
            Outcome::Failed { detail, .. } => (None, Some(detail.clone())),
            Outcome::Skipped { .. } => (None, None),
        };
        assert_eq!((e.talk_id, e.detail), (talk, detail), "call {id}");
        assert_eq!(
            (e.attempts, e.lease_owner, e.lease_until),
            (1, None, None),
            "call {id}: one attempt, lease cleared"
        );
    }
    for id in 1..=4 {
        let e = store.entry(P2, id).await.unwrap().unwrap();
        assert_eq!(
            (e.state, e.talk_id.as_deref()),
            (LedgerState::Uploaded, Some(format!("p2-{id}").as_str()))
        );
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Fx::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Fx::pg()).await;
                }
            )*
        }
    };
}

suite!(
    register_is_idempotent_and_refreshes_calls,
    register_a_large_page_in_one_transaction,
    ids_beyond_63_bits_are_refused,
    claim_holds_until_the_lease_expires,
    fencing_stops_a_worker_whose_lease_was_taken_over,
    an_expired_upload_is_in_doubt,
    an_expired_lease_nobody_took_still_commits,
    concurrent_claims_have_one_winner,
    claim_next_hands_out_disjoint_rows,
    release_gives_the_row_back,
    claim_many_takes_what_is_free_and_release_held_gives_it_back,
    the_upload_mark_needs_the_fence_not_an_unexpired_lease,
    coinciding_writes_are_each_answered_for_their_own_claim,
    settling_a_call_nobody_holds_takes_one_statement,
    coinciding_settlements_share_a_statement,
    counts_entries_and_reset_failed,
    cursor_only_moves_forward,
    runs_are_journaled,
    reopening_keeps_everything_and_rows_cannot_be_deleted,
    a_ledger_from_a_newer_version_is_refused,
    one_replica_holds_a_portal,
    a_dead_holders_portal_is_taken_over_once,
    a_ledger_from_an_older_version_is_upgraded_in_place,
    a_failed_migration_leaves_the_data_as_it_was,
    calls_awaiting_a_recording_wait_their_turn,
    web_runs_journal_progress_and_are_taken_over_once,
    ledger_pages_walk_every_row_once,
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

//! Handing out many rows at once (`claim_next`, `claim_many`) and giving them back (`release`, `release_held`).

use std::collections::HashSet;
use std::time::Duration;

use b24sense_core::{Call, FailReason, LedgerState};
use b24sense_store::Store;

use crate::fixture::{call, claimed, failed, settle, uploaded, uploading, Fx, LEASE, P};

pub(crate) async fn claim_next_hands_out_disjoint_rows(fx: &Fx) {
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

pub(crate) async fn release_gives_the_row_back(fx: &Fx) {
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

pub(crate) async fn claim_many_takes_what_is_free_and_release_held_gives_it_back(fx: &Fx) {
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

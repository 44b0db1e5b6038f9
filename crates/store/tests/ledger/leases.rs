//! Claims, their leases and the fence: what an expired lease allows, and who wins a race.

use std::sync::Arc;
use std::time::Duration;

use b24sense_core::{LedgerState, Outcome};

use crate::fixture::{call, claim_after_expiry, claimed, uploaded, uploading, Fx, LEASE, P};

pub(crate) async fn claim_holds_until_the_lease_expires(fx: &Fx) {
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

pub(crate) async fn fencing_stops_a_worker_whose_lease_was_taken_over(fx: &Fx) {
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

pub(crate) async fn an_expired_upload_is_in_doubt(fx: &Fx) {
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

pub(crate) async fn an_expired_lease_nobody_took_still_commits(fx: &Fx) {
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

pub(crate) async fn concurrent_claims_have_one_winner(fx: &Fx) {
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

pub(crate) async fn the_upload_mark_needs_the_fence_not_an_unexpired_lease(fx: &Fx) {
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

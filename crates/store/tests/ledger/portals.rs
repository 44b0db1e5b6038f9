//! Portal leases: one replica holds a portal, and a dead holder's portal is taken over once.

use std::time::{Duration, Instant};

use crate::fixture::{Fx, LEASE, P};

pub(crate) async fn one_replica_holds_a_portal(fx: &Fx) {
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

pub(crate) async fn a_dead_holders_portal_is_taken_over_once(fx: &Fx) {
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

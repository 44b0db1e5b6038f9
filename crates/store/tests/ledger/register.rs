//! Registering calls: idempotent, refreshing, in one transaction, IDs that fit.

use std::time::Instant;

use b24sense_core::{Call, LedgerState, Outcome, SkipReason};
use b24sense_store::{Error, StateCount};

use crate::fixture::{call, settle, uploaded, Fx, LEASE, P};

pub(crate) async fn register_is_idempotent_and_refreshes_calls(fx: &Fx) {
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

pub(crate) async fn register_a_large_page_in_one_transaction(fx: &Fx) {
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

pub(crate) async fn ids_beyond_63_bits_are_refused(fx: &Fx) {
    let store = fx.store().await;
    let mut c = call(1, None);
    c.id = u64::MAX;
    assert!(matches!(store.register(P, &[c]).await, Err(Error::Data(_))));
    assert!(matches!(
        store.claim(P, u64::MAX, "a", LEASE).await,
        Err(Error::Data(_))
    ));
}

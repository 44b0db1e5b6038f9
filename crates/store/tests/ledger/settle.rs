//! Outcomes reached without an upload: calls waiting for a recording, and settling calls nobody holds.

use std::time::{Duration, Instant};

use b24sense_core::{Call, FailReason, LedgerState, Outcome, SkipReason};

use crate::fixture::{call, claimed, failed, settle, uploaded, Fx, LEASE, P};

pub(crate) async fn calls_awaiting_a_recording_wait_their_turn(fx: &Fx) {
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
pub(crate) async fn coinciding_settlements_share_a_statement(fx: &Fx) {
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
pub(crate) async fn settling_a_call_nobody_holds_takes_one_statement(fx: &Fx) {
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

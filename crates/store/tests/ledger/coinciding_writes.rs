//! Marks and outcomes written together by many workers at once, each answered for its own claim.

use std::time::Duration;

use b24sense_core::{Call, FailReason, LedgerState, Outcome, SkipReason};
use b24sense_store::{Claim, Store};

use crate::fixture::{call, failed, uploaded, Fx, LEASE, P};

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
pub(crate) async fn coinciding_writes_are_each_answered_for_their_own_claim(fx: &Fx) {
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

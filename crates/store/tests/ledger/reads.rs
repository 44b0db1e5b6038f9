//! What the ledger reports: state counts, entries (and resetting failed ones), the report's pages.

use b24sense_core::{Call, FailReason, LedgerState, Outcome, SkipReason};
use b24sense_store::StateCount;

use crate::fixture::{call, failed, settle, uploaded, Fx, P};

pub(crate) async fn counts_entries_and_reset_failed(fx: &Fx) {
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

/// The report's pages: keyset by call ID, every row once, the stored call not read.
pub(crate) async fn ledger_pages_walk_every_row_once(fx: &Fx) {
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

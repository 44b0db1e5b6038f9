//! A session whose earlier parts were stored under another cut of its history: reported, never mixed.

use std::time::Duration;

use b24sense_core::LedgerState;

use super::{config, crashed_mid_upload, run, session, FakeChats, FakeText, PORTAL};
use crate::support::test_store;

#[tokio::test]
async fn parts_stored_under_another_cut_are_reported_not_mixed() {
    let (store, _dir) = test_store().await;
    let source = FakeChats::with(vec![session(1, true, 1)]);
    let sink = FakeText::new(false, &[]);
    // An earlier run cut the session into 3 parts and stored the first; now it maps to one.
    crashed_mid_upload(&store, &sink, false).await;
    let claim = store
        .claim_chat(PORTAL, 1, "old", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .mark_chat_uploading(&claim, 3, Duration::from_secs(5))
        .await
        .unwrap());
    assert!(store
        .record_chat_parts(&claim, &["old-1".into()])
        .await
        .unwrap());
    assert!(store.release_chat(&claim).await.unwrap());
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!((s.uploaded, s.failed_total()), (0, 1));
    assert!(sink.talks.lock().unwrap().is_empty(), "nothing sent");
    let row = store.chat_entry(PORTAL, 1).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.talk_ids.clone()),
        (LedgerState::Failed, vec!["old-1".to_string()])
    );
    assert!(row.detail.unwrap().contains("now maps to 1 parts"));
}

//! SpeechSense faults of their own: refusals of small uploads, a long outage, and answers lost after the store.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use b24sense_core::{CallFilter, FailReason};
use b24sense_emulators::speechsense::{Code, SpeechSenseConfig};

use crate::support::test_store;

use super::env::{big_portal, long_calls, small_portal, Env};

/// Small recordings may be sent whole before the refusal arrives; then the client cannot tell UNAVAILABLE from a
/// lost answer and the upload is in doubt. Either way: exactly once; without a search scope at most a reported
/// (false) `reuploaded_after_crash`, with one none at all.
#[tokio::test]
async fn speechsense_unavailable_on_small_uploads() {
    for search in [false, true] {
        let env = Env::start(small_portal(30), CallFilter::default()).await;
        env.speech.inject(Code::Unavailable, 2);
        let (store, _dir) = test_store().await;
        let s = env.export(&store, search).await;
        assert!(s.failed.is_empty(), "{:?}", s.failed);
        let n = env.check(&store, &BTreeMap::new(), &BTreeSet::new()).await;
        assert_eq!(n, env.qualifying().len());
        assert_eq!(
            env.speech.talk_count(),
            n,
            "exactly once (search: {search})"
        );
        assert_eq!(env.speech.stats().rejected(Code::Unavailable), 2);
        assert!(s.reuploaded_after_crash <= 2, "{s:?}");
        if search {
            assert_eq!(s.reuploaded_after_crash, 0, "{s:?}");
        }
        eprintln!(
            "UNAVAILABLE on small uploads, search {search}: reuploaded_after_crash = {}",
            s.reuploaded_after_crash
        );
    }
}

/// SpeechSense down for longer than the attempts last: the calls are reported `upload_failed`, nothing is stored,
/// and a later run uploads each of them once.
#[tokio::test]
async fn speechsense_down_for_too_long_then_back() {
    let env = Env::start(big_portal(40), long_calls()).await;
    env.speech.inject(Code::Unavailable, 10_000);
    let (store, _dir) = test_store().await;
    let s = env.export(&store, false).await;
    let qualifying = env.qualifying();
    let failed: BTreeMap<u64, FailReason> = qualifying
        .iter()
        .map(|id| (*id, FailReason::UploadFailed))
        .collect();
    assert_eq!(env.check(&store, &failed, &BTreeSet::new()).await, 0);
    assert_eq!(
        s.failed.get("upload_failed").copied(),
        Some(qualifying.len() as u64),
        "{s:?}"
    );
    assert_eq!(env.speech.talk_count(), 0);

    env.speech.clear_faults();
    let again = env.export(&store, false).await;
    env.check_all_once(&store, &again).await;
}

/// The search index lags behind the store (here 1.5 s): a lookup right after the lost answer finds nothing yet.
/// Retried for a short while, it must still find the talk — zero duplicates.
#[tokio::test]
async fn deadline_exceeded_after_store_with_a_lagging_search_index() {
    let ss = SpeechSenseConfig {
        search_lag: Duration::from_millis(1500),
        ..SpeechSenseConfig::default()
    };
    let env = Env::start_with(small_portal(30), CallFilter::default(), ss).await;
    env.speech.inject_after_store(Code::DeadlineExceeded, 1);
    let (store, _dir) = test_store().await;
    let s = env.export(&store, true).await;
    assert_eq!(
        env.speech.talk_count(),
        env.qualifying().len(),
        "zero duplicates: {:?}",
        env.talks_by_call()
            .into_iter()
            .filter(|(_, t)| t.len() > 1)
            .collect::<Vec<_>>()
    );
    env.check_all_once(&store, &s).await;
    assert!(
        env.speech.stats().searches >= 2,
        "the first lookup found nothing and was repeated"
    );
}

#[tokio::test]
async fn deadline_exceeded_after_store_without_search_reports_the_duplicate() {
    let env = Env::start(small_portal(40), CallFilter::default()).await;
    env.speech.inject_after_store(Code::DeadlineExceeded, 1);
    let (store, _dir) = test_store().await;
    let s = env.export(&store, false).await;
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    assert_eq!(
        s.reuploaded_after_crash, 1,
        "the duplicate is reported: {s:?}"
    );
    let dup: BTreeSet<u64> = env
        .talks_by_call()
        .into_iter()
        .filter(|(_, t)| t.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(dup.len(), 1, "exactly one call was uploaded twice");
    let reported: Vec<u64> = s
        .calls
        .iter()
        .filter(|c| {
            matches!(
                c.outcome,
                b24sense_core::Outcome::Uploaded {
                    reuploaded_after_crash: true,
                    ..
                }
            )
        })
        .map(|c| c.call_id)
        .collect();
    assert_eq!(reported, dup.iter().copied().collect::<Vec<_>>());
    let n = env.check(&store, &BTreeMap::new(), &dup).await;
    assert_eq!(n, env.qualifying().len());
    assert_eq!(env.speech.talk_count(), n + 1);
}

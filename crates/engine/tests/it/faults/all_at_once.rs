//! Every kind of fault in one run, on both ledgers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use b24sense_core::{CallFilter, FailReason};
use b24sense_emulators::bitrix24::{fault_kind, FaultConfig};
use b24sense_emulators::speechsense::Code;
use b24sense_store::Store;

use crate::support::{postgres_store, test_store};

use super::env::{small_portal, Env};

/// Every kind of fault in one run; `check` as always. Run on both ledgers.
async fn all_faults_at_once(store: Store) {
    let env = Env::start(small_portal(60), CallFilter::default()).await;
    let qualifying = env.qualifying();
    let gone: BTreeSet<u64> = qualifying.iter().copied().step_by(9).take(3).collect();
    env.portal.set_faults(FaultConfig {
        query_limit_next: 2,
        internal_error_next: 1,
        html_502_next: 1,
        reset_connection_next: 2,
        cut_rest_next: 1,
        cut_download_next: 2,
        malformed_json_next: 1,
        drop_connection_every: Some(11),
        slow_download: Some(Duration::from_millis(5)),
        vanished: gone.clone(),
        operation_time_limit: Some(("batch".into(), 1)),
        ..FaultConfig::default()
    });
    env.speech.inject(Code::Unavailable, 2);
    env.speech.inject(Code::ResourceExhausted, 1);
    env.speech.inject_after_store(Code::DeadlineExceeded, 2);
    let s = env.export(&store, true).await;
    let failed: BTreeMap<u64, FailReason> = gone
        .iter()
        .map(|id| (*id, FailReason::RecordingUnavailable))
        .collect();
    let n = env.check(&store, &failed, &BTreeSet::new()).await;
    assert_eq!(n, qualifying.len() - gone.len());
    assert_eq!(s.uploaded as usize, n, "{s:?}");
    assert_eq!(
        s.failed.get("recording_unavailable").copied(),
        Some(gone.len() as u64),
        "{s:?}"
    );
    assert_eq!(
        env.speech.talk_count(),
        n,
        "zero duplicates with the search scope"
    );
    let kinds = env.portal.stats().faults_injected;
    for k in [
        fault_kind::QUERY_LIMIT,
        fault_kind::RESET_CONNECTION,
        fault_kind::CUT_DOWNLOAD,
        fault_kind::VANISHED,
    ] {
        assert!(kinds.contains_key(k), "{k} fired: {kinds:?}");
    }
    // A second run without faults uploads only the recordings that are back, and nothing twice.
    env.portal.set_faults(FaultConfig::none());
    let again = env.export(&store, true).await;
    assert_eq!(again.uploaded as usize, gone.len(), "{again:?}");
    let n = env.check(&store, &BTreeMap::new(), &BTreeSet::new()).await;
    assert_eq!(n, qualifying.len());
    assert_eq!(env.speech.talk_count(), n);
}

#[tokio::test]
async fn all_faults_at_once_sqlite() {
    let (store, _dir) = test_store().await;
    all_faults_at_once(store).await;
}

#[tokio::test]
async fn all_faults_at_once_postgres() {
    all_faults_at_once(postgres_store().await).await;
}

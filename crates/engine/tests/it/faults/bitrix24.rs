//! Bitrix24 faults of their own: an OAuth token expiring mid-export, recordings that vanish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24sense_bitrix24::{Bitrix24Client, ClientConfig, Credentials, RatePlan};
use b24sense_core::{CallFilter, FailReason};
use b24sense_emulators::bitrix24::{fault_kind, Bitrix24Emulator, FaultConfig, PortalConfig};
use b24sense_emulators::speechsense::SpeechSenseConfig;
use b24sense_engine::adapters::Bitrix24Source;
use b24sense_engine::report::no_progress;
use b24sense_engine::run_export;
use tokio_util::sync::CancellationToken;

use crate::support::test_store;

use super::env::{fast_client, small_portal, Env, Tokens, TOKEN_A, TOKEN_B};

#[tokio::test]
async fn expired_token_mid_export_is_refreshed_once() {
    let portal = Bitrix24Emulator::start(small_portal(40)).await.unwrap();
    let tokens = Arc::new(Tokens {
        current: Mutex::new(TOKEN_A.into()),
        next: TOKEN_B.into(),
        endpoint: portal.base_url().join("rest/").unwrap(),
        refreshes: AtomicU32::new(0),
    });
    let bitrix = Bitrix24Client::new(Credentials::OAuth(tokens.clone()), fast_client()).unwrap();
    // Request 1 lists the calls; request 2 (a name lookup or a Disk batch) finds the token expired.
    portal.set_faults(FaultConfig::none().with_expire_token_at(2));
    let env = Env::with_client(
        portal,
        bitrix,
        CallFilter::default(),
        SpeechSenseConfig::default(),
    )
    .await;
    let (store, _dir) = test_store().await;
    let s = env.export(&store, false).await;
    env.check_all_once(&store, &s).await;
    assert!(env.injected(fault_kind::EXPIRED_TOKEN) >= 1);
    assert_eq!(
        tokens.refreshes.load(Ordering::Relaxed),
        1,
        "refreshed once"
    );
    assert_eq!(env.bitrix.stats().token_refreshes, 1);
}

/// The token expires while Disk download links resolved with it are still queued: those links die with it (as on a
/// real portal), and the calls must still arrive — through fresh links — not stop the run or fail.
#[tokio::test]
async fn expired_token_with_download_links_still_queued() {
    // Every download goes through the portal's bucket here: a roomy plan keeps the test short.
    let portal = Bitrix24Emulator::start(PortalConfig {
        disk_only_share: 1.0,
        rate: (500, 100),
        ..small_portal(120)
    })
    .await
    .unwrap();
    let tokens = Arc::new(Tokens {
        current: Mutex::new(TOKEN_A.into()),
        next: TOKEN_B.into(),
        endpoint: portal.base_url().join("rest/").unwrap(),
        refreshes: AtomicU32::new(0),
    });
    let roomy = ClientConfig {
        rate: RatePlan {
            capacity: 500,
            per_second: 100,
        },
        ..fast_client()
    };
    let bitrix = Bitrix24Client::new(Credentials::OAuth(tokens.clone()), roomy).unwrap();
    // Requests: 1 lists, 2 looks up names, 3 resolves the first 50 Disk links, 4 the next 50 — and expires token A
    // while links of the first batch still wait for a worker.
    portal.set_faults(
        FaultConfig::none()
            .with_expire_token_at(4)
            .with_slow_download(Duration::from_millis(10)),
    );
    let env = Env::with_client(
        portal,
        bitrix,
        CallFilter::default(),
        // Slow uploads keep resolved links waiting in the work queue when the token expires.
        SpeechSenseConfig {
            upload_latency: Duration::from_millis(300),
            ..SpeechSenseConfig::default()
        },
    )
    .await;
    let (store, _dir) = test_store().await;
    let source = Arc::new(Bitrix24Source::new(env.bitrix.clone()));
    let run = run_export(
        source,
        env.sink(false),
        store.clone(),
        env.config(),
        no_progress(),
        CancellationToken::new(),
    );
    let s = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the export finishes")
        .unwrap_or_else(|e| panic!("the export must not stop: {e}"));
    assert!(
        env.injected(fault_kind::EXPIRED_TOKEN) >= 2,
        "the fault hit a REST call and a stale download link: {:?}",
        env.portal.stats().faults_injected
    );
    env.check_all_once(&store, &s).await;
    assert_eq!(tokens.refreshes.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn vanished_recordings_are_reported_unavailable() {
    let env = Env::start(small_portal(60), CallFilter::default()).await;
    let qualifying = env.qualifying();
    let pick = |disk_only: bool| {
        qualifying
            .iter()
            .copied()
            .filter(|id| env.portal.recording(*id).unwrap().via_disk_only == disk_only)
            .take(2)
            .collect::<Vec<u64>>()
    };
    let (direct, disk_only) = (pick(false), pick(true));
    assert_eq!((direct.len(), disk_only.len()), (2, 2));
    let gone: BTreeSet<u64> = direct.iter().chain(&disk_only).copied().collect();
    env.portal
        .set_faults(FaultConfig::none().with_vanished(gone.iter().copied()));
    let (store, _dir) = test_store().await;
    let s = env.export(&store, false).await;
    let failed: BTreeMap<u64, FailReason> = gone
        .iter()
        .map(|id| (*id, FailReason::RecordingUnavailable))
        .collect();
    let n = env.check(&store, &failed, &BTreeSet::new()).await;
    assert_eq!(n, qualifying.len() - gone.len());
    assert_eq!(
        s.failed.get("recording_unavailable").copied(),
        Some(4),
        "{s:?}"
    );
    assert_eq!(s.uploaded as usize, n);
    // Reported, not lost: a later run tries failed calls again, and with the files back uploads them.
    env.portal.set_faults(FaultConfig::none());
    let again = env.export(&store, false).await;
    assert_eq!(again.uploaded, 4, "{again:?}");
    env.check(&store, &BTreeMap::new(), &BTreeSet::new()).await;
}

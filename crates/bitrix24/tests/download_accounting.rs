//! Download accounting over sockets against the emulated portal: downloads from the portal's own host start
//! uncounted and switch to counted at the portal's first rate-limit refusal, with the refused requests retried.

use std::time::Duration;

use b24sense_bitrix24::{Bitrix24Client, ClientConfig, Credentials, RatePlan, WebhookUrl};
use b24sense_core::CallFilter;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use futures::StreamExt;

/// Recordings on Disk only (every one is downloaded through `/rest/download.json`), a small bucket.
fn disk_only_portal(count_downloads: bool) -> PortalConfig {
    PortalConfig {
        calls: 30,
        seed: 15,
        no_record_share: 0.0,
        disk_only_share: 1.0,
        max_recording_bytes: Some(4 * 1024),
        rate: (10, 10),
        count_downloads,
        ..PortalConfig::default()
    }
}

fn client(portal: &Bitrix24Emulator, count_portal_downloads: bool) -> Bitrix24Client {
    let webhook = WebhookUrl::parse(&portal.webhook_url()).unwrap();
    let config = ClientConfig {
        rate: RatePlan {
            capacity: 10,
            per_second: 10,
        },
        count_portal_downloads,
        max_attempts: 8,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    Bitrix24Client::new(Credentials::Webhook(webhook), config).unwrap()
}

/// Lists the portal's calls, resolves their Disk files in one batch and downloads them all at once; returns how
/// many recordings arrived whole.
async fn download_all(c: &Bitrix24Client) -> usize {
    let chunk = c.list_calls(&CallFilter::default(), 0).await.unwrap();
    let files: Vec<u64> = chunk
        .calls
        .iter()
        .filter_map(|c| c.record_file_id)
        .collect();
    assert_eq!(files.len(), 30, "every call has a Disk-only recording");
    let urls = c.disk_download_urls(&files).await.unwrap();
    let downloads = urls.into_values().map(|url| async move {
        let d = c.download(&url.unwrap()).await.unwrap();
        let expected = d.content_length.unwrap();
        let bytes: usize = d
            .stream
            .map(|b| b.unwrap().len())
            .collect::<Vec<_>>()
            .await
            .iter()
            .sum();
        usize::from(bytes as u64 == expected && expected > 0)
    });
    futures::future::join_all(downloads).await.into_iter().sum()
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took over 30 s")
}

#[tokio::test]
async fn a_portal_that_does_not_count_downloads_gets_them_without_tokens() {
    bounded(async {
        let portal = Bitrix24Emulator::start(disk_only_portal(false))
            .await
            .unwrap();
        let c = client(&portal, false);
        assert_eq!(download_all(&c).await, 30);
        let s = c.stats();
        assert_eq!(s.rate_limited, 0);
        assert_eq!(portal.stats().rate_limited, 0, "the portal refused nothing");
        assert_eq!(
            (s.portal_downloads, s.uncounted_portal_downloads),
            (0, 30),
            "no download waited for a token: all went out uncounted"
        );
        assert!(!c.counts_portal_downloads());
        assert_eq!(
            s.requests, 32,
            "one listing, one disk.file.get batch, 30 downloads; no retries"
        );
    })
    .await
}

#[tokio::test]
async fn a_portal_that_counts_downloads_switches_the_client_to_counting_them() {
    bounded(async {
        let portal = Bitrix24Emulator::start(disk_only_portal(true))
            .await
            .unwrap();
        let c = client(&portal, false);
        let watcher = tokio::spawn({
            let c = c.clone();
            async move { c.portal_downloads_now_counted().await }
        });
        assert_eq!(
            download_all(&c).await,
            30,
            "every refused download was retried and arrived"
        );
        assert!(
            c.counts_portal_downloads(),
            "the refusal switched the client to counting"
        );
        watcher.await.unwrap();
        let s = c.stats();
        assert!(s.rate_limited >= 1, "{s:?}");
        assert_eq!(s.rate_limited, portal.stats().rate_limited);
        // 30 downloads at once against a bucket of 10: without the bound on uncounted downloads sent while the
        // local bucket is empty, about 20 were refused before the first refusal came back.
        assert!(
            s.rate_limited <= 3,
            "at most the 3 over-budget downloads in flight are refused before the switch: {s:?}"
        );
        assert!(
            s.portal_downloads >= 1,
            "retries after the switch took tokens: {s:?}"
        );
        assert_eq!(portal.stats().downloads, 30);

        // A client that starts counting (the ledger remembers this portal) is never refused.
        let fresh = Bitrix24Emulator::start(disk_only_portal(true))
            .await
            .unwrap();
        let c = client(&fresh, true);
        assert_eq!(download_all(&c).await, 30);
        let s = c.stats();
        assert_eq!((s.rate_limited, fresh.stats().rate_limited), (0, 0));
        assert_eq!((s.portal_downloads, s.uncounted_portal_downloads), (30, 0));
    })
    .await
}

#[tokio::test]
async fn a_refusal_without_uncounted_downloads_changes_nothing() {
    bounded(async {
        // REST calls alone overflow the bucket: no download ran, so downloads stay uncounted.
        let portal = Bitrix24Emulator::start(PortalConfig {
            rate: (3, 10),
            ..disk_only_portal(true)
        })
        .await
        .unwrap();
        let c = client(&portal, false);
        let calls = (0..8).map(|_| c.call("profile", serde_json::json!({})));
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        assert!(
            c.stats().rate_limited >= 1,
            "the bucket of 3 refused some of 8 calls"
        );
        assert!(!c.counts_portal_downloads());
    })
    .await
}

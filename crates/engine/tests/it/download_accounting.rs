//! Download accounting end to end: the real clients, the engine and a ledger against the emulators, once with a
//! portal that does not count recording downloads in its request bucket and once with one that does.

use std::sync::Arc;
use std::time::Duration;

use b24sense_bitrix24::{Bitrix24Client, ClientConfig, Credentials, RatePlan, WebhookUrl};
use b24sense_core::CallFilter;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::{run_export, DownloadAccounting, ExportConfig};
use b24sense_speechsense::{
    ClientConfig as SsConfig, Credentials as SsCredentials, SpeechSenseClient,
};
use b24sense_store::Store;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::support::{collector, test_store, Ran};

const PORTAL: &str = "accounting.bitrix24.test";
/// The emulated bucket: 10 requests, 5 leaking out per second.
const RATE: (u32, u32) = (10, 5);

struct Env {
    portal: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    connection_id: String,
    api_key: String,
}

impl Env {
    /// A portal whose every recording is Disk-only, so each is downloaded from the portal's own host.
    async fn start(calls: usize, count_downloads: bool) -> Env {
        let portal = Bitrix24Emulator::start(PortalConfig {
            calls,
            seed: 15,
            no_record_share: 0.0,
            disk_only_share: 1.0,
            max_recording_bytes: Some(8 * 1024),
            rate: RATE,
            count_downloads,
            ..PortalConfig::default()
        })
        .await
        .unwrap();
        let ss_config = SpeechSenseConfig::default();
        let connection_id = ss_config.connections[0].id.clone();
        let api_key = ss_config.api_keys[0].clone();
        let speech = SpeechSenseEmulator::start(ss_config).await.unwrap();
        Env {
            portal,
            speech,
            connection_id,
            api_key,
        }
    }

    /// A new client, as a new process builds it: downloads uncounted until the ledger or the portal says otherwise.
    fn client(&self) -> Bitrix24Client {
        let webhook = WebhookUrl::parse(&self.portal.webhook_url()).unwrap();
        let config = ClientConfig {
            rate: RatePlan {
                capacity: RATE.0,
                per_second: RATE.1,
            },
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(800),
            ..ClientConfig::default()
        };
        Bitrix24Client::new(Credentials::Webhook(webhook), config).unwrap()
    }

    async fn export(&self, store: &Store, bitrix: &Bitrix24Client) -> Ran {
        let speech = SpeechSenseClient::new(SsConfig::new(
            self.speech.endpoint(),
            SsCredentials::ApiKey(SecretString::from(self.api_key.clone())),
        ))
        .unwrap();
        let (progress, calls) = collector();
        let mut config = ExportConfig::new(PORTAL, self.connection_id.clone());
        config.filter = CallFilter::default();
        let summary = run_export(
            Arc::new(Bitrix24Source::new(bitrix.clone())),
            Arc::new(SpeechSenseSink::new(speech, None)),
            store.clone(),
            config,
            progress,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        Ran::new(summary, &calls)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_that_does_not_count_downloads_is_never_refused() {
    let env = Env::start(20, false).await;
    let (store, _dir) = test_store().await;
    let bitrix = env.client();
    let r = env.export(&store, &bitrix).await;

    assert_eq!((r.found, r.uploaded), (20, 20), "{:?}", r.summary);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(
        env.portal.stats().rate_limited,
        0,
        "the portal refused nothing"
    );
    let s = bitrix.stats();
    assert_eq!(s.rate_limited, 0);
    assert_eq!(
        (s.portal_downloads, s.uncounted_portal_downloads),
        (0, 20),
        "no download took a token"
    );
    assert_eq!(r.download_accounting, Some(DownloadAccounting::Uncounted));
    assert!(!store.portal_counts_downloads(PORTAL).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_that_counts_downloads_is_learned_once_and_remembered() {
    let env = Env::start(40, true).await;
    env.portal.hide_calls_after(20);
    let (store, _dir) = test_store().await;

    // First run: downloads start uncounted and overflow the portal's bucket; its first refusal switches the mode.
    let first = env.client();
    let r = env.export(&store, &first).await;
    assert_eq!((r.found, r.uploaded), (20, 20), "{:?}", r.summary);
    assert!(
        r.failed.is_empty(),
        "no call lost to the refusals: {:?}",
        r.failed
    );
    assert_eq!(env.speech.talks().len(), 20, "one talk per call");
    let s = first.stats();
    assert!(
        s.rate_limited >= 1,
        "the bucket of 10 refused some of 20 downloads: {s:?}"
    );
    assert_eq!(
        s.rate_limited,
        env.portal.stats().rate_limited,
        "every refusal was seen and retried"
    );
    assert!(
        s.portal_downloads >= 1,
        "downloads took tokens after the switch: {s:?}"
    );
    assert_eq!(r.download_accounting, Some(DownloadAccounting::Counted));
    assert!(
        store.portal_counts_downloads(PORTAL).await.unwrap(),
        "the ledger remembers it"
    );

    // Second run, by a new process, once the portal's bucket has leaked empty: it starts counting, so the portal
    // refuses nothing at all.
    tokio::time::sleep(Duration::from_secs(u64::from(RATE.0 / RATE.1) + 1)).await;
    env.portal.reveal_calls_up_to(40);
    env.portal.reset_stats();
    let second = env.client();
    let r = env.export(&store, &second).await;
    assert_eq!((r.found, r.uploaded), (40, 20), "{:?}", r.summary);
    assert_eq!(env.speech.talks().len(), 40);
    let s = second.stats();
    assert_eq!(
        (s.rate_limited, env.portal.stats().rate_limited),
        (0, 0),
        "{s:?}"
    );
    assert_eq!((s.portal_downloads, s.uncounted_portal_downloads), (20, 0));
    assert_eq!(r.download_accounting, Some(DownloadAccounting::Counted));
}

//! The environment every fault test runs in: the two emulators, the clients, and [`Env::check`] — the
//! delivery guarantee.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24sense_bitrix24::{
    AccessToken, Bitrix24Client, BoxFuture, ClientConfig, Credentials, TokenSource, WebhookUrl,
};
use b24sense_core::{Call, CallFilter, FailReason, LedgerState};
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::retry::Backoff;
use b24sense_engine::{run_export, ExportConfig, Summary};
use b24sense_speechsense::{
    ClientConfig as SsConfig, Credentials as SsCredentials, SearchScope, SpeechSenseClient,
};
use b24sense_store::Store;
use chrono::FixedOffset;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::support::{collector, Ran};

pub(crate) const PORTAL: &str = "emulated.bitrix24.test";
pub(crate) const TOKEN_A: &str = "oauth-token-a";
pub(crate) const TOKEN_B: &str = "oauth-token-b";

/// A small portal with light recordings (≤ 256 KiB: each fits the HTTP/2 windows in one go).
pub(crate) fn small_portal(calls: usize) -> PortalConfig {
    PortalConfig {
        calls,
        seed: 11,
        disk_only_share: 0.2,
        access_tokens: vec![TOKEN_A.into(), TOKEN_B.into()],
        ..PortalConfig::default()
    }
}

/// A portal whose qualifying calls (≥ 150 s, see [`long_calls`]) have 3 MB MP3 recordings (the generator's
/// ~20 kB/s, capped at 3 MiB): larger than the HTTP/2 windows (~1.5 MiB in flight), so a refusal or a reset
/// arrives before the upload is fully sent — provably nothing stored.
pub(crate) fn big_portal(calls: usize) -> PortalConfig {
    PortalConfig {
        wav_share: 0.0,
        recording_bytes_per_second: 20_000,
        max_recording_bytes: Some(3 * 1024 * 1024),
        ..small_portal(calls)
    }
}

pub(crate) fn long_calls() -> CallFilter {
    CallFilter {
        min_duration: 150,
        ..CallFilter::default()
    }
}

/// Fast retries: the faults are short, and each test stays well under 20 s.
pub(crate) fn fast_client() -> ClientConfig {
    ClientConfig {
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(800),
        request_timeout: Duration::from_secs(15),
        ..ClientConfig::default()
    }
}

/// OAuth tokens as an installed application holds them: `refresh` moves on to the next token.
pub(crate) struct Tokens {
    pub(crate) current: Mutex<String>,
    pub(crate) next: String,
    pub(crate) endpoint: url::Url,
    pub(crate) refreshes: AtomicU32,
}

impl Tokens {
    fn token(&self) -> AccessToken {
        AccessToken {
            token: SecretString::from(self.current.lock().unwrap().clone()),
            client_endpoint: self.endpoint.clone(),
        }
    }
}

impl TokenSource for Tokens {
    fn access_token(&self) -> BoxFuture<'_, Result<AccessToken, b24sense_bitrix24::Error>> {
        Box::pin(async move { Ok(self.token()) })
    }

    fn refresh(
        &self,
        _stale: &AccessToken,
    ) -> BoxFuture<'_, Result<AccessToken, b24sense_bitrix24::Error>> {
        Box::pin(async move {
            self.refreshes.fetch_add(1, Ordering::Relaxed);
            *self.current.lock().unwrap() = self.next.clone();
            Ok(self.token())
        })
    }
}

pub(crate) struct Env {
    pub(crate) portal: Bitrix24Emulator,
    pub(crate) speech: SpeechSenseEmulator,
    pub(crate) bitrix: Bitrix24Client,
    pub(crate) connection_id: String,
    pub(crate) api_key: String,
    pub(crate) filter: CallFilter,
    /// The case of a table-driven test, named in the assertions' messages ("" for a test of its own).
    pub(crate) case: &'static str,
}

impl Env {
    pub(crate) async fn start(portal: PortalConfig, filter: CallFilter) -> Env {
        Self::start_with(portal, filter, SpeechSenseConfig::default()).await
    }

    pub(crate) async fn start_with(
        portal: PortalConfig,
        filter: CallFilter,
        ss: SpeechSenseConfig,
    ) -> Env {
        let portal = Bitrix24Emulator::start(portal).await.unwrap();
        let webhook = WebhookUrl::parse(&portal.webhook_url()).unwrap();
        let bitrix = Bitrix24Client::new(Credentials::Webhook(webhook), fast_client()).unwrap();
        Self::with_client(portal, bitrix, filter, ss).await
    }

    pub(crate) async fn with_client(
        portal: Bitrix24Emulator,
        bitrix: Bitrix24Client,
        filter: CallFilter,
        ss_config: SpeechSenseConfig,
    ) -> Env {
        let connection_id = ss_config.connections[0].id.clone();
        let api_key = ss_config.api_keys[0].clone();
        let speech = SpeechSenseEmulator::start(ss_config).await.unwrap();
        Env {
            portal,
            speech,
            bitrix,
            connection_id,
            api_key,
            filter,
            case: "",
        }
    }

    /// The SpeechSense side; with a search scope, in-doubt uploads are resolved by `Search`.
    pub(crate) fn sink(&self, search: bool) -> Arc<SpeechSenseSink> {
        let client = SpeechSenseClient::new(SsConfig::new(
            self.speech.endpoint(),
            SsCredentials::ApiKey(SecretString::from(self.api_key.clone())),
        ))
        .unwrap();
        let scope = search.then(|| SearchScope {
            organization_id: "org-1".into(),
            space_id: "space-1".into(),
            project_id: "project-1".into(),
            connection_id: self.connection_id.clone(),
        });
        Arc::new(SpeechSenseSink::new(client, scope))
    }

    pub(crate) fn config(&self) -> ExportConfig {
        let mut c = ExportConfig::new(PORTAL, self.connection_id.clone());
        c.filter = self.filter.clone();
        c.concurrency = b24sense_engine::Concurrency::Pinned(4);
        c.backoff = Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(400),
        };
        c
    }

    pub(crate) async fn export(&self, store: &Store, search: bool) -> Ran {
        let source = Arc::new(Bitrix24Source::new(self.bitrix.clone()));
        let (progress, calls) = collector();
        let run = run_export(
            source,
            self.sink(search),
            store.clone(),
            self.config(),
            progress,
            CancellationToken::new(),
        );
        let summary = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the export finishes")
            .expect("the export is not stopped");
        Ran::new(summary, &calls)
    }

    /// The calls the filter selects, as the engine parses them.
    pub(crate) fn listed(&self) -> Vec<Call> {
        let msk = FixedOffset::east_opt(3 * 3600).unwrap();
        self.portal
            .call_rows()
            .iter()
            .map(|r| Call::from_bitrix(r, msk).unwrap())
            .filter(|c| self.filter.matches(c))
            .collect()
    }

    /// Listed calls with a recording.
    pub(crate) fn qualifying(&self) -> BTreeSet<u64> {
        self.listed()
            .into_iter()
            .filter(Call::has_recording)
            .map(|c| c.id)
            .collect()
    }

    /// Talks per call ID.
    pub(crate) fn talks_by_call(&self) -> BTreeMap<u64, Vec<String>> {
        let mut m: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for t in self.speech.talks() {
            m.entry(t.fields["id"].parse().unwrap())
                .or_default()
                .push(t.id.clone());
        }
        m
    }

    pub(crate) fn injected(&self, kind: &str) -> u64 {
        self.portal
            .stats()
            .faults_injected
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// The delivery guarantee. `failed`: calls expected to fail, with their reason. `duplicates`: calls allowed
    /// (and required) to have exactly two talks — a *reported* re-upload. Returns the number of uploaded calls.
    pub(crate) async fn check(
        &self,
        store: &Store,
        failed: &BTreeMap<u64, FailReason>,
        duplicates: &BTreeSet<u64>,
    ) -> usize {
        let at = self.at();
        let qualifying = self.qualifying();
        let talks = self.talks_by_call();
        let mut ledger_talks = BTreeSet::new();
        let mut uploaded = 0;
        for call in self.listed() {
            let id = call.id;
            let e = store
                .entry(PORTAL, id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{at}call {id} is missing from the ledger"));
            assert!(
                matches!(
                    e.state,
                    LedgerState::Uploaded | LedgerState::Skipped | LedgerState::Failed
                ),
                "{at}call {id} left in {:?}",
                e.state
            );
            if !qualifying.contains(&id) {
                assert_eq!(
                    e.state,
                    LedgerState::Skipped,
                    "{at}call {id} has no recording"
                );
                assert!(!talks.contains_key(&id), "{at}call {id} has no talk");
                continue;
            }
            if let Some(reason) = failed.get(&id) {
                assert_eq!(e.state, LedgerState::Failed, "{at}call {id}: {e:?}");
                assert_eq!(e.reason.as_deref(), Some(reason.as_str()), "{at}call {id}");
                assert!(!talks.contains_key(&id), "{at}failed call {id} has no talk");
                continue;
            }
            assert_eq!(e.state, LedgerState::Uploaded, "{at}call {id}: {e:?}");
            let talk_id = e.talk_id.clone().expect("an uploaded call has a talk ID");
            let mine = talks.get(&id).cloned().unwrap_or_default();
            let want = if duplicates.contains(&id) { 2 } else { 1 };
            assert_eq!(mine.len(), want, "{at}call {id}: talks {mine:?}");
            assert!(
                mine.contains(&talk_id),
                "{at}call {id}: ledger talk {talk_id}"
            );
            if duplicates.contains(&id) {
                assert!(
                    e.reuploaded_after_crash,
                    "{at}the duplicate of call {id} is reported"
                );
            }
            ledger_talks.insert(talk_id);
            uploaded += 1;
        }
        // Nothing uploaded for calls that were not asked for; the ledger names every talk except reported dups.
        let all: BTreeSet<String> = self.speech.talks().into_iter().map(|t| t.id).collect();
        let unreported: BTreeSet<&String> = all.difference(&ledger_talks).collect();
        assert_eq!(
            unreported.len(),
            duplicates.len(),
            "{at}talks outside the ledger: {unreported:?}"
        );
        for t in self.speech.talks() {
            let id: u64 = t.fields["id"].parse().unwrap();
            assert!(qualifying.contains(&id), "{at}talk for unlisted call {id}");
            let rec = self.portal.recording(id).unwrap();
            assert_eq!(
                t.audio_sha256, rec.sha256,
                "{at}call {id}: whole recording, unchanged"
            );
        }
        uploaded
    }

    /// The common case: every qualifying call uploaded exactly once, nothing failed, nothing reported re-uploaded.
    pub(crate) async fn check_all_once(&self, store: &Store, s: &Summary) {
        let at = self.at();
        assert!(s.failed.is_empty(), "{at}{:?}", s.failed);
        assert_eq!(s.reuploaded_after_crash, 0, "{at}{s:?}");
        let n = self.check(store, &BTreeMap::new(), &BTreeSet::new()).await;
        assert_eq!(n, self.qualifying().len(), "{at}uploaded calls");
        assert_eq!(s.uploaded as usize, n, "{at}summary's uploaded");
        assert!(n >= 5, "{at}the test needs some calls: {n}");
    }

    /// The prefix that names this case in an assertion's message.
    pub(crate) fn at(&self) -> String {
        if self.case.is_empty() {
            String::new()
        } else {
            format!("[{}] ", self.case)
        }
    }
}

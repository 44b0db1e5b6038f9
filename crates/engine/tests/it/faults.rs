//! Fault injection end to end: the real Bitrix24 and SpeechSense clients, the engine and a ledger, against the two
//! emulators with one fault each (and all at once). Every test checks the delivery guarantee the same way
//! ([`Env::check`]): each qualifying call is in SpeechSense exactly once or failed with the expected reason, every
//! listed call has a final ledger entry, and the ledger's talk IDs are the emulator's talks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24sense_bitrix24::{
    AccessToken, Bitrix24Client, BoxFuture, ClientConfig, Credentials, RatePlan, TokenSource,
    WebhookUrl,
};
use b24sense_core::{Call, CallFilter, FailReason, LedgerState};
use b24sense_emulators::bitrix24::{fault_kind, Bitrix24Emulator, FaultConfig, PortalConfig};
use b24sense_emulators::speechsense::{Code, SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::report::no_progress;
use b24sense_engine::retry::Backoff;
use b24sense_engine::{run_export, ExportConfig, Summary};
use b24sense_speechsense::{
    ClientConfig as SsConfig, Credentials as SsCredentials, SearchScope, SpeechSenseClient,
};
use b24sense_store::Store;
use chrono::FixedOffset;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::support::{collector, postgres_store, test_store, Ran};

const PORTAL: &str = "emulated.bitrix24.test";
const TOKEN_A: &str = "oauth-token-a";
const TOKEN_B: &str = "oauth-token-b";

/// A small portal with light recordings (≤ 256 KiB: each fits the HTTP/2 windows in one go).
fn small_portal(calls: usize) -> PortalConfig {
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
fn big_portal(calls: usize) -> PortalConfig {
    PortalConfig {
        wav_share: 0.0,
        recording_bytes_per_second: 20_000,
        max_recording_bytes: Some(3 * 1024 * 1024),
        ..small_portal(calls)
    }
}

fn long_calls() -> CallFilter {
    CallFilter {
        min_duration: 150,
        ..CallFilter::default()
    }
}

/// Fast retries: the faults are short, and each test stays well under 20 s.
fn fast_client() -> ClientConfig {
    ClientConfig {
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(800),
        request_timeout: Duration::from_secs(15),
        ..ClientConfig::default()
    }
}

/// OAuth tokens as an installed application holds them: `refresh` moves on to the next token.
struct Tokens {
    current: Mutex<String>,
    next: String,
    endpoint: url::Url,
    refreshes: AtomicU32,
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

struct Env {
    portal: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    bitrix: Bitrix24Client,
    connection_id: String,
    api_key: String,
    filter: CallFilter,
    /// The case of a table-driven test, named in the assertions' messages ("" for a test of its own).
    case: &'static str,
}

impl Env {
    async fn start(portal: PortalConfig, filter: CallFilter) -> Env {
        Self::start_with(portal, filter, SpeechSenseConfig::default()).await
    }

    async fn start_with(portal: PortalConfig, filter: CallFilter, ss: SpeechSenseConfig) -> Env {
        let portal = Bitrix24Emulator::start(portal).await.unwrap();
        let webhook = WebhookUrl::parse(&portal.webhook_url()).unwrap();
        let bitrix = Bitrix24Client::new(Credentials::Webhook(webhook), fast_client()).unwrap();
        Self::with_client(portal, bitrix, filter, ss).await
    }

    async fn with_client(
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
    fn sink(&self, search: bool) -> Arc<SpeechSenseSink> {
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

    fn config(&self) -> ExportConfig {
        let mut c = ExportConfig::new(PORTAL, self.connection_id.clone());
        c.filter = self.filter.clone();
        c.concurrency = b24sense_engine::Concurrency::Pinned(4);
        c.backoff = Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(400),
        };
        c
    }

    async fn export(&self, store: &Store, search: bool) -> Ran {
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
    fn listed(&self) -> Vec<Call> {
        let msk = FixedOffset::east_opt(3 * 3600).unwrap();
        self.portal
            .call_rows()
            .iter()
            .map(|r| Call::from_bitrix(r, msk).unwrap())
            .filter(|c| self.filter.matches(c))
            .collect()
    }

    /// Listed calls with a recording.
    fn qualifying(&self) -> BTreeSet<u64> {
        self.listed()
            .into_iter()
            .filter(Call::has_recording)
            .map(|c| c.id)
            .collect()
    }

    /// Talks per call ID.
    fn talks_by_call(&self) -> BTreeMap<u64, Vec<String>> {
        let mut m: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for t in self.speech.talks() {
            m.entry(t.fields["id"].parse().unwrap())
                .or_default()
                .push(t.id.clone());
        }
        m
    }

    fn injected(&self, kind: &str) -> u64 {
        self.portal
            .stats()
            .faults_injected
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// The delivery guarantee. `failed`: calls expected to fail, with their reason. `duplicates`: calls allowed
    /// (and required) to have exactly two talks — a *reported* re-upload. Returns the number of uploaded calls.
    async fn check(
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
    async fn check_all_once(&self, store: &Store, s: &Summary) {
        let at = self.at();
        assert!(s.failed.is_empty(), "{at}{:?}", s.failed);
        assert_eq!(s.reuploaded_after_crash, 0, "{at}{s:?}");
        let n = self.check(store, &BTreeMap::new(), &BTreeSet::new()).await;
        assert_eq!(n, self.qualifying().len(), "{at}uploaded calls");
        assert_eq!(s.uploaded as usize, n, "{at}summary's uploaded");
        assert!(n >= 5, "{at}the test needs some calls: {n}");
    }

    /// The prefix that names this case in an assertion's message.
    fn at(&self) -> String {
        if self.case.is_empty() {
            String::new()
        } else {
            format!("[{}] ", self.case)
        }
    }
}

// ------------------------------------------------------------------------------------------------ one fault each

/// One fault that a run rides out: every qualifying call still uploaded exactly once ([`Env::check_all_once`]),
/// then `fired` checks that the fault really happened.
struct Fault {
    label: &'static str,
    portal: PortalConfig,
    filter: CallFilter,
    /// Resolve in-doubt uploads by a SpeechSense search.
    search: bool,
    inject: Inject,
    fired: fn(&Env, &str),
}

/// Where the fault is injected, right before the export (a time window starts then).
enum Inject {
    Portal(FaultConfig),
    SpeechSense(fn(&SpeechSenseEmulator)),
}

impl Fault {
    /// A fault of the portal's, on a small portal and every call.
    fn portal(
        label: &'static str,
        calls: usize,
        faults: FaultConfig,
        fired: fn(&Env, &str),
    ) -> Fault {
        Fault {
            label,
            portal: small_portal(calls),
            filter: CallFilter::default(),
            search: false,
            inject: Inject::Portal(faults),
            fired,
        }
    }

    async fn ride_out(self) {
        let mut env = Env::start(self.portal, self.filter).await;
        env.case = self.label;
        let (store, _dir) = test_store().await;
        match self.inject {
            Inject::Portal(faults) => env.portal.set_faults(faults),
            Inject::SpeechSense(inject) => inject(&env.speech),
        }
        let s = env.export(&store, self.search).await;
        env.check_all_once(&store, &s).await;
        (self.fired)(&env, self.label);
    }
}

/// Rides out each fault in turn, in an environment of its own. In turn, not together: the runs are busy, not
/// waiting (together they took longer), and the test binary's other tests run alongside.
async fn ride_out_each(faults: Vec<Fault>) {
    for fault in faults {
        fault.ride_out().await;
    }
}

#[tokio::test]
async fn bitrix24_faults_one_at_a_time() {
    let none = FaultConfig::none;
    ride_out_each(vec![
        Fault::portal(
            "query limit storm by count",
            40,
            none().with_query_limit_next(3),
            |env, case| {
                assert_eq!(env.injected(fault_kind::QUERY_LIMIT), 3, "{case}");
                assert!(env.bitrix.stats().rate_limited >= 3, "{case}");
            },
        ),
        Fault::portal(
            "query limit storm for a time window",
            40,
            none().with_query_limit_for(Duration::from_millis(700)),
            |env, case| assert!(env.injected(fault_kind::QUERY_LIMIT) >= 1, "{case}"),
        ),
        Fault::portal(
            "OPERATION_TIME_LIMIT on batch",
            40,
            none().with_operation_time_limit("batch", 2),
            |env, case| assert_eq!(env.injected(fault_kind::OPERATION_TIME_LIMIT), 2, "{case}"),
        ),
        Fault::portal(
            "internal server errors",
            40,
            none().with_internal_error_next(3),
            |env, case| assert_eq!(env.injected(fault_kind::INTERNAL_ERROR), 3, "{case}"),
        ),
        // Some on REST calls, and every 7th request of any kind (downloads included).
        Fault::portal(
            "HTML 502 pages",
            40,
            none().with_html_502_next(2).with_html_502_every(7),
            |env, case| assert!(env.injected(fault_kind::HTML_502) >= 4, "{case}"),
        ),
        Fault::portal(
            "an expired-token fault does not touch a webhook",
            30,
            none().with_expire_token_at(1),
            |env, case| assert_eq!(env.injected(fault_kind::EXPIRED_TOKEN), 0, "{case}"),
        ),
        Fault::portal(
            "connection resets",
            40,
            none().with_reset_connection_next(4),
            |env, case| assert_eq!(env.injected(fault_kind::RESET_CONNECTION), 4, "{case}"),
        ),
        Fault::portal(
            "REST answers cut mid-body",
            40,
            none().with_cut_rest_next(3),
            |env, case| assert_eq!(env.injected(fault_kind::CUT_REST), 3, "{case}"),
        ),
        // `check_all_once` also asserts each talk's audio is the whole recording: no truncated talk was stored.
        Fault::portal(
            "recording downloads cut mid-body",
            40,
            none().with_cut_download_next(4),
            |env, case| {
                assert_eq!(env.injected(fault_kind::CUT_DOWNLOAD), 4, "{case}");
                assert!(
                    env.speech.stats().streams_aborted >= 1,
                    "{case}: a broken download aborts its upload"
                );
            },
        ),
        Fault::portal(
            "slow recording downloads",
            30,
            none().with_slow_download(Duration::from_millis(25)),
            |_, _| {},
        ),
        Fault::portal(
            "malformed JSON answers",
            40,
            none().with_malformed_json_next(3),
            |env, case| assert_eq!(env.injected(fault_kind::MALFORMED_JSON), 3, "{case}"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn speechsense_faults_one_at_a_time() {
    ride_out_each(vec![
        // Refused before the stream was accepted: provably nothing stored, retried without the in-doubt step.
        Fault {
            label: "UNAVAILABLE",
            portal: big_portal(40),
            filter: long_calls(),
            search: false,
            inject: Inject::SpeechSense(|ss| ss.inject(Code::Unavailable, 3)),
            fired: |env, case| {
                assert_eq!(env.speech.stats().rejected(Code::Unavailable), 3, "{case}")
            },
        },
        Fault {
            label: "RESOURCE_EXHAUSTED",
            portal: small_portal(40),
            filter: CallFilter::default(),
            search: false,
            inject: Inject::SpeechSense(|ss| ss.inject(Code::ResourceExhausted, 3)),
            fired: |env, case| {
                let rejected = env.speech.stats().rejected(Code::ResourceExhausted);
                assert_eq!(rejected, 3, "{case}")
            },
        },
        Fault {
            label: "stream reset mid-upload",
            portal: big_portal(40),
            filter: long_calls(),
            search: false,
            inject: Inject::SpeechSense(|ss| ss.inject_reset_after(512 * 1024, 3)),
            fired: |env, case| assert_eq!(env.speech.stats().streams_reset, 3, "{case}"),
        },
        Fault {
            label: "DEADLINE_EXCEEDED after the store, with search: no duplicate",
            portal: small_portal(40),
            filter: CallFilter::default(),
            search: true,
            inject: Inject::SpeechSense(|ss| ss.inject_after_store(Code::DeadlineExceeded, 2)),
            fired: |env, case| {
                let n = env.qualifying().len();
                assert_eq!(env.speech.talk_count(), n, "{case}: zero duplicates");
                assert!(
                    env.speech.stats().searches >= 2,
                    "{case}: the in-doubt uploads were looked up"
                );
            },
        },
    ])
    .await;
}

// ------------------------------------------------------------------------------------------------ Bitrix24

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

// ------------------------------------------------------------------------------------------------ SpeechSense

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

// ------------------------------------------------------------------------------------------------ all at once

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

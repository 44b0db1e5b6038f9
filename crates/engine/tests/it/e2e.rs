//! End to end over real sockets: the real Bitrix24 and SpeechSense clients, the engine and a ledger, against the
//! two emulators.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use b24sense_bitrix24::{Bitrix24Client, ClientConfig, Credentials, WebhookUrl};
use b24sense_core::{Call, CallFilter, CallType, Container, LedgerState, TimeBound};
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::{run_export, EngineError, ExportConfig};
use b24sense_speechsense::{
    ClientConfig as SsConfig, Credentials as SsCredentials, SpeechSenseClient,
};
use b24sense_store::Store;
use chrono::FixedOffset;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::support::{collector, postgres_store, test_store, Ran};

pub(crate) struct Env {
    portal: Bitrix24Emulator,
    pub(crate) speech: SpeechSenseEmulator,
    bitrix: Bitrix24Client,
    connection_id: String,
    pub(crate) api_key: String,
}

impl Env {
    async fn start(calls: usize) -> Env {
        Env::start_with(calls, SpeechSenseConfig::default()).await
    }

    /// A portal of `calls` calls, and SpeechSense as `ss_config` sets it up (its first connection is the target).
    pub(crate) async fn start_with(calls: usize, ss_config: SpeechSenseConfig) -> Env {
        let portal = Bitrix24Emulator::start(PortalConfig {
            calls,
            seed: 7,
            ..PortalConfig::default()
        })
        .await
        .unwrap();
        let connection_id = ss_config.connections[0].id.clone();
        let api_key = ss_config.api_keys[0].clone();
        let speech = SpeechSenseEmulator::start(ss_config).await.unwrap();
        let webhook = WebhookUrl::parse(&portal.webhook_url()).unwrap();
        let bitrix =
            Bitrix24Client::new(Credentials::Webhook(webhook), ClientConfig::default()).unwrap();
        Env {
            portal,
            speech,
            bitrix,
            connection_id,
            api_key,
        }
    }

    fn sink(&self, key: &str) -> Arc<SpeechSenseSink> {
        let client = SpeechSenseClient::new(SsConfig::new(
            self.speech.endpoint(),
            SsCredentials::ApiKey(SecretString::from(key.to_string())),
        ))
        .unwrap();
        Arc::new(SpeechSenseSink::new(client, None))
    }

    pub(crate) fn config(&self, filter: CallFilter) -> ExportConfig {
        let mut c = ExportConfig::new("emulated.bitrix24.test", self.connection_id.clone());
        c.filter = filter;
        c
    }

    pub(crate) async fn export(
        &self,
        store: &Store,
        config: ExportConfig,
        key: &str,
    ) -> Result<Ran, EngineError> {
        let source = Arc::new(Bitrix24Source::new(self.bitrix.clone()));
        let (progress, calls) = collector();
        let summary = run_export(
            source,
            self.sink(key),
            store.clone(),
            config,
            progress,
            CancellationToken::new(),
        )
        .await?;
        Ok(Ran::new(summary, &calls))
    }

    /// [`Env::export`] with the caller's progress callback and shutdown, answering what the engine answered.
    pub(crate) async fn export_with(
        &self,
        store: &Store,
        config: ExportConfig,
        progress: b24sense_engine::ProgressFn,
        shutdown: CancellationToken,
    ) -> Result<b24sense_engine::Summary, EngineError> {
        let source = Arc::new(Bitrix24Source::new(self.bitrix.clone()));
        let sink = self.sink(&self.api_key);
        run_export(source, sink, store.clone(), config, progress, shutdown).await
    }

    /// The portal's calls as the engine parses them.
    fn calls(&self) -> Vec<Call> {
        let msk = FixedOffset::east_opt(3 * 3600).unwrap();
        self.portal
            .call_rows()
            .iter()
            .map(|r| Call::from_bitrix(r, msk).unwrap())
            .collect()
    }

    /// Call IDs that the filter selects and that have a recording.
    pub(crate) fn expected(&self, filter: &CallFilter) -> BTreeSet<u64> {
        self.calls()
            .into_iter()
            .filter(|c| filter.matches(c) && c.has_recording())
            .map(|c| c.id)
            .collect()
    }

    pub(crate) fn uploaded_ids(&self) -> BTreeSet<u64> {
        self.speech
            .talks()
            .iter()
            .map(|t| t.fields["id"].parse::<u64>().unwrap())
            .collect()
    }
}

#[tokio::test]
async fn full_export_is_exact_and_idempotent() {
    let env = Env::start(200).await;
    let (store, _dir) = test_store().await;
    let s = env
        .export(&store, env.config(CallFilter::default()), &env.api_key)
        .await
        .unwrap();

    let expected = env.expected(&CallFilter::default());
    assert_eq!(s.found, 200);
    assert_eq!(s.uploaded as usize, expected.len(), "summary: {s:?}");
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    let talks = env.speech.talks();
    assert_eq!(
        talks.len(),
        expected.len(),
        "one talk per recorded call, no duplicates"
    );
    assert_eq!(env.uploaded_ids(), expected);

    // Audio bytes arrive unchanged and the container is read from the bytes.
    for t in &talks {
        let id: u64 = t.fields["id"].parse().unwrap();
        let rec = env.portal.recording(id).expect("recording info");
        assert_eq!(t.audio_sha256, rec.sha256, "call {id}");
        assert_eq!(t.audio_bytes, rec.bytes, "call {id}");
        let expected = match rec.container.as_str() {
            "mp3" => Container::Mp3,
            "wav" => Container::Wav,
            other => panic!("unexpected container {other}"),
        };
        assert_eq!(
            t.container,
            Some(expected),
            "call {id}: container read from the bytes"
        );
    }
    assert_eq!(
        env.portal.stats().rate_limited,
        0,
        "no rate-limit rejections on the normal path"
    );

    // A second run uploads nothing.
    let again = env
        .export(&store, env.config(CallFilter::default()), &env.api_key)
        .await
        .unwrap();
    assert_eq!(again.uploaded, 0);
    assert_eq!(
        again.skipped.get("already_uploaded").copied(),
        Some(expected.len() as u64)
    );
    assert_eq!(env.speech.talks().len(), expected.len());
}

#[tokio::test]
async fn incremental_passes_take_up_what_was_left_and_list_only_new_calls() {
    let env = Env::start(120).await;
    let (store, _dir) = test_store().await;
    let portal = "emulated.bitrix24.test";
    // The client reads calls again by ID: 50 per command, one batch; IDs the portal does not have are absent.
    let ids: Vec<u64> = (1..=120).chain([9_999]).collect();
    let before = env.portal.stats();
    let again = env.bitrix.calls_by_id(&ids).await.unwrap();
    let after = env.portal.stats();
    assert_eq!(again.calls.len(), 120);
    assert!(again.calls.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(
        after.by_method["batch"] - before.by_method.get("batch").copied().unwrap_or(0),
        1
    );
    assert_eq!(
        after.by_method["voximplant.statistic.get"]
            - before
                .by_method
                .get("voximplant.statistic.get")
                .copied()
                .unwrap_or(0),
        3,
        "121 IDs in 3 commands"
    );

    // Calls 61–120 have not happened yet; a full pass exports the first 60.
    env.portal.hide_calls_after(60);
    let first = env
        .export(&store, env.config(CallFilter::default()), &env.api_key)
        .await
        .unwrap();
    assert_eq!(first.found, 60);
    // A run stopped mid-way leaves calls `pending` (here: three calls without a recording handed back).
    let skipped = store
        .entries(portal, &[LedgerState::Skipped], 3)
        .await
        .unwrap();
    assert_eq!(skipped.len(), 3);
    for e in &skipped {
        let claim = store
            .claim(
                portal,
                e.call_id,
                "old-run",
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(store.release(&claim).await.unwrap());
    }

    // The incremental pass takes those three up (read again by ID) and lists only the calls after the mark.
    env.portal.reveal_calls_up_to(120);
    let mut config = env.config(CallFilter::default());
    config.incremental = true;
    let listing_before = env.portal.stats().by_method["voximplant.statistic.get"];
    let second = env
        .export(&store, config.clone(), &env.api_key)
        .await
        .unwrap();
    assert_eq!(second.found, 3 + 60, "{:?}", second.summary);
    let reported: BTreeSet<u64> = second.calls.iter().map(|c| c.call_id).collect();
    let expected: BTreeSet<u64> = skipped.iter().map(|e| e.call_id).chain(61..=120).collect();
    assert_eq!(reported, expected, "no uploaded call was listed again");
    assert_eq!(
        env.portal.stats().by_method["voximplant.statistic.get"] - listing_before,
        1 + 50,
        "one command reads the three again; one listing request (50 chained keyset pages) finds the 60 new calls"
    );
    for e in &skipped {
        assert_eq!(
            store.entry(portal, e.call_id).await.unwrap().unwrap().state,
            LedgerState::Skipped
        );
    }
    assert_eq!(env.uploaded_ids(), env.expected(&CallFilter::default()));
    assert_eq!(
        env.speech.talks().len(),
        env.uploaded_ids().len(),
        "no duplicates"
    );

    // Nothing new, nothing left: the next pass lists nothing and uploads nothing.
    let third = env.export(&store, config, &env.api_key).await.unwrap();
    assert_eq!((third.found, third.uploaded), (0, 0));
}

#[tokio::test]
async fn mapping_field_by_field() {
    let env = Env::start(60).await;
    let (store, _dir) = test_store().await;
    env.export(&store, env.config(CallFilter::default()), &env.api_key)
        .await
        .unwrap();
    let rows: BTreeMap<u64, serde_json::Value> = env
        .portal
        .call_rows()
        .into_iter()
        .map(|r| (r["ID"].as_str().unwrap().parse().unwrap(), r))
        .collect();
    let talks = env.speech.talks();
    assert!(!talks.is_empty());
    for t in talks {
        let f = &t.fields;
        let id: u64 = f["id"].parse().unwrap();
        let row = &rows[&id];
        let text = |k: &str| match &row[k] {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(f["operator_id"], text("PORTAL_USER_ID"));
        match text("PORTAL_USER_ID").parse::<u64>() {
            Ok(uid) => {
                let (first, last) = env.portal.user_name(uid).unwrap();
                assert_eq!(f["operator_name"], format!("{first} {last}").trim());
            }
            Err(_) => assert_eq!(f["operator_name"], "", "call {id} has no operator"),
        }
        let crm_type = text("CRM_ENTITY_TYPE");
        if crm_type.is_empty() {
            assert_eq!(f["client_id"], text("PHONE_NUMBER"));
            assert_eq!(f["client_name"], text("PHONE_NUMBER"));
        } else {
            let crm_id: u64 = text("CRM_ENTITY_ID").parse().unwrap();
            assert_eq!(f["client_id"], format!("{crm_type}_{crm_id}"));
            let title = env.portal.crm_title(&crm_type, crm_id).unwrap();
            assert_eq!(f["client_name"], title, "call {id}");
        }
        assert_eq!(
            f["date"],
            chrono::DateTime::parse_from_rfc3339(&text("CALL_START_DATE"))
                .unwrap()
                .to_rfc3339()
        );
        let outgoing = matches!(text("CALL_TYPE").as_str(), "1" | "4");
        assert_eq!(f["direction_outgoing"], outgoing.to_string());
        assert_eq!(f["language"], "ru-RU");
        for key in [
            "PORTAL_NUMBER",
            "PHONE_NUMBER",
            "CALL_ID",
            "CALL_DURATION",
            "COST",
            "CALL_FAILED_CODE",
            "CALL_TYPE",
        ] {
            assert_eq!(f[&key.to_lowercase()], text(key), "call {id} key {key}");
        }
        assert_eq!(f["record_file_id"], text("RECORD_FILE_ID"));
        assert_eq!(f.len(), 35);
    }
}

#[tokio::test]
async fn each_filter_alone_and_combined() {
    let env = Env::start(240).await;
    let calls = env.calls();
    let mid = calls[calls.len() / 2].call_start_date;
    let some_user = calls.iter().find_map(|c| c.portal_user_id).unwrap();
    let filters = [
        (
            "since",
            CallFilter {
                since: Some(TimeBound::Instant(mid)),
                ..Default::default()
            },
        ),
        (
            "since-date",
            CallFilter {
                since: Some(TimeBound::Date(mid.date_naive())),
                ..Default::default()
            },
        ),
        (
            "until",
            CallFilter {
                until: Some(TimeBound::Instant(mid)),
                ..Default::default()
            },
        ),
        (
            "users",
            CallFilter {
                users: vec![some_user],
                ..Default::default()
            },
        ),
        (
            "min-duration",
            CallFilter {
                min_duration: 120,
                ..Default::default()
            },
        ),
        (
            "direction",
            CallFilter {
                call_types: vec![CallType::Outgoing, CallType::Callback],
                ..Default::default()
            },
        ),
        (
            "combined",
            CallFilter {
                since: Some(TimeBound::Date(calls[10].call_start_date.date_naive())),
                users: vec![some_user, some_user + 1],
                min_duration: 30,
                call_types: vec![CallType::Incoming],
                ..Default::default()
            },
        ),
    ];
    for (name, filter) in filters {
        let (store, _dir) = test_store().await;
        let before = env.uploaded_ids();
        let s = env
            .export(&store, env.config(filter.clone()), &env.api_key)
            .await
            .unwrap();
        let expected = env.expected(&filter);
        let listed = calls.iter().filter(|c| filter.matches(c)).count() as u64;
        assert_eq!(s.found, listed, "{name}: the portal applied the filter");
        assert!(
            listed < 240,
            "{name}: the filter must select a strict subset"
        );
        let newly: BTreeSet<u64> = env.uploaded_ids().difference(&before).copied().collect();
        let uploaded_now: BTreeSet<u64> = s
            .calls
            .iter()
            .filter(|c| c.outcome.reason().is_none())
            .map(|c| c.call_id)
            .collect();
        assert_eq!(uploaded_now, expected, "{name}");
        assert!(newly.is_subset(&expected), "{name}");
    }
}

#[tokio::test]
async fn wrong_key_and_wrong_connection_stop_with_a_clear_error() {
    let env = Env::start(20).await;
    let (store, _dir) = test_store().await;
    let err = env
        .export(&store, env.config(CallFilter::default()), "not-the-key")
        .await
        .unwrap_err();
    let EngineError::Stopped { reason, summary } = err else {
        panic!("expected Stopped")
    };
    assert!(reason.to_lowercase().contains("key"), "{reason}");
    assert_eq!(summary.uploaded, 0);
    assert!(!reason.contains("not-the-key"), "the key is never echoed");

    let mut c = env.config(CallFilter::default());
    c.connection_id = "no-such-connection".into();
    let err = env.export(&store, c, &env.api_key).await.unwrap_err();
    let EngineError::Stopped { reason, .. } = err else {
        panic!("expected Stopped")
    };
    assert!(reason.to_lowercase().contains("connection"), "{reason}");
    assert_eq!(env.speech.talks().len(), 0);

    // Nothing was lost: the calls are still in the ledger, and a run with the right settings uploads them.
    let s = env
        .export(&store, env.config(CallFilter::default()), &env.api_key)
        .await
        .unwrap();
    assert_eq!(
        s.uploaded as usize,
        env.expected(&CallFilter::default()).len()
    );
}

#[tokio::test]
async fn same_behaviour_on_postgresql() {
    let env = Env::start(80).await;
    let store = postgres_store().await;
    let s = env
        .export(&store, env.config(CallFilter::default()), &env.api_key)
        .await
        .unwrap();
    let expected = env.expected(&CallFilter::default());
    assert_eq!(s.uploaded as usize, expected.len());
    let again = env
        .export(&store, env.config(CallFilter::default()), &env.api_key)
        .await
        .unwrap();
    assert_eq!(again.uploaded, 0);
    assert_eq!(env.uploaded_ids(), expected);
    assert_eq!(env.speech.talks().len(), expected.len());
}

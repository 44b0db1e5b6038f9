//! The chat export end to end over real sockets: the real Bitrix24 and SpeechSense clients against the Bitrix24
//! emulator's Open Lines and the SpeechSense emulator's chat connection, beside a call export on the same client.

use std::collections::BTreeSet;
use std::sync::Arc;

use b24sense_bitrix24::{Bitrix24Client, ClientConfig, Credentials, WebhookUrl};
use b24sense_emulators::bitrix24::{Bitrix24Emulator, OpenLinesConfig, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::chats::adapters::SpeechSenseTextSink;
use b24sense_engine::chats::{run_chat_export, ChatExportConfig, ChatSummary};
use b24sense_engine::{run_export, ExportConfig};
use b24sense_speechsense::{
    ClientConfig as SsConfig, Credentials as SsCredentials, SearchScope, SpeechSenseClient,
};
use b24sense_store::Store;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::support::test_store;

const PORTAL: &str = "emulated.bitrix24.test";
const CHAT: &str = "conn-chat";

struct Env {
    portal: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    source: Arc<Bitrix24Source>,
    client: SpeechSenseClient,
}

impl Env {
    async fn start() -> Env {
        let portal = Bitrix24Emulator::start(PortalConfig {
            seed: 23,
            calls: 12,
            rate: (100_000, 100_000),
            open_lines: OpenLinesConfig {
                sessions: 40,
                ..OpenLinesConfig::default()
            },
            ..PortalConfig::default()
        })
        .await
        .unwrap();
        let config = SpeechSenseConfig::default();
        let key = config.api_keys[0].clone();
        let speech = SpeechSenseEmulator::start(config).await.unwrap();
        let webhook = WebhookUrl::parse(&portal.webhook_url()).unwrap();
        let bitrix =
            Bitrix24Client::new(Credentials::Webhook(webhook), ClientConfig::default()).unwrap();
        let client = SpeechSenseClient::new(SsConfig::new(
            speech.endpoint(),
            SsCredentials::ApiKey(SecretString::from(key)),
        ))
        .unwrap();
        Env {
            portal,
            speech,
            source: Arc::new(Bitrix24Source::new(bitrix)),
            client,
        }
    }

    fn text_sink(&self) -> Arc<SpeechSenseTextSink> {
        let scope = SearchScope {
            organization_id: "org".into(),
            space_id: "space".into(),
            project_id: "project".into(),
            connection_id: String::new(),
        };
        Arc::new(SpeechSenseTextSink::new(self.client.clone(), Some(scope)))
    }

    async fn chats(&self, store: &Store) -> ChatSummary {
        let s = run_chat_export(
            self.source.clone(),
            self.text_sink(),
            store.clone(),
            ChatExportConfig::new(PORTAL, CHAT),
            Arc::new(|_| {}),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(!s.fatal, "{:?}", s.stopped);
        s
    }

    /// (session `id`, `part`) of every chat talk stored.
    fn chat_talks(&self) -> Vec<(String, String)> {
        self.speech
            .talks()
            .into_iter()
            .filter(|t| t.connection_id == CHAT)
            .map(|t| (t.fields["id"].clone(), t.fields["part"].clone()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_go_out_once_beside_calls_and_an_open_one_after_it_closes() {
    let env = Env::start().await;
    let (store, _dir) = test_store().await;
    let oracle = env.portal.chat_sessions();
    let open: Vec<u64> = oracle
        .iter()
        .filter(|s| !s.completed)
        .map(|s| s.session_id)
        .collect();
    let closed = oracle.len() - open.len();
    assert!(
        !open.is_empty() && closed > 10,
        "the catalogue has open and closed sessions"
    );

    // Calls and chats in one run, on one Bitrix24 client (one request bucket) and one ledger.
    let calls = run_export(
        env.source.clone(),
        Arc::new(SpeechSenseSink::new(env.client.clone(), None)),
        store.clone(),
        ExportConfig::new(PORTAL, "conn-two-channel"),
        Arc::new(|_| {}),
        CancellationToken::new(),
    );
    let (calls, first) = tokio::join!(calls, env.chats(&store));
    let calls = calls.unwrap();
    assert!(calls.uploaded > 0, "{calls:?}");
    assert_eq!(first.listed as usize, oracle.len());
    assert_eq!(
        first.waiting.get("session_open").copied(),
        Some(open.len() as u64)
    );
    assert_eq!(first.failed_total(), 0, "{:?}", first.failed);
    let skipped: u64 = first.skipped.values().sum();
    assert_eq!(first.uploaded + skipped, closed as u64);
    for s in oracle.iter().filter(|s| s.unanswered && s.completed) {
        let row = store
            .chat_entry(PORTAL, s.session_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.reason.as_deref(),
            Some("no_client_message"),
            "{}",
            s.session_id
        );
    }
    // Each uploaded session's parts once each; none of an open session.
    let talks = env.chat_talks();
    let distinct: BTreeSet<&(String, String)> = talks.iter().collect();
    assert_eq!(distinct.len(), talks.len(), "no part twice");
    assert_eq!(talks.len() as u64, first.talks);
    let sessions: BTreeSet<&str> = talks.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(sessions.len() as u64, first.uploaded);
    assert!(open
        .iter()
        .all(|id| !sessions.contains(id.to_string().as_str())));
    // The long history went out in parts if it had to, and its row knows every talk.
    for s in oracle.iter().filter(|s| s.long_history && s.completed) {
        let row = store
            .chat_entry(PORTAL, s.session_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.talk_ids.len() as u32, row.parts);
    }

    // The open session closes; the next run sends it and nothing else.
    assert!(env.portal.close_chat_session(open[0]));
    let second = env.chats(&store).await;
    assert_eq!(second.uploaded, 1, "{second:?}");
    assert_eq!(second.already_uploaded, first.uploaded);
    assert_eq!(
        second.waiting.get("session_open").copied(),
        Some(open.len() as u64 - 1)
    );
    let talks = env.chat_talks();
    let distinct: BTreeSet<&(String, String)> = talks.iter().collect();
    assert_eq!(distinct.len(), talks.len(), "no part twice across runs");
    assert!(talks.iter().any(|t| t.0 == open[0].to_string()));
    let third = env.chats(&store).await;
    assert_eq!(third.uploaded, 0);
    assert_eq!(env.chat_talks().len(), talks.len());
}

/// The fewest REST requests the API allows for a chat run, and the export's allowance on top: the listing (one
/// request per 2,500 sessions, and keyset paging ends on a short page), one history per finished session, 50 per
/// request, and one CRM-names request per listing request (the activities name their CRM owners).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_asks_the_portal_about_once_per_fifty_sessions() {
    let portal = Bitrix24Emulator::start(PortalConfig {
        seed: 17,
        calls: 0,
        rate: (100_000, 100_000),
        open_lines: OpenLinesConfig {
            sessions: 200,
            ..OpenLinesConfig::default()
        },
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let speech = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let key = speech.config().api_keys[0].clone();
    let webhook = WebhookUrl::parse(&portal.webhook_url()).unwrap();
    let bitrix =
        Bitrix24Client::new(Credentials::Webhook(webhook), ClientConfig::default()).unwrap();
    let client = SpeechSenseClient::new(SsConfig::new(
        speech.endpoint(),
        SsCredentials::ApiKey(SecretString::from(key)),
    ))
    .unwrap();
    let (store, _dir) = test_store().await;
    let oracle = portal.chat_sessions();
    let finished = oracle.iter().filter(|s| s.completed).count() as u64;
    assert!(finished > 150, "{finished} finished sessions");
    portal.reset_stats();

    let summary = run_chat_export(
        Arc::new(Bitrix24Source::new(bitrix)),
        Arc::new(SpeechSenseTextSink::new(client, None)),
        store,
        ChatExportConfig::new(PORTAL, CHAT),
        Arc::new(|_| {}),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(!summary.fatal, "{:?}", summary.stopped);
    let skipped: u64 = summary.skipped.values().sum();
    assert_eq!(
        summary.uploaded + skipped,
        finished,
        "every finished session taken through"
    );

    let stats = portal.stats();
    let listing = oracle.len() as u64 / 2_500 + 1;
    let minimum = listing + finished.div_ceil(50);
    let names = listing;
    assert!(
        stats.http_requests <= minimum + names,
        "{} requests for {} sessions: the API's minimum is {minimum} (+{names} for CRM names); {:?}",
        stats.http_requests,
        oracle.len(),
        stats.by_method
    );
    assert_eq!(stats.rate_limited, 0);

    // Names read once per page still name the client: the CRM record's title, or the chat's name when the record
    // was deleted.
    let by_session: std::collections::HashMap<
        String,
        &b24sense_emulators::bitrix24::ChatSessionInfo,
    > = oracle
        .iter()
        .map(|s| (s.session_id.to_string(), s))
        .collect();
    let talks = speech.talks();
    assert_eq!(talks.len() as u64, summary.talks);
    for t in &talks {
        let s = by_session[&t.fields["id"]];
        let want = match portal.crm_title(&s.owner.0, s.owner.1) {
            Some(title) if !s.owner_deleted => title,
            _ => s.client_name.clone(),
        };
        assert_eq!(t.fields["client_name"], want, "session {}", s.session_id);
    }
}

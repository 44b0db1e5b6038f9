//! What the chat tests over sockets share: the Bitrix24 emulator's Open Lines and the SpeechSense emulator's chat
//! connection reached through the real clients, and a source that counts the session rows the listing returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use b24sense_bitrix24::{Bitrix24Client, ClientConfig, Credentials, WebhookUrl};
use b24sense_core::chat::{ChatActivity, ChatFilter, ChatSession};
use b24sense_core::{CrmInfo, CrmRef};
use b24sense_emulators::bitrix24::{Bitrix24Emulator, OpenLinesConfig, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_engine::adapters::Bitrix24Source;
use b24sense_engine::chats::adapters::SpeechSenseTextSink;
use b24sense_engine::chats::{ChatExportConfig, ChatSource, SessionPage};
use b24sense_speechsense::{
    ClientConfig as SsConfig, Credentials as SsCredentials, SearchScope, SpeechSenseClient,
};
use secrecy::SecretString;

pub const PORTAL: &str = "emulated.bitrix24.test";
pub const CHAT: &str = "conn-chat";

pub struct Emu {
    pub portal: Bitrix24Emulator,
    pub speech: SpeechSenseEmulator,
    pub source: Arc<Counting>,
    client: SpeechSenseClient,
}

impl Emu {
    /// A portal with `sessions` Open Lines sessions (no calls) and a SpeechSense emulator configured by `ss`.
    pub async fn start(sessions: usize, ss: SpeechSenseConfig) -> Emu {
        let portal = Bitrix24Emulator::start(PortalConfig {
            seed: 29,
            calls: 0,
            rate: (100_000, 100_000),
            open_lines: OpenLinesConfig {
                sessions,
                ..OpenLinesConfig::default()
            },
            ..PortalConfig::default()
        })
        .await
        .unwrap();
        let key = ss.api_keys[0].clone();
        let speech = SpeechSenseEmulator::start(ss).await.unwrap();
        let webhook = WebhookUrl::parse(&portal.webhook_url()).unwrap();
        let bitrix =
            Bitrix24Client::new(Credentials::Webhook(webhook), ClientConfig::default()).unwrap();
        let client = SpeechSenseClient::new(SsConfig::new(
            speech.endpoint(),
            SsCredentials::ApiKey(SecretString::from(key)),
        ))
        .unwrap();
        Emu {
            portal,
            speech,
            source: Arc::new(Counting::new(Bitrix24Source::new(bitrix))),
            client,
        }
    }

    /// The chat connection, with a search scope (in-doubt parts are looked up) or without.
    pub fn sink(&self, search: bool) -> Arc<SpeechSenseTextSink> {
        let scope = search.then(|| SearchScope {
            organization_id: "org".into(),
            space_id: "space".into(),
            project_id: "project".into(),
            connection_id: String::new(),
        });
        Arc::new(SpeechSenseTextSink::new(self.client.clone(), scope))
    }

    pub fn config(&self) -> ChatExportConfig {
        ChatExportConfig::new(PORTAL, CHAT)
    }

    /// (session `id`, `part`) of every chat talk stored.
    pub fn chat_talks(&self) -> Vec<(String, String)> {
        self.speech
            .talks()
            .into_iter()
            .filter(|t| t.connection_id == CHAT)
            .map(|t| (t.fields["id"].clone(), t.fields["part"].clone()))
            .collect()
    }
}

/// The real source, counting the session rows the listing returned and those read again by ID.
pub struct Counting {
    inner: Bitrix24Source,
    pub listed: AtomicU64,
    pub by_id: AtomicU64,
}

impl Counting {
    fn new(inner: Bitrix24Source) -> Counting {
        Counting {
            inner,
            listed: AtomicU64::new(0),
            by_id: AtomicU64::new(0),
        }
    }

    /// (listed, read by ID) since the last call.
    pub fn take_counts(&self) -> (u64, u64) {
        (
            self.listed.swap(0, Ordering::SeqCst),
            self.by_id.swap(0, Ordering::SeqCst),
        )
    }
}

impl ChatSource for Counting {
    type Error = b24sense_bitrix24::Error;

    async fn list_sessions(&self, f: &ChatFilter, after: u64) -> Result<SessionPage, Self::Error> {
        let page = self.inner.list_sessions(f, after).await?;
        self.listed
            .fetch_add(page.sessions.len() as u64, Ordering::SeqCst);
        Ok(page)
    }

    async fn sessions_by_id(&self, ids: &[u64]) -> Result<SessionPage, Self::Error> {
        let page = self.inner.sessions_by_id(ids).await?;
        self.by_id
            .fetch_add(page.sessions.len() as u64, Ordering::SeqCst);
        Ok(page)
    }

    async fn histories(
        &self,
        sessions: &[ChatActivity],
    ) -> Result<std::collections::BTreeMap<u64, Result<ChatSession, String>>, Self::Error> {
        self.inner.histories(sessions).await
    }

    async fn crm_names(
        &self,
        crm: &[CrmRef],
    ) -> Result<std::collections::HashMap<CrmRef, CrmInfo>, Self::Error> {
        self.inner.crm_names(crm).await
    }
}

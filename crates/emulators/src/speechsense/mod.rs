//! SpeechSense emulator: an in-memory `yandex.cloud.speechsense.v1.TalkService` over plaintext HTTP/2 (h2c).
//!
//! It checks every upload in the real service's order — credentials, then the connection,
//! then the payload (stream order, container, connection kind, required keys, value sizes, `date`,
//! `direction_outgoing`, non-empty audio/messages, chat participants and timestamps) — and only then stores the
//! talk. Audio goes only to the two audio connection types, chats (`UploadText`) only to chat connections; once the
//! connection is known, every refusal names its type (`…; connection <id> is a chat connection`), which is how the
//! client's connection check tells the types apart (the real service's wording is not documented). Audio is hashed
//! while it streams in (SHA-256), never kept, so a 200 MB talk costs a few bytes of memory. A stream that errors or
//! is reset before the client half-closes stores nothing. Faults can be injected before the store (a status), after
//! it (a lost answer: the in-doubt case) or mid-stream (the server resets the HTTP/2 stream after K bytes).
//!
//! The parts:
//! - this file: configuration, the shared in-memory state, what tests read back, starting and stopping;
//! - `service`: the `TalkService` trait, recording each call and shaping its answer;
//! - `upload`: the audio upload RPCs and the checks every upload shares; `text`: `UploadText` (chats);
//!   `validate`: credentials, connection and metadata checks;
//! - `talks`: storing and updating talks; `search`: `Search` and `Get` over the stored talks;
//! - `reset`: HTTP/2 stream resets, from the client (an abort) and to it (an injected fault).

mod reset;
mod search;
mod service;
mod talks;
mod text;
mod upload;
mod validate;

/// The generated `TalkService` server stub (build.rs), over the client crate's message types.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod stub {
    include!(concat!(env!("OUT_DIR"), "/_includes.rs"));
    pub(crate) use self::yandex::cloud::speechsense::v1::talk_service_server;
}

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use b24sense_speechsense::{Container, MAX_MESSAGE_SIZE};
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use self::reset::{ResetAware, ServerReset};
use self::stub::talk_service_server::TalkServiceServer;

/// The gRPC status codes the fault injectors take (so tests need no direct `tonic` dependency).
pub use tonic::Code;

pub use self::text::PARTICIPANT_KEYS;

/// The API key accepted by [`SpeechSenseConfig::default`].
pub const DEFAULT_API_KEY: &str = "test-api-key";
/// The IAM token accepted by [`SpeechSenseConfig::default`].
pub const DEFAULT_BEARER_TOKEN: &str = "test-iam-token";

/// Default required keys of a two-channel audio connection (incl. `language`, mandatory since 2025-03).
pub const TWO_CHANNEL_REQUIRED: [&str; 7] = [
    "operator_name",
    "operator_id",
    "client_name",
    "client_id",
    "date",
    "direction_outgoing",
    "language",
];
/// Default required keys of a one-channel audio connection.
pub const ONE_CHANNEL_REQUIRED: [&str; 6] = [
    "operator_name",
    "operator_id",
    "client_name",
    "client_id",
    "date",
    "language",
];
/// Default required keys of a chat connection (bot keys are declared but optional: not every dialog has a bot).
pub const CHAT_REQUIRED: [&str; 7] = TWO_CHANNEL_REQUIRED;

/// Extra keys a connection made from the «Битрикс24» template declares: the lower-case call-history fields.
pub const BITRIX24_CALL_KEYS: [&str; 28] = [
    "id",
    "portal_user_id",
    "portal_number",
    "phone_number",
    "call_id",
    "external_call_id",
    "call_category",
    "call_duration",
    "call_start_date",
    "call_record_url",
    "call_vote",
    "cost",
    "cost_currency",
    "call_failed_code",
    "call_failed_reason",
    "crm_entity_type",
    "crm_entity_id",
    "crm_activity_id",
    "rest_app_id",
    "rest_app_name",
    "transcript_id",
    "transcript_pending",
    "session_id",
    "redial_attempt",
    "comment",
    "record_duration",
    "record_file_id",
    "call_type",
];

/// What a connection accepts: audio (`Upload`, `UploadAsStream`) for the two audio types, `UploadText` for chats.
/// The client's type, so that tests and the connection check speak of the same kinds.
pub use b24sense_speechsense::ConnectionKind;

/// One SpeechSense connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub id: String,
    pub kind: ConnectionKind,
    /// Keys every upload must carry (INVALID_ARGUMENT otherwise).
    pub required_keys: Vec<String>,
    /// Reject keys not in `declared_keys` (the real service seems to ignore them; default off).
    pub strict: bool,
    pub declared_keys: Vec<String>,
    /// Principals (API key secrets / IAM tokens) allowed to use this connection; `None` = every valid one.
    pub allowed_keys: Option<Vec<String>>,
}

impl ConnectionConfig {
    fn with(id: &str, kind: ConnectionKind, required: &[&str]) -> Self {
        let mut declared: Vec<String> = required.iter().map(|s| s.to_string()).collect();
        for k in ["direction_outgoing", "ticket_id"]
            .into_iter()
            .chain(BITRIX24_CALL_KEYS)
        {
            if !declared.iter().any(|d| d == k) {
                declared.push(k.to_string());
            }
        }
        if kind == ConnectionKind::Chat {
            declared.extend(["bot_name".to_string(), "bot_id".to_string()]);
        }
        ConnectionConfig {
            id: id.to_string(),
            kind,
            required_keys: required.iter().map(|s| s.to_string()).collect(),
            strict: false,
            declared_keys: declared,
            allowed_keys: None,
        }
    }

    /// A two-channel audio connection with the default keys.
    pub fn two_channel(id: &str) -> Self {
        Self::with(id, ConnectionKind::TwoChannelAudio, &TWO_CHANNEL_REQUIRED)
    }

    /// A one-channel audio connection with the default keys.
    pub fn one_channel(id: &str) -> Self {
        Self::with(id, ConnectionKind::OneChannelAudio, &ONE_CHANNEL_REQUIRED)
    }

    /// A chat connection with the default keys.
    pub fn chat(id: &str) -> Self {
        Self::with(id, ConnectionKind::Chat, &CHAT_REQUIRED)
    }

    /// Only these principals may use the connection.
    pub fn allow_only(mut self, principals: &[&str]) -> Self {
        self.allowed_keys = Some(principals.iter().map(|s| s.to_string()).collect());
        self
    }
}

/// Faults to inject. Each entry `(code, times)` is consumed front to back.
#[derive(Debug, Clone, Default)]
pub struct SpeechSenseFaults {
    /// The next upload RPCs fail with `code` right after the credentials check; nothing is stored.
    pub before_store: Vec<(Code, u32)>,
    /// The next successful uploads store the talk and then answer `code` instead of the id (a lost answer:
    /// the client must treat it as in doubt).
    pub after_store: Vec<(Code, u32)>,
    /// `(bytes, times)`: the next `times` `UploadAsStream` calls are reset by the server (HTTP/2 `RST_STREAM`
    /// with `INTERNAL_ERROR`, no gRPC status) once `bytes` audio bytes have arrived — or at the client's
    /// half-close if fewer came. Nothing is stored.
    pub reset_after_bytes: Vec<(u64, u32)>,
}

/// Emulator configuration.
#[derive(Debug, Clone)]
pub struct SpeechSenseConfig {
    /// Valid `Api-Key` secrets.
    pub api_keys: Vec<String>,
    /// Valid `Bearer` IAM tokens.
    pub bearer_tokens: Vec<String>,
    pub connections: Vec<ConnectionConfig>,
    /// Delay before each upload's answer (after the talk is stored).
    pub upload_latency: Duration,
    /// A stored talk shows up in `Search` only this long after it was created (the real index lags a little).
    pub search_lag: Duration,
    pub faults: SpeechSenseFaults,
}

impl SpeechSenseConfig {
    /// The ID of the first connection of this type (the default configuration has one of each:
    /// `conn-two-channel`, `conn-mono`, `conn-chat`).
    pub fn connection_id(&self, kind: ConnectionKind) -> Option<&str> {
        self.connections
            .iter()
            .find(|c| c.kind == kind)
            .map(|c| c.id.as_str())
    }
}

impl Default for SpeechSenseConfig {
    fn default() -> Self {
        SpeechSenseConfig {
            api_keys: vec![DEFAULT_API_KEY.to_string()],
            bearer_tokens: vec![DEFAULT_BEARER_TOKEN.to_string()],
            connections: vec![
                ConnectionConfig::two_channel("conn-two-channel"),
                ConnectionConfig::chat("conn-chat"),
                ConnectionConfig::one_channel("conn-mono"),
            ],
            upload_latency: Duration::ZERO,
            search_lag: Duration::ZERO,
            faults: SpeechSenseFaults::default(),
        }
    }
}

/// Raw LPCM declaration of a talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPcm {
    pub sample_rate_hertz: i64,
    pub channels: i64,
}

/// One chat message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub user_id: String,
    pub timestamp: DateTime<Utc>,
    pub text: String,
}

/// A talk the emulator accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTalk {
    pub id: String,
    pub connection_id: String,
    pub fields: BTreeMap<String, String>,
    pub container: Option<Container>,
    pub raw_audio: Option<RawPcm>,
    pub audio_bytes: u64,
    /// Lower-case hex SHA-256 of the audio bytes as received.
    pub audio_sha256: String,
    pub messages: Vec<StoredMessage>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub client_request_id: Option<String>,
    /// Sizes of the audio chunks in arrival order (`UploadAsStream`), or the one `Upload` payload.
    pub chunk_sizes: Vec<usize>,
}

/// One RPC as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// `UploadAsStream`, `Upload`, `UploadText`, `Search`, `Get`.
    pub method: &'static str,
    pub client_request_id: Option<String>,
    /// `Code::Ok` for success.
    pub code: Code,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeechSenseStats {
    /// Upload RPCs answered with a talk id (creates and metadata updates).
    pub uploads_ok: u64,
    /// Upload RPCs refused, by code name (`"Unauthenticated"`, `"InvalidArgument"`, ...).
    pub uploads_rejected: BTreeMap<String, u64>,
    /// Upload streams that errored or were reset before the client half-closed (stored nothing).
    pub streams_aborted: u64,
    /// Upload streams the server reset on purpose (`reset_after_bytes`; stored nothing).
    pub streams_reset: u64,
    /// Audio bytes received in all upload attempts.
    pub bytes_received: u64,
    /// The most `UploadAsStream` calls open at once (from the request to the answer, upload latency included).
    pub peak_upload_streams: u64,
    pub searches: u64,
    pub gets: u64,
}

impl SpeechSenseStats {
    pub fn rejected(&self, code: Code) -> u64 {
        self.uploads_rejected
            .get(&format!("{code:?}"))
            .copied()
            .unwrap_or(0)
    }
}

pub(crate) struct State {
    config: SpeechSenseConfig,
    inner: Mutex<Mutable>,
}

#[derive(Default)]
struct Mutable {
    talks: Vec<StoredTalk>,
    stats: SpeechSenseStats,
    calls: Vec<RecordedCall>,
    before_store: VecDeque<(Code, u32)>,
    after_store: VecDeque<(Code, u32)>,
    reset_after: VecDeque<(u64, u32)>,
    /// `UploadAsStream` calls open now.
    upload_streams: u64,
}

impl State {
    fn new(config: SpeechSenseConfig) -> Self {
        let inner = Mutable {
            before_store: config.faults.before_store.iter().copied().collect(),
            after_store: config.faults.after_store.iter().copied().collect(),
            reset_after: config.faults.reset_after_bytes.iter().copied().collect(),
            ..Mutable::default()
        };
        State {
            config,
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Mutable> {
        // A panicking test thread must not hide the data from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn take_fault<T: Copy>(queue: &mut VecDeque<(T, u32)>) -> Option<T> {
    while let Some((code, times)) = queue.front_mut() {
        if *times == 0 {
            queue.pop_front();
            continue;
        }
        *times -= 1;
        return Some(*code);
    }
    None
}

/// A running emulator; stops when dropped.
pub struct SpeechSenseEmulator {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl SpeechSenseEmulator {
    /// Starts on `127.0.0.1:<free port>`.
    pub async fn start(config: SpeechSenseConfig) -> std::io::Result<Self> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(config: SpeechSenseConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(config));
        let (tx, rx) = oneshot::channel::<()>();
        let router = grpc_server().add_service(server(state.clone()));
        let task = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, async { rx.await.unwrap_or(()) })
                .await
            {
                tracing::warn!(error = %e, "SpeechSense emulator stopped");
            }
        });
        Ok(SpeechSenseEmulator {
            addr,
            state,
            shutdown: Some(tx),
            task,
        })
    }

    /// `http://127.0.0.1:PORT` — plaintext h2c.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn talks(&self) -> Vec<StoredTalk> {
        self.state.lock().talks.clone()
    }

    pub fn talk(&self, id: &str) -> Option<StoredTalk> {
        self.state.lock().talks.iter().find(|t| t.id == id).cloned()
    }

    pub fn talk_count(&self) -> usize {
        self.state.lock().talks.len()
    }

    /// The next `times` upload RPCs fail with `code` (checked right after the credentials; nothing stored).
    pub fn inject(&self, code: Code, times: u32) {
        self.state.lock().before_store.push_back((code, times));
    }

    /// The next `times` uploads are stored and then answered with `code` (the answer is "lost").
    pub fn inject_after_store(&self, code: Code, times: u32) {
        self.state.lock().after_store.push_back((code, times));
    }

    /// The next `times` streamed uploads are reset by the server after `bytes` audio bytes (nothing stored).
    pub fn inject_reset_after(&self, bytes: u64, times: u32) {
        self.state.lock().reset_after.push_back((bytes, times));
    }

    /// Drops every pending injected fault.
    pub fn clear_faults(&self) {
        let mut inner = self.state.lock();
        inner.before_store.clear();
        inner.after_store.clear();
        inner.reset_after.clear();
    }

    pub fn stats(&self) -> SpeechSenseStats {
        self.state.lock().stats.clone()
    }

    /// Every RPC received so far, in arrival order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state.lock().calls.clone()
    }

    pub fn config(&self) -> &SpeechSenseConfig {
        &self.state.config
    }
}

impl Drop for SpeechSenseEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Open client connections would otherwise keep the graceful shutdown waiting.
        self.task.abort();
    }
}

fn server(
    state: Arc<State>,
) -> ServerReset<ResetAware<TalkServiceServer<service::TalkServiceImpl>>> {
    // ResetAware: a client's RST_STREAM(CANCEL) must abort the upload, not end it cleanly (tonic's default).
    ServerReset::new(ResetAware::new(
        TalkServiceServer::new(service::TalkServiceImpl::new(state))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
    ))
}

/// The gRPC server with HTTP/2 receive windows a production gRPC server reaches on a fast link: 1 MiB per stream
/// (hyper's default and grpc-java's) and 8 MiB per connection (grpc-go grows both windows by probing the round
/// trip, up to 16 MiB), room for the client's 8 concurrent uploads of 1 MiB messages. hyper's default of
/// 1 MiB per connection made the uploads take turns: a 200 MB recording went at ~100 MB/s over loopback and
/// `cpu-10k` took ~15 % longer (docs/benchmarks.md) — a limit of the emulator, not of the client. The real
/// service's windows are not documented; against it they and the round trip set the rate.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20))
}

/// Serves until the process ends (for `b24sense emulate speechsense`).
pub async fn serve_forever(config: SpeechSenseConfig, addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(endpoint = %format!("http://{}", listener.local_addr()?), "SpeechSense emulator listening");
    let state = Arc::new(State::new(config));
    grpc_server()
        .add_service(server(state))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}

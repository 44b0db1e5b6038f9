//! [`SpeechSenseClient`]: the calls b24sense makes to `TalkService`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use secrecy::ExposeSecret;
use tokio::sync::oneshot;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};
use tracing::{debug, warn};

use crate::config::{ClientConfig, Credentials};
use crate::error::{scrub, Error};
use crate::proto::talk_service_client::TalkServiceClient;
use crate::proto::{
    audio_metadata, audio_streaming_request, filter, message, stream_talk_request, AnyMatchFilter,
    AudioMetadata, AudioStreamingRequest, ContainerAudio, Filter, Message, SearchTalkRequest,
    StreamTalkRequest, TalkMetadata, TextContent, TextPayload, UploadTextRequest,
};
use crate::tracking::{SendProgress, Tracked};
use crate::upload::{AudioStream, SourceError, MAX_MESSAGE_SIZE};
use crate::{container_to_proto, Container};

/// Page size of `search`.
pub const SEARCH_PAGE_SIZE: i64 = 100;
/// `search` never follows more pages than this.
pub const SEARCH_MAX_PAGES: usize = 20;

/// One chat message for `upload_text`. `user_id` must be one of the talk's `operator_id`/`client_id`/`bot_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub user_id: String,
    pub timestamp: DateTime<Utc>,
    pub text: String,
}

/// Where `search` looks (official examples always fill all four ids).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchScope {
    pub organization_id: String,
    pub space_id: String,
    pub project_id: String,
    pub connection_id: String,
}

/// A SpeechSense client. Cheap to clone; clones share one lazily connected HTTP/2 channel.
#[derive(Clone)]
pub struct SpeechSenseClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    endpoint: Endpoint,
    /// Created on first use: `connect_lazy` needs a running tokio runtime, `new` may be called outside one.
    channel: OnceLock<Channel>,
}

impl fmt::Debug for SpeechSenseClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpeechSenseClient")
            .field("endpoint", &self.inner.config.endpoint)
            .finish_non_exhaustive()
    }
}

type Grpc = TalkServiceClient<Tracked<Channel>>;

impl SpeechSenseClient {
    /// Validates the endpoint and prepares TLS (https) or plaintext h2c (http). Does not connect.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let raw = config.endpoint.trim().to_string();
        let invalid = || Error::InvalidEndpoint(raw.clone());
        let uri: http::Uri = raw.parse().map_err(|_| invalid())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid()),
        };
        if uri.host().is_none_or(str::is_empty)
            || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
        {
            return Err(invalid());
        }
        let mut endpoint = Endpoint::from_shared(raw.clone())
            .map_err(|_| invalid())?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // OS-level keepalive only: HTTP/2 PINGs during a long client stream (the server sends nothing until
            // the end) are punished by gRPC servers' ping enforcement (GOAWAY "too_many_pings").
            .tcp_keepalive(Some(Duration::from_secs(60)));
        if tls {
            endpoint = endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .with_webpki_roots()
                        .with_native_roots(),
                )
                .map_err(|_| invalid())?;
        }
        Ok(SpeechSenseClient {
            inner: Arc::new(Inner {
                config,
                endpoint,
                channel: OnceLock::new(),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub(crate) fn grpc(&self) -> Grpc {
        let channel = self
            .inner
            .channel
            .get_or_init(|| self.inner.endpoint.connect_lazy())
            .clone();
        TalkServiceClient::new(Tracked::new(channel))
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(crate) fn secret(&self) -> &str {
        match &self.inner.config.credentials {
            Credentials::ApiKey(s) | Credentials::Bearer(s) => s.expose_secret(),
        }
    }

    /// Wraps a message with auth, a fresh `x-client-request-id` and the send-progress flag.
    pub(crate) fn request<T>(
        &self,
        message: T,
        progress: &SendProgress,
    ) -> Result<Request<T>, Error> {
        let mut auth: AsciiMetadataValue = self
            .inner
            .config
            .credentials
            .header_value()
            .parse()
            .map_err(|_| {
                Error::BadKey("the API key contains characters not allowed in a header".into())
            })?;
        auth.set_sensitive(true);
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut req = Request::new(message);
        req.metadata_mut().insert("authorization", auth);
        if let Ok(v) = request_id.parse() {
            req.metadata_mut().insert("x-client-request-id", v);
        }
        req.extensions_mut().insert(progress.clone());
        debug!(x_client_request_id = %request_id, "SpeechSense call");
        Ok(req)
    }

    fn classify(&self, status: &Status, creates: bool, progress: &SendProgress) -> Error {
        log_ids(status.metadata(), "error");
        let err = Error::from_status(status, creates, progress.is_sent(), self.secret());
        debug!(code = ?status.code(), sent = progress.is_sent(), error = %err, "SpeechSense call failed");
        err
    }

    /// Uploads one audio talk with `UploadAsStream` and returns its talk id.
    ///
    /// Sends `{metadata}` → `{audio_metadata{container}}` → `{chunk}`… in chunks of exactly 1 MiB (the last may be
    /// shorter) → half-close. If `audio` yields an error, the request body fails so the stream is reset
    /// (RST_STREAM INTERNAL_ERROR, never a half-close), the server stores nothing, and [`Error::SourceFailed`] is
    /// returned. Once everything was sent, the answer is
    /// awaited for at most `unary_timeout`; a missing answer is [`Error::InDoubt`].
    pub async fn upload_audio(
        &self,
        connection_id: &str,
        fields: &BTreeMap<String, String>,
        container: Container,
        audio: BoxStream<'static, Result<Bytes, SourceError>>,
    ) -> Result<String, Error> {
        let head = vec![
            metadata_message(connection_id, fields),
            StreamTalkRequest {
                event: Some(stream_talk_request::Event::Audio(AudioStreamingRequest {
                    audio_event: Some(audio_streaming_request::AudioEvent::AudioMetadata(
                        AudioMetadata {
                            audio_format: Some(audio_metadata::AudioFormat::ContainerAudio(
                                ContainerAudio {
                                    container_audio_type: container_to_proto(container) as i32,
                                },
                            )),
                        },
                    )),
                })),
            },
        ];
        let (fail_tx, mut fail_rx) = oneshot::channel();
        let progress = SendProgress::default();
        let req = self.request(
            AudioStream::new(head, audio, fail_tx, progress.clone()),
            &progress,
        )?;
        let mut grpc = self.grpc();
        let call = grpc.upload_as_stream(req);
        tokio::pin!(call);
        let answer_timeout = self.inner.config.unary_timeout;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut watching_source = true;
        let result = loop {
            tokio::select! {
                biased;
                failed = &mut fail_rx, if watching_source => match failed {
                    // The body has failed (RST_STREAM INTERNAL_ERROR); returning also drops `call`.
                    Ok(message) => return Err(Error::SourceFailed(scrub(&message, self.secret()))),
                    Err(_) => watching_source = false,
                },
                res = &mut call => break res,
                () = progress.sent(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + answer_timeout);
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    return Err(Error::timeout("UploadAsStream", answer_timeout, true, true));
                }
            }
        };
        match result {
            Ok(resp) => {
                log_ids(resp.metadata(), "UploadAsStream");
                talk_id_of(resp.into_inner().talk_id)
            }
            Err(status) => Err(self.classify(&status, true, &progress).for_upload(true)),
        }
    }

    /// Uploads one chat dialog with `UploadText` to a chat connection and returns its talk id.
    ///
    /// `fields` are the talk's metadata keys (as for audio); every message's `user_id` must equal the value of
    /// `operator_id`, `client_id` or `bot_id` in `fields` — the service's documented rule, which the emulator
    /// enforces. Messages are sent in the given order, each with its UTC timestamp (to the nanosecond) and text.
    ///
    /// Errors are classified as for [`SpeechSenseClient::upload_audio`]: refused by the service (bad data, an audio
    /// connection: [`Error::InvalidData`]; key or connection: fatal), or failed before the request was fully sent
    /// (retryable: nothing stored); a lost answer or a server fault after the whole request was sent is
    /// [`Error::InDoubt`] — the chat may be stored, find it by its `id` key with [`SpeechSenseClient::search`].
    pub async fn upload_text(
        &self,
        connection_id: &str,
        fields: &BTreeMap<String, String>,
        messages: &[ChatMessage],
    ) -> Result<String, Error> {
        let body = UploadTextRequest {
            metadata: Some(talk_metadata(connection_id, fields)),
            text_content: Some(TextContent {
                messages: messages
                    .iter()
                    .map(|m| Message {
                        user_id: m.user_id.clone(),
                        timestamp: Some(prost_types::Timestamp {
                            seconds: m.timestamp.timestamp(),
                            nanos: m.timestamp.timestamp_subsec_nanos() as i32,
                        }),
                        payload: Some(message::Payload::Text(TextPayload {
                            text: m.text.clone(),
                        })),
                    })
                    .collect(),
            }),
            talk_id: String::new(),
        };
        let progress = SendProgress::default();
        let req = self.request(body, &progress)?;
        let timeout = self.inner.config.unary_timeout;
        let mut grpc = self.grpc();
        match tokio::time::timeout(timeout, grpc.upload_text(req)).await {
            Err(_) => Err(Error::timeout(
                "UploadText",
                timeout,
                true,
                progress.is_sent(),
            )),
            Ok(Err(status)) => Err(self.classify(&status, true, &progress).for_upload(false)),
            Ok(Ok(resp)) => {
                log_ids(resp.metadata(), "UploadText");
                talk_id_of(resp.into_inner().talk_id)
            }
        }
    }

    /// `Search` with one `any_match` filter per `(key, values)` (keys like `userMeta.id`), following
    /// `next_page_token` for at most [`SEARCH_MAX_PAGES`] pages. Returns talk ids in server order.
    pub async fn search(
        &self,
        scope: &SearchScope,
        any_match: &[(String, Vec<String>)],
    ) -> Result<Vec<String>, Error> {
        let filters: Vec<Filter> = any_match
            .iter()
            .map(|(key, values)| Filter {
                key: key.clone(),
                filter: Some(filter::Filter::AnyMatch(AnyMatchFilter {
                    values: values.clone(),
                })),
                ..Default::default()
            })
            .collect();
        let timeout = self.inner.config.unary_timeout;
        let mut grpc = self.grpc();
        let mut ids = Vec::new();
        let mut page_token = String::new();
        for page in 0..SEARCH_MAX_PAGES {
            let body = SearchTalkRequest {
                organization_id: scope.organization_id.clone(),
                space_id: scope.space_id.clone(),
                connection_id: scope.connection_id.clone(),
                project_id: scope.project_id.clone(),
                filters: filters.clone(),
                page_size: SEARCH_PAGE_SIZE,
                page_token: page_token.clone(),
                ..Default::default()
            };
            let progress = SendProgress::default();
            let req = self.request(body, &progress)?;
            let resp = match tokio::time::timeout(timeout, grpc.search(req)).await {
                Err(_) => return Err(Error::timeout("Search", timeout, false, false)),
                Ok(Err(status)) => return Err(self.classify(&status, false, &progress)),
                Ok(Ok(resp)) => resp,
            };
            log_ids(resp.metadata(), "Search");
            let resp = resp.into_inner();
            ids.extend(resp.talk_ids);
            if resp.next_page_token.is_empty() {
                return Ok(ids);
            }
            if page + 1 == SEARCH_MAX_PAGES {
                warn!(
                    pages = SEARCH_MAX_PAGES,
                    found = ids.len(),
                    total = resp.talks_count,
                    "search truncated"
                );
            }
            page_token = resp.next_page_token;
        }
        Ok(ids)
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn talk_metadata(connection_id: &str, fields: &BTreeMap<String, String>) -> TalkMetadata {
    TalkMetadata {
        connection_id: connection_id.to_string(),
        fields: fields.clone(),
        users: Vec::new(),
    }
}

pub(crate) fn metadata_message(
    connection_id: &str,
    fields: &BTreeMap<String, String>,
) -> StreamTalkRequest {
    StreamTalkRequest {
        event: Some(stream_talk_request::Event::Metadata(talk_metadata(
            connection_id,
            fields,
        ))),
    }
}

/// The talk id of an upload's OK answer; an empty one leaves the talk in doubt (it may have been stored).
fn talk_id_of(talk_id: String) -> Result<String, Error> {
    if talk_id.is_empty() {
        return Err(Error::InDoubt {
            code: None,
            message: "OK answer without a talk id".into(),
        });
    }
    Ok(talk_id)
}

/// Logs the server-side request ids (for support tickets).
pub(crate) fn log_ids(md: &MetadataMap, what: &str) {
    let get = |k: &str| {
        md.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (request_id, trace_id) = (get("x-request-id"), get("x-server-trace-id"));
    if !request_id.is_empty() || !trace_id.is_empty() {
        debug!(call = what, x_request_id = %request_id, x_server_trace_id = %trace_id, "SpeechSense response ids");
    }
}

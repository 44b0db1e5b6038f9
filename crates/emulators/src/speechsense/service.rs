//! The `TalkService` handlers.

use std::collections::BTreeMap;
use std::sync::Arc;

use b24sense_speechsense::proto::talk_service_server::TalkService;
use b24sense_speechsense::proto::{
    audio_metadata, audio_streaming_request, container_audio, filter, message, raw_audio,
    stream_talk_request, AudioMetadata, AudioStreamingRequest, Field, FieldType, Filter,
    GetTalkRequest, GetTalkResponse, ProcessingState, SearchTalkRequest, SearchTalkResponse,
    StreamTalkRequest, Talk, TalkState, UploadTalkRequest, UploadTalkResponse, UploadTextRequest,
    UploadTextResponse,
};
use b24sense_speechsense::{container_from_proto, Container};
use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use super::validate;
use super::{take_fault, ConnectionConfig, RawPcm, RecordedCall, State, StoredMessage, StoredTalk};

pub(crate) struct TalkServiceImpl {
    state: Arc<State>,
}

impl TalkServiceImpl {
    pub(crate) fn new(state: Arc<State>) -> Self {
        TalkServiceImpl { state }
    }
}

/// Why an upload did not produce a talk id.
enum Failure {
    Refused(Status),
    /// The client's stream broke before it half-closed.
    Aborted(Status),
    /// An injected fault: the server resets the stream (nothing stored).
    Reset,
}

/// Counts an upload stream that broke before the client half-closed. hyper drops the handler when the client
/// resets the stream, so the count happens on drop unless the handler finished.
struct AbortWatch<'a> {
    state: &'a State,
    done: bool,
}

impl Drop for AbortWatch<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.lock().stats.streams_aborted += 1;
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Refused(s)
    }
}

fn invalid(msg: impl Into<String>) -> Failure {
    Failure::Refused(Status::invalid_argument(msg))
}

fn client_request_id(md: &MetadataMap) -> Option<String> {
    md.get("x-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn random_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..17)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Yandex Cloud answers carry these; the client logs them.
fn add_ids(md: &mut MetadataMap) {
    if let Ok(v) = random_hex(32).parse() {
        md.insert("x-request-id", v);
    }
    if let Ok(v) = random_hex(16).parse() {
        md.insert("x-server-trace-id", v);
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// Container or raw PCM declaration → what is stored.
fn audio_format(meta: &AudioMetadata) -> Result<(Option<Container>, Option<RawPcm>), Failure> {
    match &meta.audio_format {
        Some(audio_metadata::AudioFormat::ContainerAudio(c)) => {
            let t = container_audio::ContainerAudioType::try_from(c.container_audio_type)
                .unwrap_or(container_audio::ContainerAudioType::Unspecified);
            match container_from_proto(t) {
                Some(container) => Ok((Some(container), None)),
                None => Err(invalid("container_audio_type must be WAV, OGG_OPUS or MP3")),
            }
        }
        Some(audio_metadata::AudioFormat::RawAudio(r)) => {
            if r.audio_encoding != raw_audio::AudioEncoding::Linear16Pcm as i32 {
                return Err(invalid("raw_audio.audio_encoding must be LINEAR16_PCM"));
            }
            if !(8000..=48000).contains(&r.sample_rate_hertz) || r.audio_channel_count < 1 {
                return Err(invalid(
                    "raw_audio needs sample_rate_hertz 8000..48000 and audio_channel_count >= 1",
                ));
            }
            Ok((
                None,
                Some(RawPcm {
                    sample_rate_hertz: r.sample_rate_hertz,
                    channels: r.audio_channel_count,
                }),
            ))
        }
        None => Err(invalid(
            "audio_metadata must declare container_audio or raw_audio",
        )),
    }
}

fn require_audio_connection(conn: &ConnectionConfig) -> Result<(), Failure> {
    if conn.kind.is_audio() {
        Ok(())
    } else {
        Err(invalid(format!(
            "connection {} is a chat connection: use UploadText",
            conn.id
        )))
    }
}

/// What an upload stores, besides metadata.
struct Payload {
    container: Option<Container>,
    raw_audio: Option<RawPcm>,
    audio_bytes: u64,
    audio_sha256: String,
    chunk_sizes: Vec<usize>,
    messages: Vec<StoredMessage>,
}

impl TalkServiceImpl {
    fn auth_and_fault(&self, md: &MetadataMap) -> Result<String, Failure> {
        let principal = validate::auth(md, &self.state.config)?;
        if let Some(code) = take_fault(&mut self.state.lock().before_store) {
            return Err(Failure::Refused(Status::new(
                code,
                "injected fault (nothing stored)",
            )));
        }
        Ok(principal)
    }

    async fn next(
        &self,
        stream: &mut Streaming<StreamTalkRequest>,
    ) -> Result<Option<StreamTalkRequest>, Failure> {
        stream.message().await.map_err(Failure::Aborted)
    }

    /// Stores a new talk, then applies after-store faults.
    async fn store(
        &self,
        prefix: &str,
        connection_id: &str,
        fields: BTreeMap<String, String>,
        payload: Payload,
        client_request_id: Option<String>,
    ) -> Result<String, Failure> {
        let id = random_id(prefix);
        let now = Utc::now();
        let fault = {
            let mut inner = self.state.lock();
            inner.talks.push(StoredTalk {
                id: id.clone(),
                connection_id: connection_id.to_string(),
                fields,
                container: payload.container,
                raw_audio: payload.raw_audio,
                audio_bytes: payload.audio_bytes,
                audio_sha256: payload.audio_sha256,
                messages: payload.messages,
                created_at: now,
                modified_at: now,
                client_request_id,
                chunk_sizes: payload.chunk_sizes,
            });
            take_fault(&mut inner.after_store)
        };
        tracing::debug!(talk_id = %id, connection_id, "SpeechSense emulator stored a talk");
        if let Some(code) = fault {
            return Err(Failure::Refused(Status::new(
                code,
                "injected fault after the talk was stored",
            )));
        }
        Ok(id)
    }

    /// The configured delay before a successful upload's answer.
    async fn latency(&self, result: &Result<String, Failure>) {
        let latency = self.state.config.upload_latency;
        if result.is_ok() && !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Metadata update: the talk must exist in the same connection; all fields are replaced.
    fn update(
        &self,
        connection_id: &str,
        talk_id: &str,
        fields: BTreeMap<String, String>,
    ) -> Result<String, Failure> {
        let mut inner = self.state.lock();
        match inner
            .talks
            .iter_mut()
            .find(|t| t.id == talk_id && t.connection_id == connection_id)
        {
            Some(talk) => {
                talk.fields = fields;
                talk.modified_at = Utc::now();
                Ok(talk.id.clone())
            }
            None => Err(Failure::Refused(Status::not_found(format!(
                "talk {talk_id} not found"
            )))),
        }
    }

    async fn stream_upload(
        &self,
        request: Request<Streaming<StreamTalkRequest>>,
        crid: Option<String>,
    ) -> Result<String, Failure> {
        let principal = self.auth_and_fault(request.metadata())?;
        let reset_at = take_fault(&mut self.state.lock().reset_after);
        let mut stream = request.into_inner();
        let Some(first) = self.next(&mut stream).await? else {
            return Err(invalid(
                "empty stream: the first message must carry the talk metadata",
            ));
        };
        let Some(stream_talk_request::Event::Metadata(metadata)) = first.event else {
            return Err(invalid(
                "stream order: the first message must carry the talk metadata",
            ));
        };
        let conn = validate::connection(&self.state.config, &principal, &metadata.connection_id)?;
        require_audio_connection(conn)?;
        validate::fields(conn, &metadata.fields)?;
        let second = self.next(&mut stream).await?;
        let Some(StreamTalkRequest {
            event:
                Some(stream_talk_request::Event::Audio(AudioStreamingRequest {
                    audio_event:
                        Some(audio_streaming_request::AudioEvent::AudioMetadata(audio_meta)),
                })),
        }) = second
        else {
            return Err(invalid(
                "stream order: the second message must carry the audio metadata",
            ));
        };
        let (container, raw_audio) = audio_format(&audio_meta)?;
        let mut hasher = Sha256::new();
        let mut chunk_sizes = Vec::new();
        let mut total = 0u64;
        loop {
            match self.next(&mut stream).await? {
                None => break,
                Some(StreamTalkRequest {
                    event:
                        Some(stream_talk_request::Event::Audio(AudioStreamingRequest {
                            audio_event: Some(audio_streaming_request::AudioEvent::Chunk(chunk)),
                        })),
                }) => {
                    hasher.update(&chunk.data);
                    chunk_sizes.push(chunk.data.len());
                    total += chunk.data.len() as u64;
                    self.state.lock().stats.bytes_received += chunk.data.len() as u64;
                    if reset_at.is_some_and(|k| total >= k) {
                        return Err(Failure::Reset);
                    }
                }
                Some(_) => {
                    return Err(invalid(
                        "stream order: only audio chunks may follow the audio metadata",
                    ))
                }
            }
        }
        if reset_at.is_some() {
            return Err(Failure::Reset);
        }
        if total == 0 {
            return Err(invalid("no audio data"));
        }
        let payload = Payload {
            container,
            raw_audio,
            audio_bytes: total,
            audio_sha256: hex::encode(hasher.finalize()),
            chunk_sizes,
            messages: Vec::new(),
        };
        self.store("aud", &conn.id, metadata.fields, payload, crid)
            .await
    }

    async fn unary_upload(
        &self,
        request: Request<UploadTalkRequest>,
        crid: Option<String>,
    ) -> Result<String, Failure> {
        let principal = self.auth_and_fault(request.metadata())?;
        let req = request.into_inner();
        let metadata = req
            .metadata
            .ok_or_else(|| invalid("metadata is required"))?;
        let conn = validate::connection(&self.state.config, &principal, &metadata.connection_id)?;
        require_audio_connection(conn)?;
        validate::fields(conn, &metadata.fields)?;
        if !req.talk_id.is_empty() {
            if req.audio.is_some() {
                return Err(invalid("a metadata update must not carry audio"));
            }
            return self.update(&conn.id, &req.talk_id, metadata.fields);
        }
        let audio = req.audio.ok_or_else(|| invalid("audio is required"))?;
        let audio_meta = audio
            .audio_metadata
            .ok_or_else(|| invalid("audio.audio_metadata is required"))?;
        let (container, raw_audio) = audio_format(&audio_meta)?;
        let data = audio.audio_data.map(|c| c.data).unwrap_or_default();
        self.state.lock().stats.bytes_received += data.len() as u64;
        if data.is_empty() {
            return Err(invalid("no audio data"));
        }
        let payload = Payload {
            container,
            raw_audio,
            audio_bytes: data.len() as u64,
            audio_sha256: hex::encode(Sha256::digest(&data)),
            chunk_sizes: vec![data.len()],
            messages: Vec::new(),
        };
        self.store("aud", &conn.id, metadata.fields, payload, crid)
            .await
    }

    async fn text_upload(
        &self,
        request: Request<UploadTextRequest>,
        crid: Option<String>,
    ) -> Result<String, Failure> {
        let principal = self.auth_and_fault(request.metadata())?;
        let req = request.into_inner();
        let metadata = req
            .metadata
            .ok_or_else(|| invalid("metadata is required"))?;
        let conn = validate::connection(&self.state.config, &principal, &metadata.connection_id)?;
        if conn.kind.is_audio() {
            return Err(invalid(format!(
                "connection {} is an audio connection: use Upload or UploadAsStream",
                conn.id
            )));
        }
        validate::fields(conn, &metadata.fields)?;
        if !req.talk_id.is_empty() {
            if req.text_content.is_some_and(|c| !c.messages.is_empty()) {
                return Err(invalid("a metadata update must not carry messages"));
            }
            return self.update(&conn.id, &req.talk_id, metadata.fields);
        }
        let messages = req.text_content.map(|c| c.messages).unwrap_or_default();
        if messages.is_empty() {
            return Err(invalid("no messages"));
        }
        let participants: Vec<&str> = ["operator_id", "client_id", "bot_id"]
            .iter()
            .filter_map(|k| metadata.fields.get(*k).map(String::as_str))
            .filter(|v| !v.is_empty())
            .collect();
        let mut stored = Vec::with_capacity(messages.len());
        for m in messages {
            if !participants.contains(&m.user_id.as_str()) {
                return Err(invalid(format!(
                    "message user_id {:?} is none of operator_id, client_id, bot_id",
                    m.user_id
                )));
            }
            let Some(message::Payload::Text(text)) = m.payload else {
                return Err(invalid("message without a text payload"));
            };
            stored.push(StoredMessage {
                user_id: m.user_id,
                timestamp: m.timestamp.as_ref().and_then(from_timestamp),
                text: text.text,
            });
        }
        let payload = Payload {
            container: None,
            raw_audio: None,
            audio_bytes: 0,
            audio_sha256: String::new(),
            chunk_sizes: Vec::new(),
            messages: stored,
        };
        self.store("txt", &conn.id, metadata.fields, payload, crid)
            .await
    }

    /// Records the call and turns the result into the gRPC answer.
    fn finish_upload(
        &self,
        method: &'static str,
        crid: Option<String>,
        result: Result<String, Failure>,
    ) -> Result<Response<UploadTalkResponse>, Status> {
        let mut inner = self.state.lock();
        match result {
            Ok(talk_id) => {
                inner.stats.uploads_ok += 1;
                inner.calls.push(RecordedCall {
                    method,
                    client_request_id: crid,
                    code: Code::Ok,
                });
                let mut resp = Response::new(UploadTalkResponse { talk_id });
                add_ids(resp.metadata_mut());
                Ok(resp)
            }
            Err(failure) => {
                let mut status = match failure {
                    Failure::Refused(s) => {
                        *inner
                            .stats
                            .uploads_rejected
                            .entry(format!("{:?}", s.code()))
                            .or_default() += 1;
                        s
                    }
                    // Counted by the `AbortWatch`.
                    Failure::Aborted(s) => s,
                    Failure::Reset => {
                        inner.stats.streams_reset += 1;
                        let mut s = Status::internal("injected fault: stream reset by the server");
                        s.metadata_mut()
                            .insert(super::RESET_MARKER, MetadataValue::from_static("1"));
                        s
                    }
                };
                inner.calls.push(RecordedCall {
                    method,
                    client_request_id: crid,
                    code: status.code(),
                });
                add_ids(status.metadata_mut());
                Err(status)
            }
        }
    }

    fn record(&self, method: &'static str, crid: Option<String>, code: Code) {
        self.state.lock().calls.push(RecordedCall {
            method,
            client_request_id: crid,
            code,
        });
    }

    fn search_inner(
        &self,
        request: Request<SearchTalkRequest>,
    ) -> Result<SearchTalkResponse, Status> {
        let principal = validate::auth(request.metadata(), &self.state.config)?;
        let req = request.into_inner();
        if req.project_id.is_empty() {
            return Err(Status::invalid_argument("project_id is required"));
        }
        let config = &self.state.config;
        let scope: Vec<&str> = if req.connection_id.is_empty() {
            config
                .connections
                .iter()
                .filter(|c| validate::allowed(c, &principal).is_ok())
                .map(|c| c.id.as_str())
                .collect()
        } else {
            vec![
                validate::connection(config, &principal, &req.connection_id)?
                    .id
                    .as_str(),
            ]
        };
        let page_size = match req.page_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            _ => return Err(Status::invalid_argument("page_size must be 1..1000")),
        };
        let offset: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("invalid page_token"))?
        };
        for f in &req.filters {
            check_filter(f)?;
        }
        let lag = chrono::Duration::from_std(self.state.config.search_lag).unwrap_or_default();
        let indexed_before = Utc::now() - lag;
        let mut inner = self.state.lock();
        inner.stats.searches += 1;
        let matching: Vec<&StoredTalk> = inner
            .talks
            .iter()
            .filter(|t| t.created_at <= indexed_before)
            .filter(|t| scope.contains(&t.connection_id.as_str()))
            .filter(|t| req.filters.iter().all(|f| matches(f, t)))
            .collect();
        let total = matching.len();
        let talk_ids: Vec<String> = matching
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|t| t.id.clone())
            .collect();
        let next = offset + page_size;
        Ok(SearchTalkResponse {
            talk_ids,
            talks_count: total as i64,
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
        })
    }

    fn get_inner(&self, request: Request<GetTalkRequest>) -> Result<GetTalkResponse, Status> {
        let principal = validate::auth(request.metadata(), &self.state.config)?;
        let req = request.into_inner();
        let config = &self.state.config;
        let mut inner = self.state.lock();
        inner.stats.gets += 1;
        let talk = inner
            .talks
            .iter()
            .filter(|t| req.talk_ids.contains(&t.id))
            .filter(|t| {
                config
                    .connections
                    .iter()
                    .any(|c| c.id == t.connection_id && validate::allowed(c, &principal).is_ok())
            })
            .map(|t| Talk {
                id: t.id.clone(),
                organization_id: req.organization_id.clone(),
                space_id: req.space_id.clone(),
                connection_id: t.connection_id.clone(),
                project_ids: if req.project_id.is_empty() {
                    vec![]
                } else {
                    vec![req.project_id.clone()]
                },
                created_at: Some(timestamp(t.created_at)),
                modified_at: Some(timestamp(t.modified_at)),
                talk_fields: t
                    .fields
                    .iter()
                    .map(|(name, value)| Field {
                        name: name.clone(),
                        value: value.clone(),
                        r#type: field_type(name) as i32,
                    })
                    .collect(),
                talk_state: Some(TalkState {
                    processing_state: ProcessingState::Success as i32,
                    algorithm_processing_infos: vec![],
                }),
                ..Default::default()
            })
            .collect();
        Ok(GetTalkResponse { talk })
    }
}

fn field_type(name: &str) -> FieldType {
    match name {
        "date" => FieldType::Date,
        "direction_outgoing" => FieldType::Boolean,
        _ => FieldType::String,
    }
}

fn check_filter(f: &Filter) -> Result<(), Status> {
    if !f.key.starts_with("userMeta.") {
        return Err(Status::invalid_argument(format!(
            "the emulator supports only userMeta.* filters, got {}",
            f.key
        )));
    }
    match f.filter {
        Some(
            filter::Filter::AnyMatch(_)
            | filter::Filter::BooleanMatch(_)
            | filter::Filter::DateRange(_),
        ) => Ok(()),
        _ => Err(Status::invalid_argument(
            "the emulator supports any_match, boolean_match and date_range filters",
        )),
    }
}

fn matches(f: &Filter, talk: &StoredTalk) -> bool {
    let key = f.key.trim_start_matches("userMeta.");
    let value = talk.fields.get(key);
    let hit = match (&f.filter, value) {
        (_, None) => false,
        (Some(filter::Filter::AnyMatch(m)), Some(v)) => m.values.iter().any(|x| x == v),
        (Some(filter::Filter::BooleanMatch(b)), Some(v)) => {
            v.parse::<bool>().is_ok_and(|x| x == b.value)
        }
        (Some(filter::Filter::DateRange(r)), Some(v)) => {
            let Some(d) = validate::parse_date(v) else {
                return f.inverse;
            };
            let (from_incl, to_incl) = r
                .bounds_inclusive
                .as_ref()
                .map_or((true, true), |b| (b.from_inclusive, b.to_inclusive));
            let after_from = r
                .from_value
                .as_ref()
                .and_then(from_timestamp)
                .is_none_or(|from| if from_incl { d >= from } else { d > from });
            let before_to = r
                .to_value
                .as_ref()
                .and_then(from_timestamp)
                .is_none_or(|to| if to_incl { d <= to } else { d < to });
            after_from && before_to
        }
        _ => false,
    };
    hit != f.inverse
}

#[tonic::async_trait]
impl TalkService for TalkServiceImpl {
    async fn upload_as_stream(
        &self,
        request: Request<Streaming<StreamTalkRequest>>,
    ) -> Result<Response<UploadTalkResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let mut watch = AbortWatch {
            state: &self.state,
            done: false,
        };
        let result = self.stream_upload(request, crid.clone()).await;
        watch.done = !matches!(result, Err(Failure::Aborted(_)));
        drop(watch);
        self.latency(&result).await;
        self.finish_upload("UploadAsStream", crid, result)
    }

    async fn upload(
        &self,
        request: Request<UploadTalkRequest>,
    ) -> Result<Response<UploadTalkResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let result = self.unary_upload(request, crid.clone()).await;
        self.latency(&result).await;
        self.finish_upload("Upload", crid, result)
    }

    async fn upload_text(
        &self,
        request: Request<UploadTextRequest>,
    ) -> Result<Response<UploadTextResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let result = self.text_upload(request, crid.clone()).await;
        self.latency(&result).await;
        self.finish_upload("UploadText", crid, result).map(|resp| {
            let (md, body, ext) = resp.into_parts();
            Response::from_parts(
                md,
                UploadTextResponse {
                    talk_id: body.talk_id,
                },
                ext,
            )
        })
    }

    async fn search(
        &self,
        request: Request<SearchTalkRequest>,
    ) -> Result<Response<SearchTalkResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let result = self.search_inner(request);
        self.record(
            "Search",
            crid,
            result.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        let mut resp = Response::new(result?);
        add_ids(resp.metadata_mut());
        Ok(resp)
    }

    async fn get(
        &self,
        request: Request<GetTalkRequest>,
    ) -> Result<Response<GetTalkResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let result = self.get_inner(request);
        self.record(
            "Get",
            crid,
            result.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        let mut resp = Response::new(result?);
        add_ids(resp.metadata_mut());
        Ok(resp)
    }
}

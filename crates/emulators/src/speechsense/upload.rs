//! The audio upload RPCs — `UploadAsStream`, `Upload` — and the checks every upload (`UploadText` too, in `text`)
//! runs in the real service's order before anything is stored: credentials and injected fault, connection,
//! connection kind, metadata keys, payload. A refusal after the connection is known names its type ([`noted`]).

use b24sense_speechsense::proto::{
    audio_metadata, audio_streaming_request, container_audio, raw_audio, stream_talk_request,
    AudioMetadata, AudioStreamingRequest, StreamTalkRequest, TalkMetadata, UploadTalkRequest,
};
use b24sense_speechsense::Container;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status, Streaming};

use super::service::TalkServiceImpl;
use super::talks::{container_from_proto, Payload};
use super::validate;
use super::{take_fault, ConnectionConfig, RawPcm, State};

/// Why an upload did not produce a talk id.
pub(super) enum Failure {
    Refused(Status),
    /// The client's stream broke before it half-closed.
    Aborted(Status),
    /// An injected fault: the server resets the stream (nothing stored).
    Reset,
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Refused(s)
    }
}

/// Counts an upload stream that broke before the client half-closed. hyper drops the handler when the client
/// resets the stream, so the count happens on drop unless the handler finished.
pub(super) struct AbortWatch<'a> {
    pub(super) state: &'a State,
    pub(super) done: bool,
}

impl Drop for AbortWatch<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.lock().stats.streams_aborted += 1;
        }
    }
}

/// Counts an `UploadAsStream` call as open from its creation until it is dropped (answered or reset).
pub(super) struct OpenStream<'a>(&'a State);

impl<'a> OpenStream<'a> {
    pub(super) fn new(state: &'a State) -> Self {
        let mut inner = state.lock();
        inner.upload_streams += 1;
        inner.stats.peak_upload_streams = inner.stats.peak_upload_streams.max(inner.upload_streams);
        OpenStream(state)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.lock().upload_streams -= 1;
    }
}

pub(super) fn invalid(msg: impl Into<String>) -> Failure {
    Failure::Refused(Status::invalid_argument(msg))
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

/// The connection kind must fit the RPC: audio uploads to audio connections, chats to chat connections
/// (the rule as we model it: the real service's reaction and wording are not documented).
fn check_kind(conn: &ConnectionConfig, audio: bool) -> Result<(), Failure> {
    match (audio, conn.kind.is_audio()) {
        (true, false) => Err(invalid(
            "audio goes to an audio connection (Upload, UploadAsStream); a chat connection takes UploadText",
        )),
        (false, true) => Err(invalid(
            "UploadText goes to a chat connection; an audio connection takes Upload or UploadAsStream",
        )),
        _ => Ok(()),
    }
}

/// Once the connection is known, a refusal of the talk names the connection's type
/// (`…; connection <id> is a chat connection`), so that the connection check can tell the types apart.
pub(super) fn noted(conn: &ConnectionConfig) -> impl Fn(Failure) -> Failure + '_ {
    move |failure| match failure {
        Failure::Refused(s)
            if matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition) =>
        {
            let message = format!("{}; {}", s.message(), conn.kind.refusal_note(&conn.id));
            Failure::Refused(Status::new(s.code(), message))
        }
        other => other,
    }
}

impl TalkServiceImpl {
    pub(super) fn auth_and_fault(&self, md: &MetadataMap) -> Result<String, Failure> {
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

    /// The checks every upload runs after the credentials: the connection, its kind, then the metadata keys.
    pub(super) fn talk_connection(
        &self,
        principal: &str,
        metadata: &TalkMetadata,
        audio: bool,
    ) -> Result<&ConnectionConfig, Failure> {
        let conn = validate::connection(&self.state.config, principal, &metadata.connection_id)?;
        check_kind(conn, audio)
            .and_then(|()| Ok(validate::fields(conn, &metadata.fields)?))
            .map_err(noted(conn))?;
        Ok(conn)
    }

    /// A unary upload's metadata (required) and its checked connection.
    pub(super) fn unary_talk(
        &self,
        principal: &str,
        metadata: Option<TalkMetadata>,
        audio: bool,
    ) -> Result<(TalkMetadata, &ConnectionConfig), Failure> {
        let metadata = metadata.ok_or_else(|| invalid("metadata is required"))?;
        let conn = self.talk_connection(principal, &metadata, audio)?;
        Ok((metadata, conn))
    }

    pub(super) async fn stream_upload(
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
        let conn = self.talk_connection(&principal, &metadata, true)?;
        self.stream_audio(conn, metadata, stream, reset_at, crid)
            .await
            .map_err(noted(conn))
    }

    /// The rest of an `UploadAsStream` once its talk metadata passed: the audio metadata, the chunks, the store.
    async fn stream_audio(
        &self,
        conn: &ConnectionConfig,
        metadata: TalkMetadata,
        mut stream: Streaming<StreamTalkRequest>,
        reset_at: Option<u64>,
        crid: Option<String>,
    ) -> Result<String, Failure> {
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
        let format = audio_format(&audio_meta)?;
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
        let payload = Payload::audio(format, hex::encode(hasher.finalize()), chunk_sizes);
        self.store("aud", &conn.id, metadata.fields, payload, crid)
            .await
    }

    pub(super) async fn unary_upload(
        &self,
        request: Request<UploadTalkRequest>,
        crid: Option<String>,
    ) -> Result<String, Failure> {
        let principal = self.auth_and_fault(request.metadata())?;
        let req = request.into_inner();
        let (metadata, conn) = self.unary_talk(&principal, req.metadata, true)?;
        let note = noted(conn);
        if !req.talk_id.is_empty() {
            if req.audio.is_some() {
                return Err(note(invalid("a metadata update must not carry audio")));
            }
            return self.update(&conn.id, &req.talk_id, metadata.fields);
        }
        let audio = req
            .audio
            .ok_or_else(|| note(invalid("audio is required")))?;
        let audio_meta = audio
            .audio_metadata
            .ok_or_else(|| note(invalid("audio.audio_metadata is required")))?;
        let format = audio_format(&audio_meta).map_err(&note)?;
        let data = audio.audio_data.map(|c| c.data).unwrap_or_default();
        self.state.lock().stats.bytes_received += data.len() as u64;
        if data.is_empty() {
            return Err(note(invalid("no audio data")));
        }
        let payload = Payload::audio(format, hex::encode(Sha256::digest(&data)), vec![data.len()]);
        self.store("aud", &conn.id, metadata.fields, payload, crid)
            .await
    }
}

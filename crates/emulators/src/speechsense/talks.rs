//! Storing talks: a new talk (then the after-store fault), or a metadata update of an existing one.

use std::collections::BTreeMap;

use b24sense_speechsense::proto::container_audio::ContainerAudioType;
use b24sense_speechsense::Container;
use chrono::Utc;
use rand::Rng;
use tonic::Status;

use super::service::TalkServiceImpl;
use super::upload::Failure;
use super::{take_fault, RawPcm, StoredMessage, StoredTalk};

/// What an upload stores, besides metadata.
pub(super) struct Payload {
    pub(super) container: Option<Container>,
    pub(super) raw_audio: Option<RawPcm>,
    pub(super) audio_bytes: u64,
    pub(super) audio_sha256: String,
    pub(super) chunk_sizes: Vec<usize>,
    pub(super) messages: Vec<StoredMessage>,
}

impl Payload {
    /// An audio talk: its format, the SHA-256 of its bytes and the sizes of the chunks they came in.
    pub(super) fn audio(
        (container, raw_audio): (Option<Container>, Option<RawPcm>),
        audio_sha256: String,
        chunk_sizes: Vec<usize>,
    ) -> Self {
        Payload {
            container,
            raw_audio,
            audio_bytes: chunk_sizes.iter().map(|&n| n as u64).sum(),
            audio_sha256,
            chunk_sizes,
            messages: Vec::new(),
        }
    }

    /// A chat talk: messages only.
    pub(super) fn text(messages: Vec<StoredMessage>) -> Self {
        Payload {
            container: None,
            raw_audio: None,
            audio_bytes: 0,
            audio_sha256: String::new(),
            chunk_sizes: Vec::new(),
            messages,
        }
    }
}

/// Maps the wire enum onto the core container (`None` for UNSPECIFIED).
pub(super) fn container_from_proto(value: ContainerAudioType) -> Option<Container> {
    match value {
        ContainerAudioType::Wav => Some(Container::Wav),
        ContainerAudioType::Mp3 => Some(Container::Mp3),
        ContainerAudioType::OggOpus => Some(Container::OggOpus),
        ContainerAudioType::Unspecified => None,
    }
}

fn random_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..17)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

impl TalkServiceImpl {
    /// Stores a new talk, then applies after-store faults.
    pub(super) async fn store(
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

    /// Metadata update: the talk must exist in the same connection; all fields are replaced.
    pub(super) fn update(
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
}

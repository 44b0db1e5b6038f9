//! The emulator's own rules for raw gRPC clients: stream order, unary `Upload`, metadata update, `Get`.

use b24sense_core::Container;
use b24sense_emulators::speechsense::DEFAULT_API_KEY;
use b24sense_speechsense::proto::talk_service_client::TalkServiceClient;
use b24sense_speechsense::proto::{
    audio_metadata, audio_streaming_request, stream_talk_request, AudioChunk, AudioMetadata,
    AudioRequest, AudioStreamingRequest, ContainerAudio, FieldType, GetTalkRequest,
    StreamTalkRequest, TalkMetadata, UploadTalkRequest,
};
use b24sense_speechsense::{CHUNK_SIZE, MAX_MESSAGE_SIZE};
use bytes::Bytes;
use futures::stream;
use tonic::Code;

use crate::{data, emulator, fields, sha256_hex, AUDIO_CONN};

fn auth<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Api-Key {DEFAULT_API_KEY}").parse().unwrap(),
    );
    r
}

fn container(container_audio_type: i32) -> AudioMetadata {
    AudioMetadata {
        audio_format: Some(audio_metadata::AudioFormat::ContainerAudio(
            ContainerAudio {
                container_audio_type,
            },
        )),
    }
}

fn audio_event(event: audio_streaming_request::AudioEvent) -> StreamTalkRequest {
    StreamTalkRequest {
        event: Some(stream_talk_request::Event::Audio(AudioStreamingRequest {
            audio_event: Some(event),
        })),
    }
}

/// A unary upload of a new talk.
fn new_talk(metadata: TalkMetadata, container_audio_type: i32, data: Bytes) -> UploadTalkRequest {
    UploadTalkRequest {
        metadata: Some(metadata),
        audio: Some(AudioRequest {
            audio_metadata: Some(container(container_audio_type)),
            audio_data: Some(AudioChunk { data }),
        }),
        talk_id: String::new(),
    }
}

/// A unary metadata update of talk `talk_id`.
fn update(metadata: TalkMetadata, talk_id: &str) -> UploadTalkRequest {
    UploadTalkRequest {
        metadata: Some(metadata),
        audio: None,
        talk_id: talk_id.into(),
    }
}

fn talk_metadata(call_id: &str) -> TalkMetadata {
    TalkMetadata {
        connection_id: AUDIO_CONN.into(),
        fields: fields(call_id),
        users: vec![],
    }
}

#[tokio::test]
async fn emulator_raw_protocol() {
    let emu = emulator().await;
    let mut raw = TalkServiceClient::connect(emu.endpoint()).await.unwrap();
    let metadata = talk_metadata("7");
    let meta_msg = StreamTalkRequest {
        event: Some(stream_talk_request::Event::Metadata(metadata.clone())),
    };
    let chunk_msg = audio_event(audio_streaming_request::AudioEvent::Chunk(AudioChunk {
        data: Bytes::from_static(b"abc"),
    }));
    let unspecified = audio_event(audio_streaming_request::AudioEvent::AudioMetadata(
        container(0),
    ));
    for (case, second) in [
        ("a chunk before the audio metadata", chunk_msg),
        ("an UNSPECIFIED container", unspecified),
    ] {
        let status = raw
            .upload_as_stream(auth(stream::iter(vec![meta_msg.clone(), second])))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
    }

    // Unary upload, then a metadata update of the same talk.
    let req = new_talk(metadata.clone(), 1, Bytes::from_static(b"RIFF....WAVE"));
    let resp = raw.upload(auth(req)).await.unwrap();
    assert!(resp.metadata().get("x-request-id").is_some());
    let id = resp.into_inner().talk_id;
    assert_eq!(
        emu.talk(&id).unwrap().audio_sha256,
        sha256_hex(b"RIFF....WAVE")
    );
    let mut updated = metadata.clone();
    updated.fields.insert("operator_name".into(), "Пётр".into());
    assert_eq!(
        raw.upload(auth(update(updated, &id)))
            .await
            .unwrap()
            .into_inner()
            .talk_id,
        id
    );
    assert_eq!(emu.talk(&id).unwrap().fields["operator_name"], "Пётр");
    assert_eq!(
        raw.upload(auth(update(metadata, "audnonexistent000000")))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A single Upload above tonic's default 4 MiB decoding limit.
    let big = Bytes::from(data(5 * CHUNK_SIZE));
    let req = new_talk(talk_metadata("8"), 3, big.clone());
    let mut raw_big = raw.clone().max_encoding_message_size(MAX_MESSAGE_SIZE);
    let big_id = raw_big
        .upload(auth(req))
        .await
        .unwrap()
        .into_inner()
        .talk_id;
    let big_talk = emu.talk(&big_id).unwrap();
    assert_eq!(big_talk.audio_sha256, sha256_hex(&big));
    assert_eq!(big_talk.container, Some(Container::Mp3));

    let req = GetTalkRequest {
        project_id: "p".into(),
        talk_ids: vec![id.clone()],
        ..Default::default()
    };
    let talks = raw.get(auth(req)).await.unwrap().into_inner().talk;
    assert_eq!(talks.len(), 1);
    assert_eq!(talks[0].id, id);
    let date = talks[0]
        .talk_fields
        .iter()
        .find(|f| f.name == "date")
        .unwrap();
    assert_eq!(date.r#type, FieldType::Date as i32);
    assert_eq!(emu.talk_count(), 2);
}

//! The SpeechSense emulator's connection types, seen by a raw gRPC client over a socket: the default configuration
//! has one connection of each type, audio is accepted only by the audio ones and chats only by the chat one, and
//! every refusal names the connection's type.

use std::collections::BTreeMap;

use b24sense_emulators::speechsense::{
    Code, ConnectionKind, SpeechSenseConfig, SpeechSenseEmulator, DEFAULT_API_KEY,
};
use b24sense_speechsense::proto::talk_service_client::TalkServiceClient;
use b24sense_speechsense::proto::{
    audio_metadata, message, AudioChunk, AudioMetadata, AudioRequest, ContainerAudio, Message,
    TalkMetadata, TextContent, TextPayload, UploadTalkRequest, UploadTextRequest,
};
use b24sense_speechsense::{container_to_proto, Container};
use tonic::transport::Channel;

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Api-Key {DEFAULT_API_KEY}").parse().unwrap(),
    );
    r
}

fn metadata(connection_id: &str) -> TalkMetadata {
    let fields: BTreeMap<String, String> = [
        ("operator_name", "Иван"),
        ("operator_id", "17"),
        ("client_name", "Клиент"),
        ("client_id", "CONTACT_3"),
        ("date", "2025-04-24T11:34:19Z"),
        ("direction_outgoing", "false"),
        ("language", "ru-RU"),
        ("id", "42"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    TalkMetadata {
        connection_id: connection_id.to_string(),
        fields,
        users: vec![],
    }
}

async fn upload_audio(
    raw: &mut TalkServiceClient<Channel>,
    connection_id: &str,
) -> Result<String, tonic::Status> {
    let req = UploadTalkRequest {
        metadata: Some(metadata(connection_id)),
        audio: Some(AudioRequest {
            audio_metadata: Some(AudioMetadata {
                audio_format: Some(audio_metadata::AudioFormat::ContainerAudio(
                    ContainerAudio {
                        container_audio_type: container_to_proto(Container::Mp3) as i32,
                    },
                )),
            }),
            audio_data: Some(AudioChunk {
                data: vec![0xFF, 0xFB, 0x90, 0x00].into(),
            }),
        }),
        talk_id: String::new(),
    };
    Ok(raw.upload(authorized(req)).await?.into_inner().talk_id)
}

async fn upload_text(
    raw: &mut TalkServiceClient<Channel>,
    connection_id: &str,
) -> Result<String, tonic::Status> {
    let message = |user_id: &str, seconds: i64, text: &str| Message {
        user_id: user_id.into(),
        timestamp: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        payload: Some(message::Payload::Text(TextPayload { text: text.into() })),
    };
    let req = UploadTextRequest {
        metadata: Some(metadata(connection_id)),
        text_content: Some(TextContent {
            messages: vec![
                message("CONTACT_3", 1_745_494_459, "Где мой заказ? 📦"),
                message("17", 1_745_494_500, "Уже в пути 🚚"),
            ],
        }),
        talk_id: String::new(),
    };
    Ok(raw.upload_text(authorized(req)).await?.into_inner().talk_id)
}

#[tokio::test]
async fn audio_only_to_audio_connections_and_chats_only_to_chat_connections() {
    let config = SpeechSenseConfig::default();
    let ids: Vec<(ConnectionKind, String)> = ConnectionKind::ALL
        .into_iter()
        .map(|kind| {
            (
                kind,
                config
                    .connection_id(kind)
                    .expect("one of each type")
                    .to_string(),
            )
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = ids.iter().map(|(_, id)| id).collect();
    assert_eq!(distinct.len(), 3, "distinct IDs: {ids:?}");

    let emu = SpeechSenseEmulator::start(config).await.unwrap();
    let mut raw = TalkServiceClient::connect(emu.endpoint()).await.unwrap();
    let mut stored = 0;
    for (kind, id) in &ids {
        for audio in [true, false] {
            let result = if audio {
                upload_audio(&mut raw, id).await
            } else {
                upload_text(&mut raw, id).await
            };
            let case = format!("{} to {id}", if audio { "audio" } else { "chat" });
            if audio == kind.is_audio() {
                let talk_id = result.unwrap_or_else(|s| panic!("{case}: {s:?}"));
                let talk = emu.talk(&talk_id).expect("stored");
                assert_eq!(&talk.connection_id, id, "{case}");
                assert_eq!(talk.messages.len(), if audio { 0 } else { 2 }, "{case}");
                stored += 1;
            } else {
                let status = result.expect_err(&case);
                assert_eq!(status.code(), Code::InvalidArgument, "{case}");
                let named = format!("connection {id} is a {} connection", kind.phrase());
                assert!(status.message().ends_with(&named), "{case}: {status:?}");
            }
        }
    }
    assert_eq!(stored, 3);
    assert_eq!(emu.talk_count(), 3);
    assert_eq!(emu.stats().rejected(Code::InvalidArgument), 3);
}

#[tokio::test]
async fn chat_text_is_kept_byte_for_byte() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let chat = emu
        .config()
        .connection_id(ConnectionKind::Chat)
        .unwrap()
        .to_string();
    let mut raw = TalkServiceClient::connect(emu.endpoint()).await.unwrap();
    let id = upload_text(&mut raw, &chat).await.unwrap();
    let talk = emu.talk(&id).unwrap();
    let texts: Vec<&str> = talk.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["Где мой заказ? 📦", "Уже в пути 🚚"]);
    assert_eq!(talk.messages[0].timestamp.timestamp(), 1_745_494_459);
}

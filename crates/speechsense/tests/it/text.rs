//! Chat uploads (`UploadText`): accepted on a chat connection only, every message from a participant named in the
//! metadata and with a timestamp, Unicode kept byte for byte, found by `Search` like an audio talk.

use std::collections::BTreeMap;
use std::time::Duration;

use b24sense_core::ErrorClass;
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator, DEFAULT_API_KEY};
use b24sense_speechsense::proto::talk_service_client::TalkServiceClient;
use b24sense_speechsense::proto::{
    message, Message, TalkMetadata, TextContent, TextPayload, UploadTextRequest,
};
use b24sense_speechsense::{
    ChatMessage, ClientConfig, ConnectionKind, Credentials, Error, SearchScope, SpeechSenseClient,
};
use chrono::{TimeZone, Utc};
use tonic::Code;

use crate::{chat, client, emulator, fields, upload_mp3, AUDIO_CONN, CHAT_CONN, MONO_CONN};

/// Chat fields: the call fields plus a bot.
fn chat_fields(id: &str) -> BTreeMap<String, String> {
    let mut f = fields(id);
    f.insert("bot_id".into(), "bot-1".into());
    f.insert("bot_name".into(), "Бот 🤖".into());
    f
}

#[tokio::test]
async fn chat_is_stored_with_roles_order_and_unicode_intact() {
    let emu = emulator().await;
    let t0 = Utc.with_ymd_and_hms(2025, 4, 24, 11, 34, 19).unwrap();
    let texts = [
        ("COMPANY_5", "Здравствуйте! Заказ №42 не пришёл 😡"),
        ("bot-1", "Оператор скоро ответит.\nПодождите, пожалуйста 🙏"),
        ("17", "Добрый день! Проверю 👩🏽‍💻 — 中文, العربية, e\u{301}"),
        ("COMPANY_5", "Спасибо 👍🏻"),
    ];
    let messages: Vec<ChatMessage> = texts
        .iter()
        .enumerate()
        .map(|(i, (user, text))| ChatMessage {
            user_id: user.to_string(),
            timestamp: t0 + chrono::Duration::milliseconds(1_500 * i as i64 + 7),
            text: text.to_string(),
        })
        .collect();
    let id = client(&emu)
        .upload_text(CHAT_CONN, &chat_fields("chat-1"), &messages)
        .await
        .unwrap();
    assert!(id.starts_with("txt") && id.len() == 20, "{id}");
    let talk = emu.talk(&id).expect("stored");
    assert_eq!(talk.connection_id, CHAT_CONN);
    assert_eq!(talk.fields, chat_fields("chat-1"));
    assert_eq!(talk.audio_bytes, 0);
    let stored: Vec<ChatMessage> = talk
        .messages
        .iter()
        .map(|m| ChatMessage {
            user_id: m.user_id.clone(),
            timestamp: m.timestamp,
            text: m.text.clone(),
        })
        .collect();
    assert_eq!(stored, messages, "order, authors, timestamps (ms) and text");
}

#[tokio::test]
async fn chat_refusals_store_nothing() {
    let emu = emulator().await;
    let c = client(&emu);
    // An audio connection: every chat of the run would fail the same way, so the error is fatal.
    for (conn, kind) in [
        (AUDIO_CONN, ConnectionKind::TwoChannelAudio),
        (MONO_CONN, ConnectionKind::OneChannelAudio),
    ] {
        let err = c
            .upload_text(conn, &fields("1"), &chat())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::WrongConnectionKind { found, message }
                if *found == kind && message.contains(&format!("connection {conn} is a"))),
            "{conn}: {err:?}"
        );
        assert_eq!(err.class(), ErrorClass::Fatal, "{conn}");
        assert_eq!(err.grpc_code(), Some(Code::InvalidArgument), "{conn}");
    }
    // This dialog's own data: permanent for this chat only.
    let mut stranger = chat();
    stranger[1].user_id = "18".into();
    let cases = [
        (
            "a user_id that is no participant",
            stranger,
            "message 1: user_id \"18\"",
        ),
        ("an empty dialog", vec![], "no messages"),
    ];
    for (case, messages, phrase) in cases {
        let err = c
            .upload_text(CHAT_CONN, &fields("1"), &messages)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::InvalidData { code: Code::InvalidArgument, message } if message.contains(phrase)
            ),
            "{case}: {err:?}"
        );
        assert_eq!(err.class(), ErrorClass::Permanent, "{case}");
    }
    assert_eq!(emu.talk_count(), 0);
    assert_eq!(emu.stats().rejected(Code::InvalidArgument), 4);
}

/// What the typed client cannot send: a message without a timestamp or without text.
#[tokio::test]
async fn messages_without_timestamp_or_text_are_refused() {
    let emu = emulator().await;
    let mut raw = TalkServiceClient::connect(emu.endpoint()).await.unwrap();
    let message = |timestamp: Option<i64>, text: Option<&str>| Message {
        user_id: "17".into(),
        timestamp: timestamp.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        payload: text.map(|t| message::Payload::Text(TextPayload { text: t.into() })),
    };
    let cases = [
        (
            "no timestamp on the second message",
            vec![
                message(Some(1_745_494_459), Some("a")),
                message(None, Some("b")),
            ],
            "message 1: timestamp is required",
        ),
        (
            "no text",
            vec![message(Some(1_745_494_459), None)],
            "message 0: a text payload is required",
        ),
    ];
    for (case, messages, phrase) in cases {
        let mut req = tonic::Request::new(UploadTextRequest {
            metadata: Some(TalkMetadata {
                connection_id: CHAT_CONN.into(),
                fields: fields("1"),
                users: vec![],
            }),
            text_content: Some(TextContent { messages }),
            talk_id: String::new(),
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Api-Key {DEFAULT_API_KEY}").parse().unwrap(),
        );
        let status = raw.upload_text(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        assert!(status.message().contains(phrase), "{case}: {status:?}");
    }
    assert_eq!(emu.talk_count(), 0);
}

#[tokio::test]
async fn chat_talk_is_found_by_search_on_its_id() {
    let emu = emulator().await;
    let c = client(&emu);
    let chat_talk = c
        .upload_text(CHAT_CONN, &fields("session-77"), &chat())
        .await
        .unwrap();
    c.upload_text(CHAT_CONN, &fields("session-78"), &chat())
        .await
        .unwrap();
    // An audio talk with the same `id` lives in another connection.
    let audio_talk = upload_mp3(&c, AUDIO_CONN, &fields("session-77"), 64)
        .await
        .unwrap();
    let scope = |connection_id: &str| SearchScope {
        organization_id: "org".into(),
        space_id: "space".into(),
        project_id: "proj".into(),
        connection_id: connection_id.into(),
    };
    let by_id = vec![("userMeta.id".to_string(), vec!["session-77".to_string()])];
    assert_eq!(
        c.search(&scope(CHAT_CONN), &by_id).await.unwrap(),
        vec![chat_talk.clone()]
    );
    assert_eq!(
        c.search(&scope(AUDIO_CONN), &by_id).await.unwrap(),
        vec![audio_talk]
    );
    let mut everywhere = c.search(&scope(""), &by_id).await.unwrap();
    everywhere.sort();
    assert_eq!(everywhere.len(), 2, "{everywhere:?}");
    assert!(everywhere.contains(&chat_talk));
}

#[tokio::test]
async fn chat_answer_lost_after_the_store_is_in_doubt() {
    let config = SpeechSenseConfig {
        upload_latency: Duration::from_secs(3),
        ..SpeechSenseConfig::default()
    };
    let emu = SpeechSenseEmulator::start(config).await.unwrap();
    let mut cfg = ClientConfig::new(emu.endpoint(), Credentials::api_key(DEFAULT_API_KEY));
    cfg.unary_timeout = Duration::from_millis(300);
    let c = SpeechSenseClient::new(cfg).unwrap();
    let err = c
        .upload_text(CHAT_CONN, &fields("1"), &chat())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InDoubt {
                code: Some(Code::DeadlineExceeded),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::InDoubt);
    assert_eq!(
        emu.talk_count(),
        1,
        "stored although the id never came back"
    );
}

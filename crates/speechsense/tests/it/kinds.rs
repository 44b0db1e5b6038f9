//! The connection check tells a two-channel audio connection from a one-channel or chat one, refuses the wrong
//! type with a message naming what was given and what is needed, and never stores a talk doing so.

use b24sense_emulators::speechsense::{
    Code, ConnectionConfig, SpeechSenseConfig, SpeechSenseEmulator,
};
use b24sense_speechsense::{ConnectionCheck, ConnectionKind, Error, Lang};

use crate::{client, emulator, AUDIO_CONN, CHAT_CONN, MONO_CONN};

#[tokio::test]
async fn check_tells_connection_types_apart() {
    let emu = emulator().await;
    let c = client(&emu);
    let connections = [
        (AUDIO_CONN, ConnectionKind::TwoChannelAudio),
        (MONO_CONN, ConnectionKind::OneChannelAudio),
        (CHAT_CONN, ConnectionKind::Chat),
    ];
    let mut checks = 0;
    for needed in ConnectionKind::ALL {
        for (conn, found) in connections {
            let verdict = c.check_connection_as(conn, needed).await.unwrap();
            let expected = if found == needed {
                ConnectionCheck::Ok
            } else {
                ConnectionCheck::WrongKind {
                    connection_id: conn.to_string(),
                    found,
                    needed,
                }
            };
            assert_eq!(verdict, expected, "{conn} checked for {needed:?}");
            checks += 1;
        }
    }
    // The probe stored nothing, and each check was one refused metadata-only stream.
    assert_eq!(emu.talk_count(), 0, "a check never creates a talk");
    assert_eq!(emu.stats().uploads_ok, 0);
    let calls = emu.calls();
    assert_eq!(calls.len(), checks);
    assert!(
        calls
            .iter()
            .all(|call| call.method == "UploadAsStream" && call.code == Code::InvalidArgument),
        "{calls:?}"
    );
}

#[tokio::test]
async fn check_for_calls_refuses_chat_and_mono_connections_in_words() {
    let emu = emulator().await;
    let c = client(&emu);
    assert_eq!(
        c.check_connection(AUDIO_CONN).await.unwrap(),
        ConnectionCheck::Ok
    );
    // (connection, language, the message's start)
    let cases = [
        (
            CHAT_CONN,
            Lang::Ru,
            "Подключение conn-chat — для чатов; для звонков нужно подключение для двухканального аудио.",
        ),
        (
            CHAT_CONN,
            Lang::En,
            "Connection conn-chat is for chats; calls need a connection for two-channel audio.",
        ),
        (
            MONO_CONN,
            Lang::Ru,
            "Подключение conn-mono — для одноканального аудио; для звонков нужно подключение для двухканального аудио.",
        ),
        (
            MONO_CONN,
            Lang::En,
            "Connection conn-mono is for one-channel audio; calls need a connection for two-channel audio.",
        ),
    ];
    for (conn, lang, start) in cases {
        let verdict = c.check_connection(conn).await.unwrap();
        assert!(!verdict.is_ok(), "{conn}: {verdict:?}");
        let message = verdict.message(lang);
        assert!(message.starts_with(start), "{conn} {lang:?}: {message}");
    }
    assert_eq!(emu.talk_count(), 0);
}

#[tokio::test]
async fn type_is_told_when_the_metadata_passes_too() {
    // A connection that requires no keys: the probe's empty metadata passes, and the refusal is for the missing
    // audio — it still names the connection's type.
    let mut bare = ConnectionConfig::chat("conn-bare-chat");
    bare.required_keys.clear();
    let mut config = SpeechSenseConfig::default();
    config.connections.push(bare);
    let emu = SpeechSenseEmulator::start(config).await.unwrap();
    let c = client(&emu);
    assert_eq!(
        c.check_connection_as("conn-bare-chat", ConnectionKind::Chat)
            .await
            .unwrap(),
        ConnectionCheck::Ok
    );
    assert!(matches!(
        c.check_connection("conn-bare-chat").await.unwrap(),
        ConnectionCheck::WrongKind {
            found: ConnectionKind::Chat,
            needed: ConnectionKind::TwoChannelAudio,
            ..
        }
    ));
    assert_eq!(emu.talk_count(), 0);
}

#[tokio::test]
async fn key_and_connection_errors_come_before_the_type() {
    let emu = emulator().await;
    let c = client(&emu);
    assert!(matches!(
        c.check_connection_as("conn-nope", ConnectionKind::Chat)
            .await
            .unwrap(),
        ConnectionCheck::UnknownConnection(_)
    ));
    let bad = crate::client_with(
        &emu,
        b24sense_speechsense::Credentials::api_key("wrong-key"),
    );
    assert!(matches!(
        bad.check_connection(CHAT_CONN).await.unwrap(),
        ConnectionCheck::BadKey(_)
    ));
    // A server fault is no verdict at all.
    emu.inject(Code::Unavailable, 1);
    let err = c.check_connection(CHAT_CONN).await.unwrap_err();
    assert!(
        matches!(err, Error::Retryable { .. }) && err.class().is_retryable(),
        "{err:?}"
    );
    assert_eq!(emu.talk_count(), 0);
}

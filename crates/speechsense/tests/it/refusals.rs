//! Refusals and how the client classifies them: bad keys (never shown), unknown or forbidden connections, bad
//! metadata, bad endpoints, and unreachable servers (retryable, never a verdict).

use std::collections::BTreeMap;

use b24sense_core::{Container, ErrorClass};
use b24sense_emulators::speechsense::{
    ConnectionConfig, SpeechSenseConfig, SpeechSenseEmulator, DEFAULT_API_KEY, DEFAULT_BEARER_TOKEN,
};
use b24sense_speechsense::proto::talk_service_client::TalkServiceClient;
use b24sense_speechsense::proto::UploadTalkRequest;
use b24sense_speechsense::{
    ClientConfig, ConnectionCheck, ConnectionKind, Credentials, Error, Lang, SpeechSenseClient,
};
use futures::stream::{self, StreamExt};
use tonic::Code;

use crate::{
    client, client_with, data, emulator, fields, source, upload_mp3, AUDIO_CONN, CHAT_CONN,
};

/// The default connections plus `conn-private`, which only someone else's key may use.
async fn with_private_connection() -> SpeechSenseEmulator {
    let mut config = SpeechSenseConfig::default();
    config
        .connections
        .push(ConnectionConfig::two_channel("conn-private").allow_only(&["someone-else"]));
    SpeechSenseEmulator::start(config).await.unwrap()
}

#[tokio::test]
async fn wrong_key_is_bad_key_and_never_shown() {
    let emu = emulator().await;
    let secret = "AQVNwrong-secret-0123456789abcdefghijklm";
    let c = client_with(&emu, Credentials::api_key(secret));
    let err = upload_mp3(&c, AUDIO_CONN, &fields("1"), 100)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadKey(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert_eq!(err.grpc_code(), Some(Code::Unauthenticated));
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{:?}", c.config()),
        format!("{c:?}"),
    ] {
        assert!(!text.contains(secret), "secret leaked: {text}");
    }
    let err = c
        .upload_text(CHAT_CONN, &fields("1"), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadKey(_)) && !err.to_string().contains(secret));

    // Unknown scheme and no header at all are refused the same way.
    let c = client_with(&emu, Credentials::bearer(DEFAULT_API_KEY));
    assert!(matches!(
        c.check_connection(AUDIO_CONN).await.unwrap(),
        ConnectionCheck::BadKey(_)
    ));
    let mut raw = TalkServiceClient::connect(emu.endpoint()).await.unwrap();
    let status = raw.upload(UploadTalkRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "IAM token or API key has to be passed in request"
    );
    assert_eq!(emu.talk_count(), 0);
    assert_eq!(emu.stats().rejected(Code::Unauthenticated), 4);
}

type Fields = BTreeMap<String, String>;

#[tokio::test]
async fn connection_errors_are_classified() {
    let emu = with_private_connection().await;
    let c = client(&emu);
    // (case, connection, change to the metadata, expected error, its class, a word its text names)
    type Case = (
        &'static str,
        &'static str,
        fn(&mut Fields),
        fn(&Error) -> bool,
        Option<ErrorClass>,
        Option<&'static str>,
    );
    let cases: [Case; 6] = [
        (
            "unknown connection",
            "conn-nope",
            |_| {},
            |e| matches!(e, Error::UnknownConnection(_)),
            Some(ErrorClass::Fatal),
            None,
        ),
        (
            "someone else's connection",
            "conn-private",
            |_| {},
            |e| matches!(e, Error::NoAccess(_)),
            Some(ErrorClass::Fatal),
            None,
        ),
        (
            "a required key missing",
            AUDIO_CONN,
            |f| {
                f.remove("language");
            },
            |e| {
                matches!(
                    e,
                    Error::InvalidData {
                        code: Code::InvalidArgument,
                        ..
                    }
                )
            },
            Some(ErrorClass::Permanent),
            Some("language"),
        ),
        (
            "a date not in ISO 8601",
            AUDIO_CONN,
            |f| {
                f.insert("date".into(), "24.04.2025".into());
            },
            |e| matches!(e, Error::InvalidData { .. }),
            None,
            None,
        ),
        (
            "a value over 1024 bytes",
            AUDIO_CONN,
            |f| {
                f.insert("comment".into(), "x".repeat(1025));
            },
            |e| matches!(e, Error::InvalidData { .. }),
            None,
            None,
        ),
        (
            // Every upload of the run would fail the same way: fatal, not one call's data.
            "audio into a chat connection",
            CHAT_CONN,
            |_| {},
            |e| {
                matches!(
                    e,
                    Error::WrongConnectionKind {
                        found: ConnectionKind::Chat,
                        ..
                    }
                )
            },
            Some(ErrorClass::Fatal),
            Some("connection conn-chat is a chat connection"),
        ),
    ];
    for (case, conn, edit, expected, class, mentions) in cases {
        let mut f = fields("1");
        edit(&mut f);
        let err = c
            .upload_audio(conn, &f, Container::Mp3, source(&data(1000), &[300]))
            .await
            .unwrap_err();
        assert!(expected(&err), "{case}: {err:?}");
        if let Some(class) = class {
            assert_eq!(err.class(), class, "{case}");
        }
        if let Some(word) = mentions {
            assert!(err.to_string().contains(word), "{case}: {err}");
        }
    }
    // Empty audio.
    let err = c
        .upload_audio(
            AUDIO_CONN,
            &fields("1"),
            Container::Mp3,
            stream::empty().boxed(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidData { .. }), "{err:?}");
    assert_eq!(emu.talk_count(), 0);
}

#[tokio::test]
async fn check_connection_outcomes() {
    let emu = with_private_connection().await;
    let c = client(&emu);

    let ok = c.check_connection(AUDIO_CONN).await.unwrap();
    assert_eq!(ok, ConnectionCheck::Ok);
    assert_eq!(ok.message(Lang::Ru), "Успешный запрос к SpeechSense");
    assert_eq!(ok.message(Lang::En), "Successful request to SpeechSense");

    let bearer = client_with(&emu, Credentials::bearer(DEFAULT_BEARER_TOKEN));
    let bad_key = client_with(&emu, Credentials::api_key("nope-nope"));
    // (case, client, connection, expected verdict, a phrase of its message)
    type Case<'a> = (
        &'static str,
        &'a SpeechSenseClient,
        &'static str,
        fn(&ConnectionCheck) -> bool,
        Option<(Lang, &'static str)>,
    );
    let cases: [Case; 5] = [
        (
            "an IAM token",
            &bearer,
            AUDIO_CONN,
            |v| *v == ConnectionCheck::Ok,
            None,
        ),
        (
            "a wrong key",
            &bad_key,
            AUDIO_CONN,
            |v| matches!(v, ConnectionCheck::BadKey(_)),
            Some((Lang::Ru, "API-ключ")),
        ),
        (
            "someone else's connection",
            &c,
            "conn-private",
            |v| matches!(v, ConnectionCheck::NoAccess(_)),
            None,
        ),
        (
            "an unknown connection",
            &c,
            "conn-nope",
            |v| matches!(v, ConnectionCheck::UnknownConnection(_)),
            Some((Lang::En, "connection ID")),
        ),
        // An empty id must not look like success (the server would answer INVALID_ARGUMENT).
        (
            "an empty connection id",
            &c,
            " ",
            |v| matches!(v, ConnectionCheck::UnknownConnection(_)),
            None,
        ),
    ];
    for (case, client, conn, expected, phrase) in cases {
        let verdict = client.check_connection(conn).await.unwrap();
        assert!(expected(&verdict), "{case}: {verdict:?}");
        if let Some((lang, phrase)) = phrase {
            assert!(
                verdict.message(lang).contains(phrase),
                "{case}: {verdict:?}"
            );
        }
    }
    assert_eq!(emu.talk_count(), 0, "a check never creates a talk");

    // Nothing listening: a network problem, retryable, not a verdict.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = SpeechSenseClient::new(ClientConfig::new(
        format!("http://127.0.0.1:{port}"),
        Credentials::api_key("k-k-k-k"),
    ))
    .unwrap();
    assert_every_call_retryable(&dead, "nothing listening").await;
}

/// A server the client cannot talk to fails every call as retryable: a connect failure is never in doubt.
async fn assert_every_call_retryable(c: &SpeechSenseClient, case: &str) {
    let err = c.check_connection(AUDIO_CONN).await.unwrap_err();
    assert!(err.class().is_retryable(), "{case}: check: {err:?}");
    let err = upload_mp3(c, AUDIO_CONN, &fields("1"), 10)
        .await
        .unwrap_err();
    assert!(
        err.class().is_retryable(),
        "{case}: connect failure must not be in doubt: {err:?}"
    );
    let err = c
        .upload_text(CHAT_CONN, &fields("1"), &[])
        .await
        .unwrap_err();
    assert!(
        err.class().is_retryable(),
        "{case}: connect failure must not be in doubt: {err:?}"
    );
}

#[tokio::test]
async fn endpoint_validation() {
    for bad in [
        "",
        "not a url",
        "ftp://host:1",
        "http://",
        "https://host:443/path",
    ] {
        let err =
            SpeechSenseClient::new(ClientConfig::new(bad, Credentials::api_key("k"))).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidEndpoint(e) if e == bad.trim()),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains(bad), "{err}");
    }
    // TLS setup for the production endpoint works without connecting.
    SpeechSenseClient::new(ClientConfig::production(Credentials::api_key("k"))).unwrap();
}

#[tokio::test]
async fn tls_handshake_failure_is_retryable() {
    // https:// against the plaintext emulator: the TLS stack runs (no missing crypto provider) and fails cleanly.
    let emu = emulator().await;
    let endpoint = emu.endpoint().replace("http://", "https://");
    let c = SpeechSenseClient::new(ClientConfig::new(
        endpoint,
        Credentials::api_key(DEFAULT_API_KEY),
    ))
    .unwrap();
    assert_every_call_retryable(&c, "TLS against plaintext").await;
    assert_eq!(emu.talk_count(), 0);
}

#[tokio::test]
async fn strict_connection_rejects_undeclared_keys() {
    let mut strict = ConnectionConfig::two_channel("conn-strict");
    strict.strict = true;
    let mut config = SpeechSenseConfig::default();
    config.connections.push(strict);
    let emu = SpeechSenseEmulator::start(config).await.unwrap();
    let c = client(&emu);
    let mut f = fields("1");
    upload_mp3(&c, "conn-strict", &f, 10).await.unwrap();
    f.insert("not_declared".into(), "x".into());
    let err = upload_mp3(&c, "conn-strict", &f, 10).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidData { message, .. } if message.contains("not_declared")),
        "{err:?}"
    );
    // The default (lenient) connection ignores it, as the real service seems to.
    upload_mp3(&c, AUDIO_CONN, &f, 10).await.unwrap();
    assert_eq!(emu.talk_count(), 2);
}

//! The client against the in-repo SpeechSense emulator, over real sockets on 127.0.0.1.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use b24sense_core::{Container, ErrorClass};
use b24sense_emulators::speechsense::{
    ConnectionConfig, SpeechSenseConfig, SpeechSenseEmulator, DEFAULT_API_KEY, DEFAULT_BEARER_TOKEN,
};
use b24sense_speechsense::proto::talk_service_client::TalkServiceClient;
use b24sense_speechsense::proto::{
    audio_metadata, audio_streaming_request, stream_talk_request, AudioChunk, AudioMetadata,
    AudioRequest, AudioStreamingRequest, ContainerAudio, GetTalkRequest, StreamTalkRequest,
    TalkMetadata, UploadTalkRequest,
};
use b24sense_speechsense::{
    ChatMessage, ClientConfig, ConnectionCheck, Credentials, Error, Lang, SearchScope, SourceError,
    SpeechSenseClient, CHUNK_SIZE,
};
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use sha2::{Digest, Sha256};
use tonic::Code;

const AUDIO_CONN: &str = "conn-two-channel";
const CHAT_CONN: &str = "conn-chat";

fn fields(call_id: &str) -> BTreeMap<String, String> {
    [
        ("operator_name", "Иван Петров"),
        ("operator_id", "17"),
        ("client_name", "ООО Ромашка"),
        ("client_id", "COMPANY_5"),
        ("date", "2025-04-24T14:34:19+03:00"),
        ("direction_outgoing", "true"),
        ("language", "ru-RU"),
        ("id", call_id),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn client_with(emu: &SpeechSenseEmulator, credentials: Credentials) -> SpeechSenseClient {
    SpeechSenseClient::new(ClientConfig::new(emu.endpoint(), credentials)).expect("client")
}

fn client(emu: &SpeechSenseEmulator) -> SpeechSenseClient {
    client_with(emu, Credentials::api_key(DEFAULT_API_KEY))
}

/// Deterministic pseudo-random bytes (so a hash mismatch cannot hide behind repeated patterns).
fn data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `bytes` cut into pieces of the given sizes, cycling.
fn source(bytes: &[u8], sizes: &[usize]) -> BoxStream<'static, Result<Bytes, SourceError>> {
    let mut items = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = sizes[i % sizes.len()].min(bytes.len() - pos);
        items.push(Ok(Bytes::copy_from_slice(&bytes[pos..pos + n])));
        pos += n;
        i += 1;
    }
    stream::iter(items).boxed()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Waits (bounded) for a condition on the emulator.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn upload_stores_exact_bytes_in_exact_mebibyte_chunks() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let audio = data(3 * CHUNK_SIZE + 12_345);
    let f = fields("101");
    let talk_id = client(&emu)
        .upload_audio(
            AUDIO_CONN,
            &f,
            Container::Mp3,
            source(&audio, &[777_777, 1, 65_537, 1_500_000, 3]),
        )
        .await
        .expect("upload");
    assert!(
        talk_id.starts_with("aud") && talk_id.len() == 20,
        "{talk_id}"
    );
    let talk = emu.talk(&talk_id).expect("stored");
    assert_eq!(talk.connection_id, AUDIO_CONN);
    assert_eq!(talk.audio_bytes, audio.len() as u64);
    assert_eq!(talk.audio_sha256, sha256_hex(&audio));
    assert_eq!(
        talk.chunk_sizes,
        vec![CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 12_345]
    );
    assert_eq!(talk.container, Some(Container::Mp3));
    assert_eq!(talk.fields, f);
    assert_eq!(talk.client_request_id.as_deref().map(str::len), Some(36));
    assert_eq!(emu.stats().bytes_received, audio.len() as u64);

    // An exact multiple ends with a full chunk; other containers are declared as given.
    let audio = data(2 * CHUNK_SIZE);
    let id = client(&emu)
        .upload_audio(
            AUDIO_CONN,
            &f,
            Container::Wav,
            source(&audio, &[CHUNK_SIZE * 2]),
        )
        .await
        .unwrap();
    let talk = emu.talk(&id).unwrap();
    assert_eq!(talk.chunk_sizes, vec![CHUNK_SIZE, CHUNK_SIZE]);
    assert_eq!(talk.container, Some(Container::Wav));
    assert_eq!(talk.audio_sha256, sha256_hex(&audio));

    let id = client(&emu)
        .upload_audio(AUDIO_CONN, &f, Container::OggOpus, source(&data(10), &[3]))
        .await
        .unwrap();
    assert_eq!(emu.talk(&id).unwrap().container, Some(Container::OggOpus));
    assert_eq!(emu.talk(&id).unwrap().chunk_sizes, vec![10]);
    assert_eq!(emu.talk_count(), 3);
}

#[tokio::test]
async fn wrong_key_is_bad_key_and_never_shown() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let secret = "AQVNwrong-secret-0123456789abcdefghijklm";
    let c = client_with(&emu, Credentials::api_key(secret));
    let err = c
        .upload_audio(
            AUDIO_CONN,
            &fields("1"),
            Container::Mp3,
            source(&data(100), &[100]),
        )
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

#[tokio::test]
async fn connection_errors_are_classified() {
    let mut config = SpeechSenseConfig::default();
    config
        .connections
        .push(ConnectionConfig::two_channel("conn-private").allow_only(&["someone-else"]));
    let emu = SpeechSenseEmulator::start(config).await.unwrap();
    let c = client(&emu);
    let up = |conn: &'static str, f: BTreeMap<String, String>| {
        let c = c.clone();
        async move {
            c.upload_audio(conn, &f, Container::Mp3, source(&data(1000), &[300]))
                .await
                .unwrap_err()
        }
    };

    let err = up("conn-nope", fields("1")).await;
    assert!(matches!(err, Error::UnknownConnection(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Fatal);

    let err = up("conn-private", fields("1")).await;
    assert!(matches!(err, Error::NoAccess(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Fatal);

    let mut f = fields("1");
    f.remove("language");
    let err = up(AUDIO_CONN, f).await;
    assert!(
        matches!(
            err,
            Error::InvalidData {
                code: Code::InvalidArgument,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("language"), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);

    let mut f = fields("1");
    f.insert("date".into(), "24.04.2025".into());
    assert!(matches!(up(AUDIO_CONN, f).await, Error::InvalidData { .. }));
    let mut f = fields("1");
    f.insert("comment".into(), "x".repeat(1025));
    assert!(matches!(up(AUDIO_CONN, f).await, Error::InvalidData { .. }));
    // Audio into a chat connection.
    assert!(matches!(
        up(CHAT_CONN, fields("1")).await,
        Error::InvalidData { .. }
    ));
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
    let mut config = SpeechSenseConfig::default();
    config
        .connections
        .push(ConnectionConfig::two_channel("conn-private").allow_only(&["someone-else"]));
    let emu = SpeechSenseEmulator::start(config).await.unwrap();
    let c = client(&emu);

    let ok = c.check_connection(AUDIO_CONN).await.unwrap();
    assert_eq!(ok, ConnectionCheck::Ok);
    assert_eq!(ok.message(Lang::Ru), "Успешный запрос к SpeechSense");
    assert_eq!(ok.message(Lang::En), "Successful request to SpeechSense");
    assert_eq!(
        client_with(&emu, Credentials::bearer(DEFAULT_BEARER_TOKEN))
            .check_connection(CHAT_CONN)
            .await
            .unwrap(),
        ConnectionCheck::Ok
    );

    let bad = client_with(&emu, Credentials::api_key("nope-nope"))
        .check_connection(AUDIO_CONN)
        .await
        .unwrap();
    assert!(matches!(bad, ConnectionCheck::BadKey(_)), "{bad:?}");
    assert!(bad.message(Lang::Ru).contains("API-ключ"));
    let denied = c.check_connection("conn-private").await.unwrap();
    assert!(matches!(denied, ConnectionCheck::NoAccess(_)), "{denied:?}");
    let unknown = c.check_connection("conn-nope").await.unwrap();
    assert!(
        matches!(unknown, ConnectionCheck::UnknownConnection(_)),
        "{unknown:?}"
    );
    assert!(unknown.message(Lang::En).contains("connection ID"));
    // An empty id must not look like success (the server would answer INVALID_ARGUMENT).
    assert!(matches!(
        c.check_connection(" ").await.unwrap(),
        ConnectionCheck::UnknownConnection(_)
    ));
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
    let err = dead.check_connection(AUDIO_CONN).await.unwrap_err();
    assert!(err.class().is_retryable(), "{err:?}");
    let err = dead
        .upload_audio(
            AUDIO_CONN,
            &fields("1"),
            Container::Mp3,
            source(&data(10), &[10]),
        )
        .await
        .unwrap_err();
    assert!(
        err.class().is_retryable(),
        "connect failure must not be in doubt: {err:?}"
    );
    let err = dead
        .upload_text(CHAT_CONN, &fields("1"), &[])
        .await
        .unwrap_err();
    assert!(
        err.class().is_retryable(),
        "connect failure must not be in doubt: {err:?}"
    );
}

#[tokio::test]
async fn source_error_cancels_and_stores_nothing() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let good = data(2 * CHUNK_SIZE + 500_000);
    let items: Vec<Result<Bytes, SourceError>> = vec![
        Ok(Bytes::from(good)),
        Err(SourceError("download broke at 2.5 MiB".into())),
        Ok(Bytes::from_static(b"never sent")),
    ];
    let err = client(&emu)
        .upload_audio(
            AUDIO_CONN,
            &fields("1"),
            Container::Mp3,
            stream::iter(items).boxed(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::SourceFailed(m) if m.contains("download broke")),
        "{err:?}"
    );
    // The server sees the stream reset (not a half-close) and drops the talk.
    eventually("the emulator to see the reset", || {
        emu.stats().streams_aborted == 1
    })
    .await;
    assert_eq!(emu.talk_count(), 0);

    // A source failing before the first byte: same.
    let items: Vec<Result<Bytes, SourceError>> = vec![Err(SourceError("404".into()))];
    let err = client(&emu)
        .upload_audio(
            AUDIO_CONN,
            &fields("1"),
            Container::Mp3,
            stream::iter(items).boxed(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SourceFailed(_)));
    eventually("the second reset", || emu.stats().streams_aborted == 2).await;
    assert_eq!(emu.talk_count(), 0);
}

#[tokio::test]
async fn injected_faults_before_and_after_store() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let c = client(&emu);
    // Refused before the stream was accepted (more audio than the HTTP/2 windows): nothing stored, retryable.
    emu.inject(Code::Unavailable, 1);
    let audio = data(8 * CHUNK_SIZE);
    let err = c
        .upload_audio(
            AUDIO_CONN,
            &fields("1"),
            Container::Mp3,
            source(&audio, &[CHUNK_SIZE]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Retryable {
                code: Some(Code::Unavailable),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.class().is_retryable());
    assert_eq!(emu.talk_count(), 0);
    emu.inject(Code::ResourceExhausted, 1);
    let err = c
        .upload_text(CHAT_CONN, &fields("1"), &chat())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Retryable {
                code: Some(Code::ResourceExhausted),
                ..
            }
        ),
        "{err:?}"
    );
    // The fault is consumed: the next upload goes through.
    c.upload_audio(
        AUDIO_CONN,
        &fields("1"),
        Container::Mp3,
        source(&audio, &[CHUNK_SIZE]),
    )
    .await
    .unwrap();
    assert_eq!(emu.talk_count(), 1);

    // Stored, then the answer is an error: the client had sent everything, so it is in doubt.
    emu.inject_after_store(Code::Internal, 1);
    let err = c
        .upload_audio(
            AUDIO_CONN,
            &fields("2"),
            Container::Mp3,
            source(&data(1000), &[1000]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::InDoubt, "{err:?}");
    assert_eq!(emu.talk_count(), 2);
    emu.inject_after_store(Code::Unavailable, 1);
    let err = c
        .upload_text(CHAT_CONN, &fields("3"), &chat())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::InDoubt, "{err:?}");
    assert_eq!(emu.talk_count(), 3);
}

#[tokio::test]
async fn lost_answer_after_full_send_is_in_doubt() {
    let config = SpeechSenseConfig {
        upload_latency: Duration::from_secs(3),
        ..SpeechSenseConfig::default()
    };
    let emu = SpeechSenseEmulator::start(config).await.unwrap();
    let mut cfg = ClientConfig::new(emu.endpoint(), Credentials::api_key(DEFAULT_API_KEY));
    cfg.unary_timeout = Duration::from_millis(300);
    let c = SpeechSenseClient::new(cfg).unwrap();
    let err = c
        .upload_audio(
            AUDIO_CONN,
            &fields("1"),
            Container::Mp3,
            source(&data(5000), &[999]),
        )
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
    assert_eq!(
        emu.talk_count(),
        1,
        "the talk exists although the client never got its id"
    );
}

fn chat() -> Vec<ChatMessage> {
    let t0 = Utc.with_ymd_and_hms(2025, 4, 24, 11, 34, 19).unwrap();
    vec![
        ChatMessage {
            user_id: "COMPANY_5".into(),
            timestamp: t0,
            text: "Здравствуйте!".into(),
        },
        ChatMessage {
            user_id: "17".into(),
            timestamp: t0 + chrono::Duration::seconds(30),
            text: "Добрый день".into(),
        },
    ]
}

#[tokio::test]
async fn upload_text_stores_messages() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let c = client(&emu);
    let id = c
        .upload_text(CHAT_CONN, &fields("900"), &chat())
        .await
        .unwrap();
    assert!(id.starts_with("txt") && id.len() == 20, "{id}");
    let talk = emu.talk(&id).unwrap();
    assert_eq!(talk.messages.len(), 2);
    assert_eq!(talk.messages[0].user_id, "COMPANY_5");
    assert_eq!(talk.messages[1].text, "Добрый день");
    assert_eq!(talk.messages[1].timestamp, Some(chat()[1].timestamp));
    assert_eq!(talk.fields, fields("900"));

    // A message from someone who is not a participant, an empty dialog, a chat into an audio connection.
    let mut bad = chat();
    bad[0].user_id = "stranger".into();
    assert!(matches!(
        c.upload_text(CHAT_CONN, &fields("1"), &bad)
            .await
            .unwrap_err(),
        Error::InvalidData { .. }
    ));
    assert!(matches!(
        c.upload_text(CHAT_CONN, &fields("1"), &[])
            .await
            .unwrap_err(),
        Error::InvalidData { .. }
    ));
    assert!(matches!(
        c.upload_text(AUDIO_CONN, &fields("1"), &chat())
            .await
            .unwrap_err(),
        Error::InvalidData { .. }
    ));
    assert_eq!(emu.talk_count(), 1);
}

#[tokio::test]
async fn search_by_user_meta_id_follows_pages() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let c = client(&emu);
    let mut wanted = None;
    for call in ["101", "102", "103"] {
        let id = c
            .upload_audio(
                AUDIO_CONN,
                &fields(call),
                Container::Mp3,
                source(&data(64), &[64]),
            )
            .await
            .unwrap();
        if call == "102" {
            wanted = Some(id);
        }
    }
    let scope = SearchScope {
        organization_id: "org".into(),
        space_id: "space".into(),
        project_id: "proj".into(),
        connection_id: AUDIO_CONN.into(),
    };
    let found = c
        .search(&scope, &[("userMeta.id".into(), vec!["102".into()])])
        .await
        .unwrap();
    assert_eq!(found, vec![wanted.unwrap()]);
    let found = c
        .search(
            &scope,
            &[("userMeta.id".into(), vec!["101".into(), "103".into()])],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert!(c
        .search(&scope, &[("userMeta.id".into(), vec!["999".into()])])
        .await
        .unwrap()
        .is_empty());

    // More matches than one page (100): all pages are followed.
    for _ in 0..130 {
        c.upload_text(CHAT_CONN, &fields("dup"), &chat())
            .await
            .unwrap();
    }
    let chat_scope = SearchScope {
        connection_id: CHAT_CONN.into(),
        ..scope.clone()
    };
    let found = c
        .search(&chat_scope, &[("userMeta.id".into(), vec!["dup".into()])])
        .await
        .unwrap();
    assert_eq!(found.len(), 130);
    assert_eq!(found.iter().collect::<HashSet<_>>().len(), 130);
    assert_eq!(emu.stats().searches, 3 + 2);

    let err = c
        .search(
            &SearchScope {
                connection_id: "conn-nope".into(),
                ..scope
            },
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownConnection(_)), "{err:?}");
}

#[tokio::test]
async fn client_request_ids_are_fresh_uuids() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let c = client(&emu);
    c.upload_audio(
        AUDIO_CONN,
        &fields("1"),
        Container::Mp3,
        source(&data(10), &[10]),
    )
    .await
    .unwrap();
    c.upload_audio(
        AUDIO_CONN,
        &fields("2"),
        Container::Mp3,
        source(&data(10), &[10]),
    )
    .await
    .unwrap();
    c.check_connection(AUDIO_CONN).await.unwrap();
    c.upload_text(CHAT_CONN, &fields("3"), &chat())
        .await
        .unwrap();
    let scope = SearchScope {
        project_id: "p".into(),
        connection_id: AUDIO_CONN.into(),
        ..Default::default()
    };
    c.search(&scope, &[]).await.unwrap();
    let calls = emu.calls();
    assert_eq!(calls.len(), 5);
    let ids: HashSet<String> = calls
        .iter()
        .map(|c| c.client_request_id.clone().expect("x-client-request-id"))
        .collect();
    assert_eq!(ids.len(), 5, "every call has its own id: {calls:?}");
    assert!(
        ids.iter()
            .all(|id| id.len() == 36 && id.chars().nth(14) == Some('4')),
        "{ids:?}"
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
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let endpoint = emu.endpoint().replace("http://", "https://");
    let c = SpeechSenseClient::new(ClientConfig::new(
        endpoint,
        Credentials::api_key(DEFAULT_API_KEY),
    ))
    .unwrap();
    let err = c.check_connection(AUDIO_CONN).await.unwrap_err();
    assert!(err.class().is_retryable(), "{err:?}");
    let err = c
        .upload_audio(
            AUDIO_CONN,
            &fields("1"),
            Container::Mp3,
            source(&data(10), &[10]),
        )
        .await
        .unwrap_err();
    assert!(err.class().is_retryable(), "{err:?}");
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
    c.upload_audio("conn-strict", &f, Container::Mp3, source(&data(10), &[10]))
        .await
        .unwrap();
    f.insert("not_declared".into(), "x".into());
    let err = c
        .upload_audio("conn-strict", &f, Container::Mp3, source(&data(10), &[10]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidData { message, .. } if message.contains("not_declared")),
        "{err:?}"
    );
    // The default (lenient) connection ignores it, as the real service seems to.
    c.upload_audio(AUDIO_CONN, &f, Container::Mp3, source(&data(10), &[10]))
        .await
        .unwrap();
    assert_eq!(emu.talk_count(), 2);
}

fn auth<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Api-Key {DEFAULT_API_KEY}").parse().unwrap(),
    );
    r
}

/// The emulator's own rules for raw clients: stream order, unary Upload, metadata update, Get.
#[tokio::test]
async fn emulator_raw_protocol() {
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let mut raw = TalkServiceClient::connect(emu.endpoint()).await.unwrap();
    let metadata = TalkMetadata {
        connection_id: AUDIO_CONN.into(),
        fields: fields("7"),
        users: vec![],
    };
    let meta_msg = StreamTalkRequest {
        event: Some(stream_talk_request::Event::Metadata(metadata.clone())),
    };
    let chunk_msg = StreamTalkRequest {
        event: Some(stream_talk_request::Event::Audio(AudioStreamingRequest {
            audio_event: Some(audio_streaming_request::AudioEvent::Chunk(AudioChunk {
                data: Bytes::from_static(b"abc"),
            })),
        })),
    };
    // A chunk before the audio metadata.
    let status = raw
        .upload_as_stream(auth(stream::iter(vec![meta_msg.clone(), chunk_msg])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // UNSPECIFIED container.
    let unspecified = StreamTalkRequest {
        event: Some(stream_talk_request::Event::Audio(AudioStreamingRequest {
            audio_event: Some(audio_streaming_request::AudioEvent::AudioMetadata(
                AudioMetadata {
                    audio_format: Some(audio_metadata::AudioFormat::ContainerAudio(
                        ContainerAudio {
                            container_audio_type: 0,
                        },
                    )),
                },
            )),
        })),
    };
    let status = raw
        .upload_as_stream(auth(stream::iter(vec![meta_msg, unspecified])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Unary upload, then a metadata update of the same talk.
    let audio = AudioRequest {
        audio_metadata: Some(AudioMetadata {
            audio_format: Some(audio_metadata::AudioFormat::ContainerAudio(
                ContainerAudio {
                    container_audio_type: 1,
                },
            )),
        }),
        audio_data: Some(AudioChunk {
            data: Bytes::from_static(b"RIFF....WAVE"),
        }),
    };
    let req = UploadTalkRequest {
        metadata: Some(metadata.clone()),
        audio: Some(audio),
        talk_id: String::new(),
    };
    let resp = raw.upload(auth(req)).await.unwrap();
    assert!(resp.metadata().get("x-request-id").is_some());
    let id = resp.into_inner().talk_id;
    assert_eq!(
        emu.talk(&id).unwrap().audio_sha256,
        sha256_hex(b"RIFF....WAVE")
    );
    let mut updated = metadata.clone();
    updated.fields.insert("operator_name".into(), "Пётр".into());
    let req = UploadTalkRequest {
        metadata: Some(updated),
        audio: None,
        talk_id: id.clone(),
    };
    assert_eq!(
        raw.upload(auth(req)).await.unwrap().into_inner().talk_id,
        id
    );
    assert_eq!(emu.talk(&id).unwrap().fields["operator_name"], "Пётр");
    let req = UploadTalkRequest {
        metadata: Some(metadata),
        audio: None,
        talk_id: "audnonexistent000000".into(),
    };
    assert_eq!(
        raw.upload(auth(req)).await.unwrap_err().code(),
        Code::NotFound
    );

    // A single Upload above tonic's default 4 MiB decoding limit.
    let big = Bytes::from(data(5 * CHUNK_SIZE));
    let audio = AudioRequest {
        audio_metadata: Some(AudioMetadata {
            audio_format: Some(audio_metadata::AudioFormat::ContainerAudio(
                ContainerAudio {
                    container_audio_type: 3,
                },
            )),
        }),
        audio_data: Some(AudioChunk { data: big.clone() }),
    };
    let req = UploadTalkRequest {
        metadata: Some(TalkMetadata {
            connection_id: AUDIO_CONN.into(),
            fields: fields("8"),
            users: vec![],
        }),
        audio: Some(audio),
        talk_id: String::new(),
    };
    let mut raw_big = raw
        .clone()
        .max_encoding_message_size(b24sense_speechsense::MAX_MESSAGE_SIZE);
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
    assert_eq!(
        date.r#type,
        b24sense_speechsense::proto::FieldType::Date as i32
    );
    assert_eq!(emu.talk_count(), 2);
}

#[tokio::test]
async fn dropped_upload_stores_nothing() {
    // The engine may drop an upload (shutdown, its own timeout) while the source is still producing: hyper then
    // resets with CANCEL, which must abort the call on the server, not end the stream cleanly.
    let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let first: BoxStream<'static, Result<Bytes, SourceError>> =
        stream::iter(vec![Ok(Bytes::from(data(CHUNK_SIZE)))])
            .chain(stream::pending())
            .boxed();
    let (c, f) = (client(&emu), fields("1"));
    let upload = c.upload_audio(AUDIO_CONN, &f, Container::Mp3, first);
    assert!(tokio::time::timeout(Duration::from_millis(300), upload)
        .await
        .is_err());
    eventually("the emulator to see the reset", || {
        emu.stats().streams_aborted == 1
    })
    .await;
    assert_eq!(
        emu.stats().bytes_received,
        CHUNK_SIZE as u64,
        "the full chunk did arrive"
    );
    assert_eq!(emu.talk_count(), 0);
    assert_eq!(emu.stats().uploads_ok, 0);
}

//! Injected faults and lost answers: refused before the store is retryable, stored then failed is in doubt.

use std::time::Duration;

use b24sense_core::{Container, ErrorClass};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator, DEFAULT_API_KEY};
use b24sense_speechsense::{ClientConfig, Credentials, Error, SpeechSenseClient, CHUNK_SIZE};
use tonic::Code;

use crate::{chat, client, data, emulator, fields, source, upload_mp3, AUDIO_CONN, CHAT_CONN};

/// Which upload a fault case sends.
#[derive(Debug, Clone, Copy)]
enum Upload {
    /// 8 MiB in 1 MiB pieces: more audio than the HTTP/2 windows, so the refusal comes before it is all sent.
    BigAudio,
    SmallAudio,
    Chat,
}

impl Upload {
    async fn send(self, c: &SpeechSenseClient, call_id: &str) -> Result<String, Error> {
        match self {
            Upload::BigAudio => {
                let audio = data(8 * CHUNK_SIZE);
                c.upload_audio(
                    AUDIO_CONN,
                    &fields(call_id),
                    Container::Mp3,
                    source(&audio, &[CHUNK_SIZE]),
                )
                .await
            }
            Upload::SmallAudio => upload_mp3(c, AUDIO_CONN, &fields(call_id), 1000).await,
            Upload::Chat => c.upload_text(CHAT_CONN, &fields(call_id), &chat()).await,
        }
    }
}

#[tokio::test]
async fn injected_faults_before_and_after_store() {
    let emu = emulator().await;
    let c = client(&emu);
    // Refused before the stream was accepted: nothing stored, retryable.
    for (case, code, upload) in [
        ("audio", Code::Unavailable, Upload::BigAudio),
        ("chat", Code::ResourceExhausted, Upload::Chat),
    ] {
        emu.inject(code, 1);
        let err = upload.send(&c, "1").await.unwrap_err();
        assert!(
            matches!(err, Error::Retryable { code: Some(got), .. } if got == code),
            "{case}: {err:?}"
        );
        assert!(err.class().is_retryable(), "{case}");
        assert_eq!(emu.talk_count(), 0, "{case}");
    }
    // The fault is consumed: the next upload goes through.
    Upload::BigAudio.send(&c, "1").await.unwrap();
    assert_eq!(emu.talk_count(), 1);

    // Stored, then the answer is an error: the client had sent everything, so it is in doubt.
    for (stored, (case, code, upload, call_id)) in (2..).zip([
        ("audio", Code::Internal, Upload::SmallAudio, "2"),
        ("chat", Code::Unavailable, Upload::Chat, "3"),
    ]) {
        emu.inject_after_store(code, 1);
        let err = upload.send(&c, call_id).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::InDoubt, "{case}: {err:?}");
        assert_eq!(emu.talk_count(), stored, "{case}");
    }
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

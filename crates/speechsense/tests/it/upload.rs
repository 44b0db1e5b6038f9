//! Audio uploads: what the emulator stored, and uploads cut short storing nothing (chats: `text`).

use std::time::Duration;

use b24sense_core::Container;
use b24sense_speechsense::{Error, SourceError, CHUNK_SIZE};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::{client, data, emulator, eventually, fields, sha256_hex, source, AUDIO_CONN};

#[tokio::test]
async fn upload_stores_exact_bytes_in_exact_mebibyte_chunks() {
    let emu = emulator().await;
    let f = fields("101");
    // (case, audio length, container, source piece sizes, chunk sizes the server must see)
    type Case = (&'static str, usize, Container, &'static [usize], Vec<usize>);
    let cases: [Case; 3] = [
        (
            "odd pieces, a short last chunk",
            3 * CHUNK_SIZE + 12_345,
            Container::Mp3,
            &[777_777, 1, 65_537, 1_500_000, 3],
            vec![CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 12_345],
        ),
        // An exact multiple ends with a full chunk; other containers are declared as given.
        (
            "an exact multiple",
            2 * CHUNK_SIZE,
            Container::Wav,
            &[CHUNK_SIZE * 2],
            vec![CHUNK_SIZE, CHUNK_SIZE],
        ),
        ("tiny pieces", 10, Container::OggOpus, &[3], vec![10]),
    ];
    let mut received = 0u64;
    for (case, len, container, pieces, chunk_sizes) in cases {
        let audio = data(len);
        let talk_id = client(&emu)
            .upload_audio(AUDIO_CONN, &f, container, source(&audio, pieces))
            .await
            .unwrap_or_else(|e| panic!("{case}: upload: {e:?}"));
        assert!(
            talk_id.starts_with("aud") && talk_id.len() == 20,
            "{case}: {talk_id}"
        );
        let talk = emu.talk(&talk_id).expect("stored");
        assert_eq!(talk.connection_id, AUDIO_CONN, "{case}");
        assert_eq!(talk.audio_bytes, audio.len() as u64, "{case}");
        assert_eq!(talk.audio_sha256, sha256_hex(&audio), "{case}");
        assert_eq!(talk.chunk_sizes, chunk_sizes, "{case}");
        assert_eq!(talk.container, Some(container), "{case}");
        assert_eq!(talk.fields, f, "{case}");
        assert_eq!(
            talk.client_request_id.as_deref().map(str::len),
            Some(36),
            "{case}"
        );
        received += audio.len() as u64;
        assert_eq!(emu.stats().bytes_received, received, "{case}");
    }
    assert_eq!(emu.talk_count(), 3);
}

#[tokio::test]
async fn source_error_cancels_and_stores_nothing() {
    let emu = emulator().await;
    // (case, what the source yields, a phrase the error keeps)
    type Case = (&'static str, Vec<Result<Bytes, SourceError>>, &'static str);
    let cases: [Case; 2] = [
        (
            "the download breaks after 2.5 MiB",
            vec![
                Ok(Bytes::from(data(2 * CHUNK_SIZE + 500_000))),
                Err(SourceError("download broke at 2.5 MiB".into())),
                Ok(Bytes::from_static(b"never sent")),
            ],
            "download broke",
        ),
        // A source failing before the first byte: same.
        (
            "the source fails before the first byte",
            vec![Err(SourceError("404".into()))],
            "",
        ),
    ];
    for (aborted, (case, items, needle)) in (1..).zip(cases) {
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
            matches!(&err, Error::SourceFailed(m) if m.contains(needle)),
            "{case}: {err:?}"
        );
        // The server sees the stream reset (not a half-close) and drops the talk.
        eventually(&format!("{case}: the emulator to see the reset"), || {
            emu.stats().streams_aborted == aborted
        })
        .await;
        assert_eq!(emu.talk_count(), 0, "{case}");
    }
}

#[tokio::test]
async fn dropped_upload_stores_nothing() {
    // The engine may drop an upload (shutdown, its own timeout) while the source is still producing: hyper then
    // resets with CANCEL, which must abort the call on the server, not end the stream cleanly.
    let emu = emulator().await;
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

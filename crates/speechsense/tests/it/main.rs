//! The client against the in-repo SpeechSense emulator, over real sockets on 127.0.0.1. One test binary, with
//! modules by theme:
//! - `upload`: audio uploads, what the emulator stored, uploads cut short;
//! - `text`: chat uploads (`UploadText`): accepted on chat connections only, participants, timestamps, Unicode;
//! - `kinds`: the connection check telling two-channel audio, one-channel audio and chat connections apart;
//! - `refusals`: bad keys, connections, metadata and endpoints, and how each failure is classified;
//! - `faults`: injected faults and lost answers (retryable versus in doubt);
//! - `search`: search by `userMeta.*` over pages, and fresh request ids per call;
//! - `raw`: the emulator's own protocol rules, seen by a raw gRPC client.

mod faults;
mod kinds;
mod raw;
mod refusals;
mod search;
mod text;
mod upload;

use std::collections::BTreeMap;
use std::time::Duration;

use b24sense_core::Container;
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator, DEFAULT_API_KEY};
use b24sense_speechsense::{
    ChatMessage, ClientConfig, Credentials, Error, SourceError, SpeechSenseClient,
};
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use sha2::{Digest, Sha256};

const AUDIO_CONN: &str = "conn-two-channel";
const CHAT_CONN: &str = "conn-chat";
const MONO_CONN: &str = "conn-mono";

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

/// An emulator with the default keys and connections.
async fn emulator() -> SpeechSenseEmulator {
    SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .expect("emulator")
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

/// Uploads `len` bytes of [`data`] as MP3, read from the source in one piece.
async fn upload_mp3(
    c: &SpeechSenseClient,
    connection_id: &str,
    fields: &BTreeMap<String, String>,
    len: usize,
) -> Result<String, Error> {
    c.upload_audio(
        connection_id,
        fields,
        Container::Mp3,
        source(&data(len), &[len]),
    )
    .await
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

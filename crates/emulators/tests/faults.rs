//! Fault injection in both emulators, over real sockets on 127.0.0.1: each fault fires exactly as configured,
//! is counted, and the emulator serves normally once it is used up.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use b24sense_core::{Container, ErrorClass};
use b24sense_emulators::bitrix24::{fault_kind, Bitrix24Emulator, FaultConfig, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator, DEFAULT_API_KEY};
use b24sense_speechsense::{
    ClientConfig, Credentials, Error as SsError, SearchScope, SourceError, SpeechSenseClient,
    CHUNK_SIZE,
};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{json, Value};
use tonic::Code;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn portal(calls: usize) -> Bitrix24Emulator {
    Bitrix24Emulator::start(PortalConfig {
        calls,
        rate: (100_000, 100_000),
        access_tokens: vec!["tok-a".into(), "tok-b".into()],
        ..PortalConfig::default()
    })
    .await
    .unwrap()
}

async fn webhook(e: &Bitrix24Emulator, method: &str) -> (u16, String) {
    let r = client()
        .post(format!("{}{method}", e.webhook_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn oauth(e: &Bitrix24Emulator, method: &str, token: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}rest/{method}.json", e.base_url()))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A webhook request with no body, the raw answer.
async fn webhook_raw(e: &Bitrix24Emulator, method: &str) -> reqwest::Response {
    client()
        .post(format!("{}{method}", e.webhook_url()))
        .send()
        .await
        .unwrap()
}

/// The status and the `error` of a webhook request's JSON answer.
async fn webhook_error(e: &Bitrix24Emulator, method: &str) -> (u16, String) {
    let (st, body) = webhook(e, method).await;
    let code = serde_json::from_str::<Value>(&body).unwrap()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (st, code)
}

fn content_type(r: &reqwest::Response) -> &str {
    r.headers()["content-type"].to_str().unwrap()
}

/// Statistic `ID`s of every call, ascending.
fn call_ids(e: &Bitrix24Emulator) -> Vec<u64> {
    e.call_rows()
        .iter()
        .filter_map(|r| r["ID"].as_str()?.parse::<u64>().ok())
        .collect()
}

/// The first call whose row has a `CALL_RECORD_URL`: its statistic `ID` and that URL.
fn first_record_url(e: &Bitrix24Emulator) -> (u64, String) {
    e.call_rows()
        .iter()
        .find_map(|r| {
            let url = r["CALL_RECORD_URL"].as_str().filter(|u| !u.is_empty())?;
            Some((r["ID"].as_str()?.parse::<u64>().ok()?, url.to_string()))
        })
        .unwrap()
}

fn injected(e: &Bitrix24Emulator, kind: &str) -> u64 {
    e.stats().faults_injected.get(kind).copied().unwrap_or(0)
}

#[tokio::test]
async fn query_limit_storm_by_count_and_by_window() {
    let e = portal(10).await;
    e.set_faults(FaultConfig::none().with_query_limit_next(3));
    for n in 1..=3 {
        assert_eq!(
            webhook_error(&e, "profile").await,
            (503, "QUERY_LIMIT_EXCEEDED".into()),
            "request {n}"
        );
    }
    assert_eq!(webhook(&e, "profile").await.0, 200, "the storm is over");
    assert_eq!(injected(&e, fault_kind::QUERY_LIMIT), 3);
    assert_eq!(e.faults().query_limit_next, 0, "used up");

    e.set_faults(FaultConfig::none().with_query_limit_for(Duration::from_secs(1)));
    assert_eq!(
        webhook_error(&e, "scope").await,
        (503, "QUERY_LIMIT_EXCEEDED".into())
    );
    // Recording downloads from the external host are not REST requests.
    let (_, rec) = first_record_url(&e);
    assert_eq!(client().get(&rec).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(webhook(&e, "scope").await.0, 200, "the window has passed");
}

#[tokio::test]
async fn operation_time_limit_for_one_method() {
    let e = portal(10).await;
    e.set_faults(FaultConfig::none().with_operation_time_limit("profile", 2));
    for _ in 0..2 {
        let (st, body) = webhook(&e, "profile.json").await;
        assert_eq!(st, 429);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "OPERATION_TIME_LIMIT");
        let reset_at = v["time"]["operating_reset_at"].as_i64().unwrap();
        let now = chrono::Utc::now().timestamp();
        assert!(
            (now..=now + 2).contains(&reset_at),
            "reset about a second ahead: {reset_at} vs {now}"
        );
        assert_eq!(
            webhook(&e, "scope").await.0,
            200,
            "other methods keep working"
        );
    }
    assert_eq!(webhook(&e, "profile").await.0, 200);
    assert_eq!(injected(&e, fault_kind::OPERATION_TIME_LIMIT), 2);
}

#[tokio::test]
async fn server_errors_json_500_and_html_502() {
    let e = portal(10).await;
    e.set_faults(
        FaultConfig::none()
            .with_internal_error_next(1)
            .with_html_502_next(1),
    );
    // 502 is checked first.
    let r = webhook_raw(&e, "profile").await;
    assert_eq!(r.status(), 502);
    assert!(content_type(&r).starts_with("text/html"));
    assert_eq!(
        webhook_error(&e, "profile").await,
        (500, "INTERNAL_SERVER_ERROR".into())
    );
    assert_eq!(webhook(&e, "profile").await.0, 200);
    let s = e.stats();
    assert_eq!(s.faults_injected[fault_kind::HTML_502], 1);
    assert_eq!(s.faults_injected[fault_kind::INTERNAL_ERROR], 1);
}

#[tokio::test]
async fn expired_token_at_the_chosen_oauth_request_only() {
    let e = portal(10).await;
    e.set_faults(FaultConfig::none().with_expire_token_at(2));
    // Webhook requests neither count nor expire.
    for _ in 0..3 {
        assert_eq!(webhook(&e, "profile").await.0, 200);
    }
    assert_eq!(
        oauth(&e, "profile", "tok-a").await.0,
        200,
        "OAuth request 1"
    );
    for case in ["request 2", "the token stays expired"] {
        let (st, v) = oauth(&e, "profile", "tok-a").await;
        assert_eq!(
            (st, v["error"].as_str()),
            (401, Some("expired_token")),
            "{case}"
        );
    }
    assert_eq!(
        oauth(&e, "profile", "tok-b").await.0,
        200,
        "a fresh token works"
    );
    assert_eq!(webhook(&e, "profile").await.0, 200);
    assert_eq!(injected(&e, fault_kind::EXPIRED_TOKEN), 2);

    // A DOWNLOAD_URL dies with the token it embeds; one with the fresh token works.
    let file = call_ids(&e)
        .into_iter()
        .find_map(|id| e.recording(id))
        .unwrap()
        .file_id;
    let (st, v) = oauth(&e, &format!("disk.file.get?id={file}"), "tok-b").await;
    assert_eq!(st, 200);
    let fresh = v["result"]["DOWNLOAD_URL"].as_str().unwrap().to_string();
    assert!(fresh.contains("auth=tok-b"));
    let stale = fresh.replace("auth=tok-b", "auth=tok-a");
    let r = client().get(&stale).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "expired_token");
    assert_eq!(client().get(&fresh).send().await.unwrap().status(), 200);
}

/// Sends one raw HTTP/1.1 request and reads until the server closes; returns the read error, if any.
fn raw_request(addr: std::net::SocketAddr, path: &str) -> (Vec<u8>, Option<std::io::Error>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_is_a_real_rst() {
    let e = portal(10).await;
    let addr = e.addr();
    let path = format!(
        "{}profile",
        url::Url::parse(&e.webhook_url()).unwrap().path()
    );
    e.set_faults(FaultConfig::none().with_reset_connection_next(1));
    let (got, err) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || raw_request(addr, &path)
    })
    .await
    .unwrap();
    assert!(got.is_empty(), "no answer at all");
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionReset),
        "RST, not FIN"
    );
    let (got, err) = tokio::task::spawn_blocking(move || raw_request(addr, &path))
        .await
        .unwrap();
    assert!(err.is_none());
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(injected(&e, fault_kind::RESET_CONNECTION), 1);
}

#[tokio::test]
async fn rest_answer_cut_mid_body() {
    let e = portal(10).await;
    e.set_faults(FaultConfig::none().with_cut_rest_next(1));
    let r = client()
        .post(format!("{}voximplant.statistic.get", e.webhook_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let announced = r.content_length().unwrap();
    assert!(announced > 1000);
    assert!(r.bytes().await.is_err(), "the body ends early");
    let (st, body) = webhook(&e, "voximplant.statistic.get").await;
    assert_eq!(st, 200);
    // The same answer, whole this time (give or take the digits of `time`).
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"].as_array().unwrap().len(), 10);
    assert!((body.len() as u64).abs_diff(announced) < 100);
    assert_eq!(injected(&e, fault_kind::CUT_REST), 1);
}

#[tokio::test]
async fn recording_cut_mid_body_then_whole() {
    let e = portal(20).await;
    let (id, url) = first_record_url(&e);
    let info = e.recording(id).unwrap();
    e.set_faults(FaultConfig::none().with_cut_download_next(1));
    // A 404 does not use the fault up.
    let missing = format!("{}records/nope.mp3", e.records_base_url());
    assert_eq!(client().get(&missing).send().await.unwrap().status(), 404);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(info.bytes));
    let mut got = 0usize;
    let mut body = r.bytes_stream();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => got += b.len(),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the transfer breaks");
    assert_eq!(got as u64, info.bytes / 2, "half the bytes arrive");
    let whole = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.len() as u64, info.bytes);
    assert_eq!(injected(&e, fault_kind::CUT_DOWNLOAD), 1);
}

#[tokio::test]
async fn malformed_json_body() {
    let e = portal(10).await;
    e.set_faults(FaultConfig::none().with_malformed_json_next(1));
    let r = webhook_raw(&e, "profile").await;
    assert_eq!(r.status(), 200);
    assert!(content_type(&r).starts_with("application/json"));
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert_eq!(webhook(&e, "profile").await.0, 200);
}

#[tokio::test]
async fn vanished_recordings_404_and_error_not_found() {
    let e = Bitrix24Emulator::start(PortalConfig {
        calls: 60,
        rate: (100_000, 100_000),
        disk_only_share: 0.3,
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let ids = call_ids(&e);
    let with = |disk_only: bool, not: Option<u64>| {
        ids.iter()
            .copied()
            .find(|&id| {
                Some(id) != not
                    && e.recording(id)
                        .is_some_and(|i| i.via_disk_only == disk_only)
            })
            .unwrap()
    };
    let (direct, disk_only) = (with(false, None), with(true, None));
    let kept = with(false, Some(direct));
    // The DOWNLOAD_URL of the direct call, taken before it vanishes.
    let direct_info = e.recording(direct).unwrap();
    let (st, body) = webhook(&e, &format!("disk.file.get?id={}", direct_info.file_id)).await;
    assert_eq!(st, 200);
    let download: Value = serde_json::from_str(&body).unwrap();
    let download = download["result"]["DOWNLOAD_URL"]
        .as_str()
        .unwrap()
        .to_string();

    e.set_faults(FaultConfig::none().with_vanished([direct, disk_only]));
    let r = client()
        .get(direct_info.record_url.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client().get(&download).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "ERROR_NOT_FOUND");
    for id in [direct, disk_only] {
        let file = e.recording(id).unwrap().file_id;
        assert_eq!(
            webhook_error(&e, &format!("disk.file.get?id={file}")).await,
            (404, "ERROR_NOT_FOUND".into()),
            "call {id}"
        );
    }
    let kept_url = e.recording(kept).unwrap().record_url.unwrap();
    assert_eq!(client().get(&kept_url).send().await.unwrap().status(), 200);
    assert!(injected(&e, fault_kind::VANISHED) >= 4);
}

// ------------------------------------------------------------------------------------------------ SpeechSense

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

fn audio(len: usize) -> BoxStream<'static, Result<Bytes, SourceError>> {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let chunks: Vec<Result<Bytes, SourceError>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks).boxed()
}

async fn speech() -> (SpeechSenseEmulator, SpeechSenseClient) {
    speech_with(SpeechSenseConfig::default()).await
}

/// A SpeechSense emulator with this configuration and a client of it.
async fn speech_with(config: SpeechSenseConfig) -> (SpeechSenseEmulator, SpeechSenseClient) {
    let emu = SpeechSenseEmulator::start(config).await.unwrap();
    let c = SpeechSenseClient::new(ClientConfig::new(
        emu.endpoint(),
        Credentials::api_key(DEFAULT_API_KEY),
    ))
    .unwrap();
    (emu, c)
}

const CONN: &str = "conn-two-channel";

#[tokio::test]
async fn speechsense_stream_reset_mid_upload_stores_nothing() {
    let (emu, c) = speech().await;
    emu.inject_reset_after(CHUNK_SIZE as u64, 1);
    let err = c
        .upload_audio(CONN, &fields("1"), Container::Mp3, audio(6 * CHUNK_SIZE))
        .await
        .unwrap_err();
    assert!(
        matches!(err.class(), ErrorClass::Retryable { .. }),
        "a reset before the half-close proves nothing was stored: {err:?}"
    );
    assert!(!matches!(err, SsError::InDoubt { .. }));
    assert_eq!(emu.talk_count(), 0);
    let s = emu.stats();
    assert_eq!(s.streams_reset, 1);
    assert!(s.bytes_received >= CHUNK_SIZE as u64);
    assert!(s.bytes_received < 6 * CHUNK_SIZE as u64, "reset mid-upload");
    // Used up: the next upload is stored whole.
    c.upload_audio(CONN, &fields("1"), Container::Mp3, audio(6 * CHUNK_SIZE))
        .await
        .unwrap();
    assert_eq!(emu.talk_count(), 1);
    assert_eq!(emu.talks()[0].audio_bytes, 6 * CHUNK_SIZE as u64);
}

#[tokio::test]
async fn speechsense_reset_of_a_short_stream_happens_at_the_half_close() {
    let (emu, c) = speech().await;
    emu.inject_reset_after(10 * CHUNK_SIZE as u64, 1);
    let err = c
        .upload_audio(CONN, &fields("2"), Container::Mp3, audio(5000))
        .await
        .unwrap_err();
    // Everything was sent before the reset: the client cannot know, so it is in doubt — but nothing is stored.
    assert_eq!(err.class(), ErrorClass::InDoubt, "{err:?}");
    assert_eq!(emu.talk_count(), 0);
    assert_eq!(emu.stats().streams_reset, 1);
}

#[tokio::test]
async fn speechsense_deadline_exceeded_after_store_is_in_doubt_and_stored() {
    let (emu, c) = speech().await;
    emu.inject_after_store(Code::DeadlineExceeded, 1);
    let err = c
        .upload_audio(CONN, &fields("3"), Container::Mp3, audio(5000))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::InDoubt, "{err:?}");
    assert_eq!(
        emu.talk_count(),
        1,
        "the talk was stored before the answer was lost"
    );
    emu.inject(Code::Unavailable, 1);
    emu.inject(Code::ResourceExhausted, 1);
    for want in [Code::Unavailable, Code::ResourceExhausted] {
        let err = c
            .upload_audio(CONN, &fields("4"), Container::Mp3, audio(6 * CHUNK_SIZE))
            .await
            .unwrap_err();
        assert_eq!(err.grpc_code(), Some(want));
        assert!(
            matches!(err.class(), ErrorClass::Retryable { .. }),
            "{err:?}"
        );
    }
    assert_eq!(emu.talk_count(), 1);
}

#[tokio::test]
async fn speechsense_search_index_lags_behind_the_store() {
    let (_emu, c) = speech_with(SpeechSenseConfig {
        search_lag: Duration::from_millis(400),
        ..SpeechSenseConfig::default()
    })
    .await;
    let talk = c
        .upload_audio(CONN, &fields("77"), Container::Mp3, audio(5000))
        .await
        .unwrap();
    let scope = SearchScope {
        organization_id: "org".into(),
        space_id: "space".into(),
        project_id: "project".into(),
        connection_id: CONN.into(),
    };
    let by_id = [("userMeta.id".to_string(), vec!["77".to_string()])];
    assert!(
        c.search(&scope, &by_id).await.unwrap().is_empty(),
        "not indexed yet"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(c.search(&scope, &by_id).await.unwrap(), vec![talk]);
}

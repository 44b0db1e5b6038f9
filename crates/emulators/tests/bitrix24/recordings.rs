//! Recordings, downloaded via Disk and via their URLs: bytes, checksums and headers.

use std::collections::BTreeSet;

use b24sense_core::audio::probe;
use b24sense_core::Container;
use b24sense_emulators::bitrix24::PortalConfig;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{call_json, client, emu, fetch, first_recorded_call, roomy};

#[tokio::test]
async fn recordings_via_disk_and_url_match_sha_and_headers() {
    let e = emu(PortalConfig {
        calls: 120,
        ..roomy()
    })
    .await;
    let rows = e.call_rows();
    let mut kinds = BTreeSet::new();
    let mut checked_disk = 0;
    for r in &rows {
        let id: u64 = r["ID"].as_str().unwrap().parse().unwrap();
        let Some(info) = e.recording(id) else {
            assert!(r["RECORD_FILE_ID"].is_null());
            continue;
        };
        assert_eq!(r["RECORD_FILE_ID"], json!(info.file_id));
        let key = (info.container.clone(), info.channels, info.via_disk_only);
        if kinds.contains(&key) {
            continue;
        }
        kinds.insert(key);
        let url = if info.via_disk_only || checked_disk == 0 {
            assert!(
                info.via_disk_only
                    || r["CALL_RECORD_URL"]
                        .as_str()
                        .unwrap()
                        .starts_with("http://127.0.0.1:")
            );
            let (st, v) = call_json(&e, "disk.file.get", json!({"id": info.file_id})).await;
            assert_eq!(st, 200);
            let f = &v["result"];
            assert_eq!(f["SIZE"], json!(info.bytes.to_string()));
            assert_eq!(f["TYPE"], "file");
            assert_eq!(f["DELETED_TYPE"], "0");
            checked_disk += 1;
            f["DOWNLOAD_URL"].as_str().unwrap().to_string()
        } else {
            assert_eq!(r["CALL_RECORD_URL"].as_str(), info.record_url.as_deref());
            info.record_url.clone().unwrap()
        };
        let (headers, body) = fetch(&url).await;
        assert_eq!(
            headers["content-length"].to_str().unwrap(),
            info.bytes.to_string()
        );
        assert_eq!(body.len() as u64, info.bytes);
        assert_eq!(hex::encode(Sha256::digest(&body)), info.sha256);
        let p = probe(&body).unwrap();
        let want = if info.container == "wav" {
            Container::Wav
        } else {
            Container::Mp3
        };
        assert_eq!(p.container, want);
        assert_eq!(p.channels, Some(info.channels));
        assert_eq!(p.sample_rate, Some(8000));
        if want == Container::Wav {
            assert_eq!(p.data_bytes, Some(info.bytes - 44));
        }
    }
    assert!(
        kinds.len() >= 4,
        "mp3/wav × mono/stereo × url/disk variety: {kinds:?}"
    );
    let (st, v) = call_json(&e, "disk.file.get", json!({"id": 1})).await;
    assert_eq!((st, v["error"].clone()), (404, json!("ERROR_NOT_FOUND")));
    let s = e.stats();
    assert_eq!(s.downloads, kinds.len() as u64);
    assert!(s.bytes_sent > 0);
    // A forged download token is refused.
    let r = client()
        .get(format!(
            "{}rest/download.json?auth=x&token=disk%7C1%7Cx",
            e.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn big_recording_streams_exact_bytes() {
    let big = 3 * 1024 * 1024 + 7;
    let e = emu(PortalConfig {
        calls: 20,
        big_recording: Some(big),
        ..roomy()
    })
    .await;
    let first = first_recorded_call(&e);
    let info = e.recording(first).unwrap();
    assert_eq!(info.bytes, big);
    let (_, v) = call_json(&e, "disk.file.get", json!({"id": info.file_id})).await;
    let (_, body) = fetch(v["result"]["DOWNLOAD_URL"].as_str().unwrap()).await;
    assert_eq!(body.len() as u64, big);
    assert_eq!(hex::encode(Sha256::digest(&body)), info.sha256);
}

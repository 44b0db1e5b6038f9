//! The generated portal: the same from the same seed, and a size smoke test (ignored by default).

use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use serde_json::json;

use crate::support::{call_json, client, emu, first_recorded_call, keyset_all, roomy};

#[tokio::test]
async fn deterministic_from_the_seed() {
    let cfg = PortalConfig {
        calls: 60,
        ..roomy()
    };
    let (a, b) = (emu(cfg.clone()).await, emu(cfg.clone()).await);
    let strip = |e: &Bitrix24Emulator| -> String {
        serde_json::to_string(&e.call_rows())
            .unwrap()
            .replace(e.base_url().as_str(), "BASE/")
            .replace(e.records_base_url().as_str(), "RECORDS/")
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(
        a.recording(5).map(|r| r.sha256),
        b.recording(5).map(|r| r.sha256)
    );
    assert_eq!(a.user_name(2), b.user_name(2));
    let c = emu(PortalConfig { seed: 2, ..cfg }).await;
    assert_ne!(strip(&a), strip(&c));
}

/// Size smoke test (run with `--ignored --nocapture`, ideally `--release`): a 100,000-call portal and a
/// 200 MB recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn large_portal_smoke() {
    let t = std::time::Instant::now();
    let e = emu(PortalConfig {
        calls: 100_000,
        users: 200,
        contacts: 20_000,
        companies: 5_000,
        leads: 10_000,
        deals: 3_000,
        days: 365,
        big_recording: Some(200 * 1024 * 1024),
        ..roomy()
    })
    .await;
    println!("generated 100k calls in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let mut filter = serde_json::Map::new();
    filter.insert(">=CALL_DURATION".into(), json!(30));
    let rows = keyset_all(&e, filter).await;
    println!("keyset-paged {} rows in {:?}", rows.len(), t.elapsed());
    let t = std::time::Instant::now();
    let (_, v) = call_json(&e, "voximplant.statistic.get", json!({"start": 99_950})).await;
    println!(
        "offset page at 99950 in {:?} (total {})",
        t.elapsed(),
        v["total"]
    );
    let first = first_recorded_call(&e);
    let t = std::time::Instant::now();
    let _ = e.recording(first).unwrap();
    println!("sha of 200 MB computed in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let info = e.recording(first).unwrap();
    let (_, v) = call_json(&e, "disk.file.get", json!({"id": info.file_id})).await;
    let mut r = client()
        .get(v["result"]["DOWNLOAD_URL"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let mut n = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        n += chunk.len() as u64;
    }
    assert_eq!(n, 200 * 1024 * 1024);
    println!("streamed 200 MB in {:?}", t.elapsed());
}

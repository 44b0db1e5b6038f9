//! What every part of the suite shares: an HTTP client, the emulator, and calling its REST methods.

use std::time::Duration;

use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use chrono::FixedOffset;
use serde_json::{json, Value};

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub(crate) fn msk() -> FixedOffset {
    FixedOffset::east_opt(3 * 3600).unwrap()
}

pub(crate) async fn emu(cfg: PortalConfig) -> Bitrix24Emulator {
    Bitrix24Emulator::start(cfg).await.unwrap()
}

/// A portal without the bucket getting in the way.
pub(crate) fn roomy() -> PortalConfig {
    PortalConfig {
        rate: (100_000, 100_000),
        ..Default::default()
    }
}

pub(crate) async fn call_json(e: &Bitrix24Emulator, method: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}{method}", e.webhook_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

pub(crate) async fn call_form(e: &Bitrix24Emulator, method: &str, form: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}{method}.json", e.webhook_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

pub(crate) fn ids(rows: &Value) -> Vec<u64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Pages through `voximplant.statistic.get` with keyset paging (JSON bodies), returning every row.
pub(crate) async fn keyset_all(
    e: &Bitrix24Emulator,
    mut filter: serde_json::Map<String, Value>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut last = 0u64;
    for _ in 0..3000 {
        filter.insert(">ID".into(), json!(last));
        let (st, v) = call_json(
            e,
            "voximplant.statistic.get",
            json!({"FILTER": filter, "SORT": "ID", "ORDER": "ASC", "start": -1}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let rows = v["result"].as_array().unwrap().clone();
        let n = rows.len();
        if let Some(l) = rows.last() {
            last = l["ID"].as_str().unwrap().parse().unwrap();
        }
        out.extend(rows);
        if n < 50 {
            return out;
        }
    }
    panic!("paging did not end");
}

pub(crate) async fn fetch(url: &str) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.status());
    let h = r.headers().clone();
    (h, r.bytes().await.unwrap().to_vec())
}

/// The statistic `ID` of the first call that has a recording.
pub(crate) fn first_recorded_call(e: &Bitrix24Emulator) -> u64 {
    e.call_rows()
        .iter()
        .find(|r| r["RECORD_FILE_ID"].is_u64())
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

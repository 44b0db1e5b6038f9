//! The Bitrix24 portal emulator over real sockets on 127.0.0.1: envelopes, quirks, filters, batch, limits,
//! recordings, faults and stats.

use std::collections::BTreeSet;
use std::time::Duration;

use b24sense_core::audio::probe;
use b24sense_core::{Call, CallFilter, CallType, Container, TimeBound};
use b24sense_emulators::bitrix24::{Bitrix24Emulator, FaultConfig, OperatingConfig, PortalConfig};
use chrono::FixedOffset;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn msk() -> FixedOffset {
    FixedOffset::east_opt(3 * 3600).unwrap()
}

async fn emu(cfg: PortalConfig) -> Bitrix24Emulator {
    Bitrix24Emulator::start(cfg).await.unwrap()
}

/// A portal without the bucket getting in the way.
fn roomy() -> PortalConfig {
    PortalConfig {
        rate: (100_000, 100_000),
        ..Default::default()
    }
}

async fn call_json(e: &Bitrix24Emulator, method: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}{method}", e.webhook_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn call_form(e: &Bitrix24Emulator, method: &str, form: &str) -> (u16, Value) {
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

fn ids(rows: &Value) -> Vec<u64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn envelope_rows_and_quirks() {
    let e = emu(roomy()).await;
    let (st, v) = call_json(&e, "voximplant.statistic.get", json!({"start": 0})).await;
    assert_eq!(st, 200);
    assert_eq!(v["total"], json!(300));
    assert_eq!(v["next"], json!(50));
    let rows = v["result"].as_array().unwrap();
    assert_eq!(rows.len(), 50);
    for k in [
        "start",
        "finish",
        "duration",
        "processing",
        "date_start",
        "date_finish",
    ] {
        assert!(v["time"].get(k).is_some(), "time.{k}");
    }
    assert!(v["time"]["date_start"]
        .as_str()
        .unwrap()
        .ends_with("+03:00"));
    assert!(
        v["time"].get("operating").is_none(),
        "limiter off → no operating"
    );
    let all = e.call_rows();
    assert_eq!(all.len(), 300);
    assert_eq!(
        &all[..50],
        rows.as_slice(),
        "call_rows() is what the API returns"
    );
    let mut saw = (false, false, false, false);
    for r in &all {
        let o = r.as_object().unwrap();
        assert_eq!(o.len(), 29, "all 29 keys");
        assert!(
            r["ID"].is_string() && r["CALL_DURATION"].is_string() && r["CALL_TYPE"].is_string()
        );
        assert!(r["RECORD_FILE_ID"].is_u64() || r["RECORD_FILE_ID"].is_null());
        let c = Call::from_bitrix(r, msk()).unwrap();
        assert_eq!(c.call_start_date.offset(), &msk());
        if r["CALL_FAILED_CODE"] == "304" {
            assert_eq!(c.call_duration, 0);
            assert!(r["RECORD_FILE_ID"].is_null());
            saw.0 = true;
        }
        if r["CALL_RECORD_URL"] == "" && r["RECORD_FILE_ID"].is_u64() {
            saw.1 = true;
        }
        if r["REST_APP_ID"].is_string() {
            assert!(c.call_id.starts_with("externalCall."));
            saw.2 = true;
        }
        if r["CRM_ENTITY_TYPE"] == "" {
            saw.3 = true;
        }
    }
    assert_eq!(
        saw,
        (true, true, true, true),
        "missed, disk-only, REST_APP and unbound rows all present"
    );
    // Last page: no next; start=-1: total 0 and no next.
    let (_, v) = call_json(&e, "voximplant.statistic.get", json!({"start": 250})).await;
    assert_eq!(v["result"].as_array().unwrap().len(), 50);
    assert!(v.get("next").is_none());
    let (_, v) = call_json(&e, "voximplant.statistic.get", json!({"start": -1})).await;
    assert_eq!(v["total"], json!(0));
    assert!(v.get("next").is_none());
    assert_eq!(ids(&v["result"]), (1..=50).collect::<Vec<_>>());
}

/// Pages through `voximplant.statistic.get` with keyset paging (JSON bodies), returning every row.
async fn keyset_all(
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

#[tokio::test]
async fn filters_alone_and_combined_agree_with_core() {
    let e = emu(PortalConfig {
        calls: 400,
        ..roomy()
    })
    .await;
    let calls: Vec<Call> = e
        .call_rows()
        .iter()
        .map(|r| Call::from_bitrix(r, msk()).unwrap())
        .collect();
    let users: Vec<u64> = vec![2, 5];
    let cases = vec![
        CallFilter {
            since: Some(TimeBound::parse("s", "2026-03-10").unwrap()),
            ..Default::default()
        },
        CallFilter {
            since: Some(TimeBound::parse("s", "2026-03-10T06:00:00Z").unwrap()),
            until: Some(TimeBound::parse("u", "2026-03-20").unwrap()),
            ..Default::default()
        },
        CallFilter {
            users: users.clone(),
            ..Default::default()
        },
        CallFilter {
            min_duration: 120,
            ..Default::default()
        },
        CallFilter {
            min_duration: 30,
            max_duration: Some(300),
            ..Default::default()
        },
        CallFilter {
            call_types: vec![CallType::Outgoing, CallType::Callback],
            ..Default::default()
        },
        CallFilter {
            since: Some(TimeBound::parse("s", "2026-03-05").unwrap()),
            until: Some(TimeBound::parse("u", "2026-03-25T12:00:00+03:00").unwrap()),
            users,
            min_duration: 30,
            max_duration: None,
            call_types: vec![CallType::Incoming],
        },
    ];
    for f in cases {
        let expected: Vec<u64> = calls
            .iter()
            .filter(|c| f.matches(c))
            .map(|c| c.id)
            .collect();
        assert!(
            !expected.is_empty() && expected.len() < calls.len(),
            "{f:?} should select some calls"
        );
        let mut wire = f.to_bitrix_filter(0);
        wire.remove(">ID");
        let got = keyset_all(&e, wire).await;
        assert_eq!(ids(&Value::Array(got)), expected, "{f:?}");
    }
}

#[tokio::test]
async fn form_encoding_ops_sort_and_crm_binding_filter() {
    let e = emu(roomy()).await;
    let rows = e.call_rows();
    // PHP brackets, list = IN, `+` of the offset encoded as %2B.
    let (st, v) = call_form(
        &e,
        "voximplant.statistic.get",
        "FILTER[PORTAL_USER_ID][0]=3&FILTER[PORTAL_USER_ID][1]=4&filter_unused=1&FILTER[%3E%3DCALL_START_DATE]=2026-03-15T00%3A00%3A00%2B03%3A00&start=-1",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let got = ids(&v["result"]);
    let want: Vec<u64> = rows
        .iter()
        .filter(|r| ["3", "4"].contains(&r["PORTAL_USER_ID"].as_str().unwrap_or("")))
        .filter(|r| r["CALL_START_DATE"].as_str().unwrap() >= "2026-03-15T00:00:00+03:00")
        .map(|r| r["ID"].as_str().unwrap().parse().unwrap())
        .take(50)
        .collect();
    assert_eq!(got, want);
    // SORT + ORDER DESC on duration; ORDER alone is ignored.
    let (_, v) = call_form(
        &e,
        "voximplant.statistic.get",
        "SORT=CALL_DURATION&ORDER=DESC&start=0",
    )
    .await;
    let durs: Vec<u64> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["CALL_DURATION"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(durs.windows(2).all(|w| w[0] >= w[1]));
    let (_, v) = call_form(&e, "voximplant.statistic.get", "ORDER=DESC&start=0").await;
    assert_eq!(
        ids(&v["result"])[0],
        1,
        "ORDER without SORT → natural order"
    );
    // Binding and "not" filters; `%` substring; between.
    let (_, v) = call_json(&e, "voximplant.statistic.get", json!({"FILTER": {"CRM_ENTITY_TYPE": "CONTACT", "!CALL_FAILED_CODE": "200", "><CALL_DURATION": [0, 0]}})).await;
    for r in v["result"].as_array().unwrap() {
        assert_eq!(r["CRM_ENTITY_TYPE"], "CONTACT");
        assert_ne!(r["CALL_FAILED_CODE"], "200");
    }
    assert!(v["total"].as_u64().unwrap() > 0);
    let (_, v) = call_json(
        &e,
        "voximplant.statistic.get",
        json!({"FILTER": {"%CALL_ID": "externalcall."}}),
    )
    .await;
    let n_ext = rows.iter().filter(|r| r["REST_APP_ID"].is_string()).count() as u64;
    assert_eq!(v["total"].as_u64().unwrap(), n_ext);
    // A date without an offset is read in the portal's zone.
    let (_, a) = call_json(
        &e,
        "voximplant.statistic.get",
        json!({"FILTER": {">=CALL_START_DATE": "2026-03-10T00:00:00"}}),
    )
    .await;
    let (_, b) = call_json(
        &e,
        "voximplant.statistic.get",
        json!({"FILTER": {">=CALL_START_DATE": "2026-03-09T21:00:00Z"}}),
    )
    .await;
    assert_eq!(a["total"], b["total"]);
}

#[tokio::test]
async fn batch_keyset_chain_references_and_literal_leftovers() {
    let e = emu(roomy()).await; // 300 calls
    let mut cmd = serde_json::Map::new();
    for i in 0..9 {
        let after = if i == 0 {
            "0".to_string()
        } else {
            format!("$result[c{}][49][ID]", i - 1)
        };
        cmd.insert(
            format!("c{i}"),
            json!(format!(
                "voximplant.statistic.get?FILTER[>ID]={after}&SORT=ID&ORDER=ASC&start=-1"
            )),
        );
    }
    let (st, v) = call_json(&e, "batch", json!({"halt": 0, "cmd": cmd})).await;
    assert_eq!(st, 200);
    let res = &v["result"];
    let mut seen = Vec::new();
    for i in 0..6 {
        let page = ids(&res["result"][format!("c{i}")]);
        assert_eq!(page.len(), 50, "c{i}");
        seen.extend(page);
    }
    assert_eq!(
        seen,
        (1..=300).collect::<Vec<_>>(),
        "six chained pages cover the portal in order"
    );
    assert_eq!(
        res["result"]["c6"],
        json!([]),
        "after the last ID: empty page"
    );
    // c7 refers to c6's 50th row, which does not exist: the reference stays literal text, `>ID` compares with
    // intval("$result[...]") = 0, and the first page comes back — exactly the trap a real portal sets.
    assert_eq!(ids(&res["result"]["c7"])[0], 1);
    assert_eq!(res["result_error"], json!([]), "empty map is []");
    assert_eq!(res["result_next"], json!([]));
    assert_eq!(res["result_total"]["c0"], json!(0));
    assert!(res["result_time"]["c0"]["date_start"].is_string());

    // Form-encoded batch: the whole command is a value and therefore encoded twice.
    let inner = "user.get?FILTER[ID][0]=$result[p][0][PORTAL_USER_ID]";
    let first = e.call_rows()[0]["PORTAL_USER_ID"]
        .as_str()
        .unwrap()
        .to_string();
    let form = format!(
        "halt=0&cmd[p]={}&cmd[u]={}",
        urlencode("voximplant.statistic.get?FILTER[ID]=1"),
        urlencode(inner)
    );
    let (_, v) = call_form(&e, "batch", &form).await;
    assert_eq!(v["result"]["result"]["u"][0]["ID"], json!(first));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn batch_cap_halt_nesting_and_stats() {
    let e = emu(roomy()).await;
    // Written by hand: serde_json's map would sort the keys, and command order matters.
    let cmd: Vec<String> = (0..52).map(|i| format!("\"s{i}\":\"scope\"")).collect();
    let body = format!("{{\"cmd\":{{{}}}}}", cmd.join(","));
    let r = client()
        .post(format!("{}batch", e.webhook_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let res = &v["result"];
    assert_eq!(res["result"].as_object().unwrap().len(), 50);
    let errs = res["result_error"].as_object().unwrap();
    assert_eq!(errs.len(), 2);
    assert_eq!(errs["s51"]["error"], "ERROR_BATCH_LENGTH_EXCEEDED");

    e.reset_stats();
    let (_, v) = call_json(
        &e,
        "batch",
        json!({"halt": 1, "cmd": {"a": "profile", "b": "crm.contact.get?id=999999", "c": "scope"}}),
    )
    .await;
    let res = &v["result"];
    assert_eq!(
        res["result_error"]["b"],
        json!({"error": "", "error_description": "Not found"})
    );
    assert!(
        res["result"].get("c").is_none(),
        "halt stops after the first failure"
    );
    let (_, v) = call_json(&e, "batch", json!({"cmd": ["batch?cmd[x]=scope", "scope"]})).await;
    let res = &v["result"];
    assert_eq!(
        // A PHP array whose only key is 0 serialises as a list.
        res["result_error"][0]["error"],
        "ERROR_BATCH_METHOD_NOT_ALLOWED"
    );
    assert_eq!(
        res["result"],
        json!({"1": ["crm", "disk", "im", "imopenlines", "telephony", "user"]})
    );

    let s = e.stats();
    assert_eq!(s.by_method["batch"], 2);
    assert_eq!(s.by_method["profile"], 1);
    assert_eq!(s.by_method["crm.contact.get"], 1);
    assert_eq!(s.by_method["scope"], 1);
    assert_eq!(s.http_requests, 2);
    let served: Value = client()
        .get(format!("{}_emulator/stats", e.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["by_method"]["batch"], 2);
    assert_eq!(
        served["http_requests"], 2,
        "the stats endpoint does not count itself"
    );
}

#[tokio::test]
async fn leaky_bucket_rejects_a_burst_and_recovers() {
    let e = emu(PortalConfig {
        calls: 10,
        rate: (5, 1),
        ..Default::default()
    })
    .await;
    let c = client();
    let mut ok = 0;
    let mut rejected = 0;
    for _ in 0..9 {
        let r = c
            .get(format!("{}scope", e.webhook_url()))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                let v: Value = r.json().await.unwrap();
                assert_eq!(
                    v,
                    json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
                );
                rejected += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!((5..=6).contains(&ok), "ok={ok}");
    assert!(rejected >= 3);
    assert_eq!(e.stats().rate_limited, rejected);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c
        .get(format!("{}scope", e.webhook_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the bucket leaked");
    // A batch counts once: one free slot admits a batch of 20 commands.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cmd: serde_json::Map<String, Value> =
        (0..20).map(|i| (format!("x{i}"), json!("scope"))).collect();
    let (st, _) = call_json(&e, "batch", json!({"cmd": cmd})).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn auth_errors_and_unknown_methods() {
    let e = emu(PortalConfig {
        calls: 10,
        ..roomy()
    })
    .await;
    let c = client();
    let base = e.base_url();
    let invalid = ("INVALID_CREDENTIALS", "Invalid request credentials");
    let no_auth = ("NO_AUTH_FOUND", "Wrong authorization data");
    for (case, path, (error, description)) in [
        ("wrong secret", "rest/1/wrongsecret/profile", invalid),
        (
            "another user's webhook",
            "rest/2/emulatorsecret0001/profile",
            invalid,
        ),
        (
            "unknown token, none configured",
            "rest/profile.json?auth=abc",
            no_auth,
        ),
    ] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{case}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"error": error, "error_description": description}),
            "{case}"
        );
    }
    let (st, v) = call_json(&e, "no.such.method", json!({})).await;
    assert_eq!(
        (st, v),
        (
            404,
            json!({"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"})
        )
    );
    let (st, v) = call_json(&e, "PROFILE.json", json!({})).await;
    assert_eq!(st, 200, "method names are case-insensitive");
    assert_eq!(v["result"]["ADMIN"], json!(true));
    assert_eq!(v["result"]["ID"], "1");

    let e2 = emu(PortalConfig {
        calls: 10,
        access_tokens: vec!["tok1".into()],
        ..roomy()
    })
    .await;
    let base = e2.base_url();
    let r = c
        .get(format!("{base}rest/app.info"))
        .bearer_auth("tok1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["result"]["INSTALLED"],
        json!(true)
    );
    let r = c
        .post(format!("{base}rest/scope.json"))
        .form(&[("auth", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_token");
}

#[tokio::test]
async fn users_and_crm_lookups() {
    let e = emu(roomy()).await;
    let (_, v) = call_json(
        &e,
        "user.get",
        json!({"FILTER": {"ID": [3, 1]}, "sort": "ID", "order": "DESC"}),
    )
    .await;
    assert_eq!(ids(&v["result"]), vec![3, 1]);
    let (name, last) = e.user_name(3).unwrap();
    assert_eq!(v["result"][0]["NAME"], json!(name));
    assert_eq!(v["result"][0]["LAST_NAME"], json!(last));
    assert!(v["result"][0]["ACTIVE"].is_boolean());
    let (_, v) = call_form(&e, "user.get", "ID=2").await;
    assert_eq!(ids(&v["result"]), vec![2], "legacy top-level filter");

    let (_, v) = call_json(&e, "crm.company.get", json!({"id": 3})).await;
    assert_eq!(
        v["result"]["TITLE"],
        json!(e.crm_title("COMPANY", 3).unwrap())
    );
    assert!(v["result"]["TITLE"].as_str().unwrap().starts_with("ООО"));
    for (method, params, description) in [
        ("crm.lead.get", json!({"id": 99999}), "Not found"),
        ("crm.deal.get", json!({}), "ID is not defined or invalid."),
    ] {
        let (st, v) = call_json(&e, method, params.clone()).await;
        assert_eq!(
            (st, v),
            (400, json!({"error": "", "error_description": description})),
            "{method} {params}"
        );
    }
    let (_, v) = call_json(
        &e,
        "crm.contact.list",
        json!({"filter": {"@ID": [5, 7, 9]}, "select": ["ID", "NAME", "LAST_NAME", "PHONE"], "order": {"ID": "DESC"}}),
    )
    .await;
    assert_eq!(ids(&v["result"]), vec![9, 7, 5]);
    assert_eq!(v["total"], json!(3));
    let row = v["result"][0].as_object().unwrap();
    assert_eq!(row.len(), 4);
    assert_eq!(row["PHONE"][0]["TYPE_ID"], "PHONE");
    assert_eq!(
        format!(
            "{} {}",
            row["NAME"].as_str().unwrap(),
            row["LAST_NAME"].as_str().unwrap()
        ),
        e.crm_title("contact", 9).unwrap()
    );
    let (_, v) = call_json(
        &e,
        "crm.lead.list",
        json!({"filter": {">ID": 50}, "order": {"ID": "ASC"}, "start": -1}),
    )
    .await;
    assert_eq!(ids(&v["result"]), (51..=60).collect::<Vec<_>>());
}

async fn fetch(url: &str) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.status());
    let h = r.headers().clone();
    (h, r.bytes().await.unwrap().to_vec())
}

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

/// The statistic `ID` of the first call that has a recording.
fn first_recorded_call(e: &Bitrix24Emulator) -> u64 {
    e.call_rows()
        .iter()
        .find(|r| r["RECORD_FILE_ID"].is_u64())
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
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

#[tokio::test]
async fn operating_limiter_blocks_one_method() {
    let op = OperatingConfig {
        limit_secs: 1.0,
        cost_per_call_secs: 0.6,
    };
    let e = emu(PortalConfig {
        calls: 10,
        operating: Some(op),
        ..roomy()
    })
    .await;
    let (st, v) = call_json(&e, "scope", json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(v["time"]["operating"], json!(0.6));
    assert!(v["time"]["operating_reset_at"].is_i64());
    let (st, _) = call_json(&e, "scope", json!({})).await;
    assert_eq!(st, 200, "the call that crosses the limit still completes");
    let (st, v) = call_json(&e, "scope", json!({})).await;
    assert_eq!(st, 429);
    assert_eq!(
        v,
        json!({"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation time limit."})
    );
    let (st, _) = call_json(&e, "profile", json!({})).await;
    assert_eq!(st, 200, "other methods keep working");
    assert_eq!(e.stats().operating_limited, 1);
}

#[tokio::test]
async fn faults_html_502_dropped_connections_and_latency() {
    let e = emu(PortalConfig {
        calls: 10,
        latency: Duration::from_millis(40),
        ..roomy()
    })
    .await;
    let c = client();
    let url = format!("{}scope", e.webhook_url());
    let t = std::time::Instant::now();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(40));

    e.set_faults(FaultConfig::none().with_html_502_every(2));
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("502 Bad Gateway"));

    e.set_faults(FaultConfig::none().with_drop_connection_every(1));
    let err = c.get(&url).send().await.unwrap_err();
    assert!(!err.is_status(), "{err}");
    e.set_faults(FaultConfig::none());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
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

#[tokio::test]
async fn slow_downloads_and_uncounted_record_urls() {
    let e = emu(PortalConfig {
        calls: 40,
        rate: (1, 1),
        ..Default::default()
    })
    .await;
    let (id, info) = e
        .call_rows()
        .iter()
        .filter_map(|r| {
            let id: u64 = r["ID"].as_str().unwrap().parse().unwrap();
            e.recording(id).map(|i| (id, i))
        })
        .find(|(_, i)| i.record_url.is_some() && i.bytes > 3 * 64 * 1024)
        .unwrap();
    e.set_faults(FaultConfig::none().with_slow_download(Duration::from_millis(30)));
    let t = std::time::Instant::now();
    let url = info.record_url.clone().unwrap();
    for _ in 0..3 {
        // The bucket holds one request, yet `/records/*` is never counted.
        let (_, body) = fetch(&url).await;
        assert_eq!(body.len() as u64, info.bytes, "call {id}");
    }
    assert!(t.elapsed() >= Duration::from_millis(3 * 3 * 30));
    assert_eq!(e.stats().rate_limited, 0);
    assert_eq!(e.stats().downloads, 3);
}

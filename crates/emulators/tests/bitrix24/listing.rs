//! Listing calls (`voximplant.statistic.get`): the envelope and its quirks, filters, form encoding and order.

use b24sense_core::{Call, CallFilter, CallType, TimeBound};
use b24sense_emulators::bitrix24::PortalConfig;
use serde_json::{json, Value};

use crate::support::{call_form, call_json, emu, ids, keyset_all, msk, roomy};

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

//! `batch`: keyset chains, references between commands, the command cap, halting and nesting.

use serde_json::{json, Value};

use crate::support::{call_form, call_json, client, emu, ids, roomy};

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

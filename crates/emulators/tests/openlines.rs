//! Open Lines on the emulated portal over real sockets: session activities (`crm.activity.list`/`get`) with their
//! filters, keyset paging and batch references; histories in the portal's shape; open sessions closing during a
//! run; deleted CRM owners; the bucket; determinism beside the calls.

use std::collections::BTreeSet;
use std::time::Duration;

use b24sense_emulators::bitrix24::{
    Bitrix24Emulator, ChatSessionInfo, OpenLinesConfig, PortalConfig,
};
use serde_json::{json, Value};

fn portal(sessions: usize) -> PortalConfig {
    PortalConfig {
        seed: 17,
        calls: 20,
        rate: (100_000, 100_000),
        open_lines: OpenLinesConfig {
            sessions,
            ..OpenLinesConfig::default()
        },
        ..PortalConfig::default()
    }
}

async fn call(e: &Bitrix24Emulator, method: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .post(format!("{}{method}", e.webhook_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn ids(rows: &Value) -> Vec<u64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn finished() -> Value {
    json!({"PROVIDER_ID": "IMOPENLINES_SESSION", "COMPLETED": "Y"})
}

#[tokio::test]
async fn keyset_pages_list_exactly_the_finished_sessions() {
    let e = Bitrix24Emulator::start(portal(130)).await.unwrap();
    let oracle = e.chat_sessions();
    let want: Vec<u64> = oracle
        .iter()
        .filter(|s| s.completed)
        .map(|s| s.activity_id)
        .collect();
    assert!(want.len() < oracle.len(), "some sessions are still open");
    let mut got: Vec<u64> = Vec::new();
    let mut last = 0u64;
    for _ in 0..10 {
        let mut filter = finished();
        filter[">ID"] = json!(last);
        let (status, body) = call(
            &e,
            "crm.activity.list",
            json!({"filter": filter, "order": {"ID": "ASC"}, "select": ["ID", "COMPLETED"], "start": -1}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["total"], 0, "start=-1 counts nothing");
        assert!(body.get("next").is_none());
        let rows = &body["result"];
        assert!(rows
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["COMPLETED"] == "Y"));
        assert!(
            rows[0].get("START_TIME").is_none(),
            "only the selected fields"
        );
        let page = ids(rows);
        got.extend(&page);
        if page.len() < 50 {
            break;
        }
        last = *page.last().unwrap();
    }
    assert_eq!(got, want, "every finished session once, ascending");
}

#[tokio::test]
async fn filters_by_operator_period_and_provider() {
    let e = Bitrix24Emulator::start(portal(120)).await.unwrap();
    let oracle = e.chat_sessions();
    let op = oracle[10].responsible_id;
    let (from, to) = (oracle[20].start, oracle[60].start);
    let mut filter = finished();
    filter["RESPONSIBLE_ID"] = json!([op]);
    filter[">=START_TIME"] = json!(from.to_rfc3339());
    filter["<=START_TIME"] = json!(to.to_rfc3339());
    let (_, body) = call(
        &e,
        "crm.activity.list",
        json!({"filter": filter, "order": {"ID": "ASC"}}),
    )
    .await;
    let want: Vec<u64> = oracle
        .iter()
        .filter(|s| s.completed && s.responsible_id == op && s.start >= from && s.start <= to)
        .map(|s| s.activity_id)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(ids(&body["result"]), want);
    assert_eq!(body["total"], json!(want.len()), "offset paging counts");
    let (_, calls) = call(
        &e,
        "crm.activity.list",
        json!({"filter": {"PROVIDER_ID": "VOXIMPLANT_CALL"}}),
    )
    .await;
    assert_eq!(
        calls["result"],
        json!([]),
        "only Open Lines activities on this portal"
    );
}

#[tokio::test]
async fn batch_chains_activity_pages_by_reference() {
    let e = Bitrix24Emulator::start(portal(140)).await.unwrap();
    let q = "filter[PROVIDER_ID]=IMOPENLINES_SESSION&filter[COMPLETED]=Y&order[ID]=ASC&start=-1&select[0]=ID";
    let cmd = json!({
        "p0": format!("crm.activity.list?{q}&filter[%3EID]=0"),
        "p1": format!("crm.activity.list?{q}&filter[%3EID]=$result[p0][49][ID]"),
        "p2": format!("crm.activity.list?{q}&filter[%3EID]=$result[p1][49][ID]"),
    });
    let (status, body) = call(&e, "batch", json!({"halt": 0, "cmd": cmd})).await;
    assert_eq!(status, 200);
    let r = &body["result"]["result"];
    let chained: Vec<u64> = ["p0", "p1", "p2"]
        .iter()
        .flat_map(|p| ids(&r[*p]))
        .collect();
    let want: Vec<u64> = e
        .chat_sessions()
        .iter()
        .filter(|s| s.completed)
        .map(|s| s.activity_id)
        .collect();
    assert_eq!(chained, want, "three pages, no gap, no repeat");
    assert_eq!(e.stats().by_method["crm.activity.list"], 3);
}

fn session(all: &[ChatSessionInfo], f: impl Fn(&ChatSessionInfo) -> bool) -> &ChatSessionInfo {
    all.iter()
        .find(|s| f(s))
        .expect("the catalogue has such a session")
}

#[tokio::test]
async fn history_in_the_portals_shape() {
    let e = Bitrix24Emulator::start(portal(30)).await.unwrap();
    let all = e.chat_sessions();
    let s = &all[0];
    assert!(
        s.bot_id.is_some() && s.operators.len() == 2,
        "bot and transfer"
    );
    let (status, h) = call(
        &e,
        "imopenlines.session.history.get",
        json!({"SESSION_ID": s.session_id}),
    )
    .await;
    assert_eq!(status, 200);
    let h = &h["result"];
    assert_eq!(h["sessionId"], json!(s.session_id));
    let messages = h["message"].as_object().unwrap();
    let keys: Vec<u64> = messages.keys().map(|k| k.parse().unwrap()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_ne!(
        keys, sorted,
        "object order is not message order: readers must sort"
    );
    assert_eq!(sorted, s.messages.iter().map(|m| m.0).collect::<Vec<_>>());
    for (id, role, sender, text, file) in &s.messages {
        let m = &messages[&id.to_string()];
        assert_eq!(
            m["senderid"],
            json!(sender.to_string()),
            "senderid is a string"
        );
        assert_eq!(m["text"], json!(text));
        assert_eq!(*role == "system", *sender == 0);
        let user = &h["users"][sender.to_string()];
        match *role {
            "client" => assert_eq!(
                (&user["connector"], &user["externalAuthId"]),
                (&json!(true), &json!("imconnector"))
            ),
            "bot" => assert_eq!(
                (&user["bot"], &user["connector"]),
                (&json!(true), &json!(false))
            ),
            "operator" => assert_eq!(
                (&user["bot"], &user["connector"]),
                (&json!(false), &json!(false))
            ),
            _ => assert!(user.is_null()),
        }
        if let Some(name) = file {
            let fid = m["params"]["FILE_ID"][0].as_str().unwrap();
            assert_eq!(h["files"][fid]["name"], json!(name));
        }
    }
    let chat = &h["chat"][s.chat_id.to_string()];
    assert_eq!(chat["entityId"], json!(s.user_code));
    assert!(chat["entityData1"]
        .as_str()
        .unwrap()
        .starts_with(&format!("Y|{}|{}|", s.owner.0, s.owner.1)));
    let plain = session(&all, |x| x.long_text);
    let (_, h2) = call(
        &e,
        "imopenlines.session.history.get",
        json!({"SESSION_ID": plain.session_id}),
    )
    .await;
    let long = h2["result"]["message"]
        .as_object()
        .unwrap()
        .values()
        .map(|m| m["text"].as_str().unwrap().len())
        .max();
    assert_eq!(long, Some(12_000), "the very long text whole");
    let no_files = session(&all, |x| x.messages.iter().all(|m| m.4.is_none()));
    let (_, h3) = call(
        &e,
        "imopenlines.session.history.get",
        json!({"SESSION_ID": no_files.session_id}),
    )
    .await;
    assert_eq!(h3["result"]["files"], json!([]), "an empty map is []");
    let (status, err) = call(
        &e,
        "imopenlines.session.history.get",
        json!({"SESSION_ID": 99_999_999}),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("ACCESS_ERROR")));
}

#[tokio::test]
async fn an_open_session_closes_during_a_run() {
    let e = Bitrix24Emulator::start(portal(30)).await.unwrap();
    let open = e
        .chat_sessions()
        .into_iter()
        .find(|s| !s.completed)
        .unwrap();
    let get = json!({"id": open.activity_id});
    let (_, before) = call(&e, "crm.activity.get", get.clone()).await;
    assert_eq!(before["result"]["COMPLETED"], "N");
    let (_, h) = call(
        &e,
        "imopenlines.session.history.get",
        json!({"SESSION_ID": open.session_id}),
    )
    .await;
    let shown_before = h["result"]["message"].as_object().unwrap().len();
    assert!(e.close_chat_session(open.session_id));
    assert!(
        !e.close_chat_session(open.session_id),
        "closing twice does nothing"
    );
    let (_, after) = call(&e, "crm.activity.get", get).await;
    assert_eq!(after["result"]["COMPLETED"], "Y");
    let updated =
        chrono::DateTime::parse_from_rfc3339(after["result"]["LAST_UPDATED"].as_str().unwrap())
            .unwrap();
    assert!(updated > open.start);
    let (_, h) = call(
        &e,
        "imopenlines.session.history.get",
        json!({"SESSION_ID": open.session_id}),
    )
    .await;
    assert_eq!(
        h["result"]["message"].as_object().unwrap().len(),
        shown_before + 1,
        "the closing notice appears"
    );
    let mut filter = finished();
    filter[">=LAST_UPDATED"] = json!(updated.to_rfc3339());
    let (_, listed) = call(&e, "crm.activity.list", json!({"filter": filter})).await;
    assert_eq!(
        ids(&listed["result"]),
        [open.activity_id],
        "the re-scan window finds it"
    );
}

#[tokio::test]
async fn deleted_owners_are_gone_from_the_crm() {
    let e = Bitrix24Emulator::start(portal(30)).await.unwrap();
    let all = e.chat_sessions();
    let s = session(&all, |x| x.owner_deleted);
    let method = format!("crm.{}.get", s.owner.0.to_lowercase());
    let (status, err) = call(&e, &method, json!({"id": s.owner.1})).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (400, Some("Not found"))
    );
    let kept = session(&all, |x| !x.owner_deleted);
    let (status, _) = call(
        &e,
        &format!("crm.{}.get", kept.owner.0.to_lowercase()),
        json!({"id": kept.owner.1}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_bucket_governs_open_lines_methods_too() {
    let e = Bitrix24Emulator::start(PortalConfig {
        rate: (3, 1),
        ..portal(10)
    })
    .await
    .unwrap();
    let mut codes = BTreeSet::new();
    for _ in 0..8 {
        let (status, body) = call(&e, "crm.activity.list", json!({"filter": finished()})).await;
        codes.insert((status, body["error"].as_str().unwrap_or("").to_string()));
    }
    assert!(
        codes.contains(&(503, "QUERY_LIMIT_EXCEEDED".to_string())),
        "{codes:?}"
    );
    assert!(codes.contains(&(200, String::new())));
}

#[tokio::test]
async fn deterministic_and_beside_the_calls() {
    let a = Bitrix24Emulator::start(portal(40)).await.unwrap();
    let b = Bitrix24Emulator::start(portal(40)).await.unwrap();
    assert_eq!(a.chat_sessions(), b.chat_sessions());
    let none = Bitrix24Emulator::start(portal(0)).await.unwrap();
    assert!(none.chat_sessions().is_empty());
    // The same rows but for the recording host's port.
    let rows = |e: &Bitrix24Emulator| {
        let base = e.records_base_url().to_string();
        serde_json::to_string(&e.call_rows())
            .unwrap()
            .replace(&base, "RECORDS/")
    };
    assert_eq!(
        rows(&a),
        rows(&none),
        "chats do not change the call history"
    );
}

//! Users and CRM entities, as the engine looks them up.

use serde_json::json;

use crate::support::{call_form, call_json, emu, ids, roomy};

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

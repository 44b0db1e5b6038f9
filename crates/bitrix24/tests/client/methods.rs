//! The typed methods: listing calls page by page, and lookups packed into batches.

use b24sense_core::{CallFilter, CrmEntityType, CrmRef};
use serde_json::{json, Value};

use crate::mock::{bounded, commands, spawn_mock, webhook_client};

fn call_row(id: u64) -> Value {
    json!({"ID": id.to_string(), "PORTAL_USER_ID": "12", "PHONE_NUMBER": "+79001234567", "CALL_ID": format!("c{id}"),
        "CALL_DURATION": "95", "CALL_START_DATE": "2026-03-10T11:19:38+03:00", "CALL_RECORD_URL": "",
        "RECORD_FILE_ID": 9000 + id, "CALL_TYPE": "2", "CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": "797"})
}

#[tokio::test]
async fn list_calls_chains_pages_and_stops_at_the_first_short_one() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        let page = |from: u64, n: u64| Value::Array((from..from + n).map(call_row).collect());
        let mut p2 = page(201, 3);
        p2.as_array_mut().unwrap().push(json!({"ID": "204", "CALL_START_DATE": "yesterday"}));
        let mut results = serde_json::Map::new();
        results.insert("p00".into(), page(101, 50));
        results.insert("p01".into(), page(151, 50));
        results.insert("p02".into(), p2);
        // What the portal does with the unresolved reference of the next page: odd rows, to be ignored.
        results.insert("p03".into(), page(1, 50));
        mock.ok(json!({"result": results, "result_error": [], "result_total": [], "result_next": [], "result_time": []}));
        let c = webhook_client(addr);
        let filter = CallFilter { users: vec![12], min_duration: 30, ..Default::default() };
        let chunk = c.list_calls(&filter, 100).await.unwrap();
        assert_eq!(chunk.calls.len(), 103);
        assert_eq!(chunk.calls[0].id, 101);
        assert_eq!(chunk.calls[102].id, 203);
        assert_eq!(chunk.last_id, Some(204), "the unreadable row still advances the cursor");
        assert!(chunk.exhausted);
        assert_eq!(chunk.bad_rows.len(), 1);
        assert!(chunk.bad_rows[0].contains("204"), "{:?}", chunk.bad_rows);
        assert_eq!(chunk.calls[0].call_start_date.offset().local_minus_utc(), 3 * 3600);

        let seen = mock.seen();
        assert_eq!(seen.len(), 1, "one HTTP request");
        assert_eq!(seen[0].path, "/rest/1/s3cr3tw3bh00k/batch.json");
        let cmds = commands(&seen[0]);
        assert_eq!(cmds.len(), 50);
        assert_eq!(cmds[0].0, "p00");
        assert_eq!(
            cmds[0].1,
            "voximplant.statistic.get?FILTER[%3E%3DCALL_DURATION]=30&FILTER[%3EID]=100&FILTER[PORTAL_USER_ID][0]=12\
             &ORDER=ASC&SORT=ID&start=-1"
        );
        assert_eq!(
            cmds[1].1,
            "voximplant.statistic.get?FILTER[%3E%3DCALL_DURATION]=30&FILTER[PORTAL_USER_ID][0]=12&ORDER=ASC&SORT=ID\
             &start=-1&FILTER[%3EID]=$result[p00][49][ID]"
        );
        assert_eq!(cmds[49].0, "p49");
        assert!(cmds[49].1.ends_with("FILTER[%3EID]=$result[p48][49][ID]"));

        // Every page full → not exhausted; a failing later page keeps the pages before it.
        let mut results = serde_json::Map::new();
        results.insert("p00".into(), page(1, 50));
        results.insert("p01".into(), page(51, 50));
        mock.ok(json!({"result": results,
            "result_error": {"p02": {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}}}));
        let chunk = c.list_calls_pages(&CallFilter::default(), 0, 3).await.unwrap();
        assert_eq!((chunk.calls.len(), chunk.last_id, chunk.exhausted), (100, Some(100), false));

        // An error on the first page is the call's error.
        mock.ok(json!({"result": [], "result_error": {"p00": {"error": "ACCESS_DENIED", "error_description": "Access denied!"}}}));
        let e = c.list_calls(&CallFilter::default(), 0).await.unwrap_err();
        assert_eq!(e.api_code(), Some("ACCESS_DENIED"));
    })
    .await
}

#[tokio::test]
async fn lookup_packs_commands_fifty_ids_each() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.ok(json!({
            "result": {
                "u0": [{"ID": "1", "NAME": "Anna", "LAST_NAME": "Ivanova", "ACTIVE": false}, {"ID": "999", "NAME": "Stranger"}],
                "u1": [{"ID": "51", "NAME": "Boris", "LAST_NAME": ""}],
                "u2": [],
                "contact0": [{"ID": "797", "NAME": "Client", "LAST_NAME": "One"}],
                "company0": [{"ID": "5", "TITLE": "ACME"}]},
            "result_error": {"lead0": {"error": "ACCESS_DENIED", "error_description": "Access denied"}}}));
        let c = webhook_client(addr);
        let users: Vec<u64> = (1..=120).collect();
        let crm = vec![
            CrmRef { kind: CrmEntityType::Contact, id: 797 },
            CrmRef { kind: CrmEntityType::Company, id: 5 },
            CrmRef { kind: CrmEntityType::Lead, id: 7 },
            CrmRef { kind: CrmEntityType::Other("QUOTE".into()), id: 1 },
        ];
        let l = c.lookup(&users, &crm).await.unwrap();
        assert_eq!(l.users.len(), 2, "unreturned and unrequested ids are absent");
        assert_eq!(l.users[&1].name.as_deref(), Some("Anna"));
        assert_eq!(l.users[&51].last_name, None);
        assert_eq!(l.crm[&crm[0]].last_name.as_deref(), Some("One"));
        assert_eq!(l.crm[&crm[1]].title.as_deref(), Some("ACME"));
        assert!(!l.crm.contains_key(&crm[2]));

        let seen = mock.seen();
        assert_eq!(seen.len(), 1, "one batch request");
        let cmds = commands(&seen[0]);
        let users_cmds: Vec<_> = cmds.iter().filter(|(_, c)| c.starts_with("user.get?")).collect();
        assert_eq!(users_cmds.len(), 3);
        assert!(users_cmds[0].1.contains("FILTER[ID][49]=50") && !users_cmds[0].1.contains("FILTER[ID][50]"));
        assert!(users_cmds[0].1.contains("ADMIN_MODE=1"));
        assert!(!users_cmds[0].1.contains("ACTIVE"));
        assert!(users_cmds[2].1.contains("FILTER[ID][19]=120"));
        let contact = cmds.iter().find(|(n, _)| n == "contact0").unwrap();
        assert_eq!(contact.1, "crm.contact.list?filter[ID][0]=797&select[0]=ID&select[1]=NAME&select[2]=LAST_NAME&start=-1");
        assert_eq!(cmds.len(), 6, "3 user.get + contact + company + lead; unknown kinds skipped");

        // More than 50 commands → several batch requests.
        for _ in 0..2 {
            mock.ok(json!({"result": [], "result_error": []}));
        }
        let many: Vec<u64> = (1..=2600).collect();
        let l = c.lookup(&many, &[]).await.unwrap();
        assert!(l.users.is_empty());
        let seen = mock.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(commands(&seen[1]).len(), 50);
        assert_eq!(commands(&seen[2]).len(), 2);
    })
    .await
}

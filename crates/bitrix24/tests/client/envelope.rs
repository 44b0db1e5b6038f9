//! The request on the wire and the envelope of the answer, single calls and `batch`.

use b24sense_bitrix24::*;
use serde_json::json;

use crate::mock::{bounded, spawn_mock, time_block, webhook_client, Reply};

#[tokio::test]
async fn success_envelope_and_request_shape() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.push(Reply::Json(
            200,
            json!({"result": {"ID": "1", "ADMIN": true, "NAME": "Anna", "LAST_NAME": ""},
            "time": time_block(Some((3.31, 1773142441.0)))}),
        ));
        mock.push(Reply::Json(
            200,
            json!({"result": [{"ID": "5"}], "next": "50", "total": 137, "time": time_block(None)}),
        ));
        let c = webhook_client(addr);
        assert_eq!(c.portal_host(), addr.to_string());
        assert_eq!(c.portal_offset(), None);
        let p = c.profile().await.unwrap();
        assert_eq!(
            p,
            Profile {
                id: 1,
                admin: true,
                name: Some("Anna".into()),
                last_name: None
            }
        );
        assert_eq!(
            c.portal_offset().unwrap().local_minus_utc(),
            3 * 3600,
            "learned from time.date_start"
        );

        let r = c
            .call("user.get", json!({"FILTER": {"ID": [5]}}))
            .await
            .unwrap();
        assert_eq!(r.next, Some(50));
        assert_eq!(r.total, Some(137));
        assert_eq!(r.result, json!([{"ID": "5"}]));
        let t = r.time.unwrap();
        assert_eq!(t.duration, Some(0.59));
        assert!(t.date_finish.is_some());

        let seen = mock.seen();
        assert_eq!(seen[0].path, "/rest/1/s3cr3tw3bh00k/profile.json");
        assert_eq!(seen[1].path, "/rest/1/s3cr3tw3bh00k/user.get.json");
        assert_eq!(seen[1].header("content-type"), "application/json");
        assert!(seen[1].header("user-agent").starts_with("b24sense/"));
        assert_eq!(seen[1].json(), json!({"FILTER": {"ID": [5]}}));
        assert_eq!(c.stats().requests, 2);

        // Odd method names never reach the wire.
        assert!(matches!(
            c.call("../x", json!({})).await,
            Err(Error::InvalidArgument(_))
        ));
    })
    .await
}

#[tokio::test]
async fn batch_parses_empty_php_maps_and_result_error() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.ok(json!({
            "result": {"ok": [{"ID": "1"}], "empty": []},
            "result_error": {"bad": {"error": "ACCESS_DENIED", "error_description": "Access denied!"}},
            "result_total": [], "result_next": {"ok": "50"}, "result_time": []}));
        mock.ok(json!({"result": [], "result_error": [], "result_total": [], "result_next": [], "result_time": []}));
        let c = webhook_client(addr);
        let cmds: Vec<(String, String)> = ["ok", "empty", "bad"]
            .iter()
            .map(|n| (n.to_string(), "user.get?FILTER[ID]=1".to_string()))
            .collect();
        let b = c.batch(&cmds, true).await.unwrap();
        assert_eq!(b.results.len(), 2);
        assert_eq!(b.results["empty"], json!([]));
        assert_eq!(b.errors["bad"].kind(), ApiErrorKind::AccessDenied);
        assert_eq!(b.next["ok"], 50);
        assert!(b.total.is_empty());
        let body = mock.seen()[0].body.clone();
        assert_eq!(
            body,
            r#"{"halt":1,"cmd":{"ok":"user.get?FILTER[ID]=1","empty":"user.get?FILTER[ID]=1","bad":"user.get?FILTER[ID]=1"}}"#,
            "commands keep the caller's order"
        );

        let b = c.batch(&cmds[..1], false).await.unwrap();
        assert!(b.results.is_empty() && b.errors.is_empty());

        let too_many: Vec<(String, String)> = (0..51).map(|i| (format!("c{i}"), "profile".to_string())).collect();
        assert!(matches!(c.batch(&too_many, false).await, Err(Error::InvalidArgument(_))));
        assert_eq!(mock.seen().len(), 2, "an oversized batch is refused locally");
    })
    .await
}

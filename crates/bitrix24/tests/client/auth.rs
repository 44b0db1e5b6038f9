//! OAuth tokens that expire, and a renamed portal's redirect (webhook and OAuth).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use b24sense_bitrix24::*;
use b24sense_core::ErrorClass;
use serde_json::json;

use crate::mock::{bounded, fast_config, spawn_mock, webhook_client, FakeTokens, Reply};

#[tokio::test]
async fn expired_token_refreshes_once_and_retries() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        let tokens = Arc::new(FakeTokens {
            endpoint: format!("http://{addr}/rest/").parse().unwrap(),
            refreshes: AtomicU32::new(0),
        });
        let c = Bitrix24Client::new(Credentials::OAuth(tokens.clone()), fast_config()).unwrap();
        mock.push(Reply::Json(401, json!({"error": "expired_token", "error_description": "The access token provided has expired"})));
        mock.ok(json!({"ID": "3", "ADMIN": "N"}));
        let p = c.profile().await.unwrap();
        assert_eq!((p.id, p.admin), (3, false));
        assert_eq!(tokens.refreshes.load(Ordering::SeqCst), 1);
        let seen = mock.seen();
        assert_eq!(seen[0].path, "/rest/profile.json");
        assert_eq!(seen[0].header("authorization"), "Bearer old-token");
        assert_eq!(seen[1].header("authorization"), "Bearer new-token");
        assert_eq!(c.portal_host(), addr.to_string());

        // A token that stays invalid after the refresh is fatal, and refresh happens only once per call.
        mock.push(Reply::Json(401, json!({"error": "invalid_token", "error_description": ""})));
        mock.push(Reply::Json(401, json!({"error": "invalid_token", "error_description": ""})));
        let e = c.call("profile", json!({})).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert_eq!(tokens.refreshes.load(Ordering::SeqCst), 2);
        assert_eq!(mock.seen().len(), 4);
    })
    .await
}

#[tokio::test]
async fn renamed_portal_redirect_reposts_to_the_new_host() {
    bounded(async {
        let (old, old_addr) = spawn_mock().await;
        let (new, new_addr) = spawn_mock().await;
        old.push(Reply::Redirect(format!(
            "http://localhost:{}/rest/1/s3cr3tw3bh00k/batch.json",
            new_addr.port()
        )));
        new.ok(json!({"result": {"a": 1}, "result_error": []}));
        new.ok(json!({"ID": "1"}));
        let c = webhook_client(old_addr);
        let cmds = vec![("a".to_string(), "profile".to_string())];
        let b = c.batch(&cmds, false).await.unwrap();
        assert_eq!(b.results["a"], json!(1));
        assert_eq!(c.portal_host(), format!("localhost:{}", new_addr.port()));
        let (o, n) = (old.seen(), new.seen());
        assert_eq!(o.len(), 1);
        assert_eq!(n[0].path, "/rest/1/s3cr3tw3bh00k/batch.json");
        assert_eq!(n[0].body, o[0].body, "the same POST body is re-sent");
        // Later calls go straight to the new host.
        c.profile().await.unwrap();
        assert_eq!(old.seen().len(), 1);
        assert_eq!(new.seen()[1].path, "/rest/1/s3cr3tw3bh00k/profile.json");
        assert_eq!(c.stats().redirects, 1);
    })
    .await
}

#[tokio::test]
async fn renamed_portal_redirect_in_oauth_mode_overrides_client_endpoint() {
    bounded(async {
        let (old, old_addr) = spawn_mock().await;
        let (new, new_addr) = spawn_mock().await;
        let tokens = Arc::new(FakeTokens {
            endpoint: format!("http://{old_addr}/rest/").parse().unwrap(),
            refreshes: AtomicU32::new(0),
        });
        let c = Bitrix24Client::new(Credentials::OAuth(tokens), fast_config()).unwrap();
        old.push(Reply::Redirect(format!(
            "http://localhost:{}/rest/profile.json",
            new_addr.port()
        )));
        new.ok(json!({"ID": "1", "ADMIN": "Y"}));
        new.ok(json!({"ID": "1", "ADMIN": "Y"}));
        assert!(c.profile().await.unwrap().admin);
        // The token source still says the old host; the client keeps using the new one.
        assert!(c.profile().await.unwrap().admin);
        assert_eq!(c.portal_host(), format!("localhost:{}", new_addr.port()));
        assert_eq!(old.seen().len(), 1);
        let n = new.seen();
        assert_eq!(n.len(), 2);
        assert_eq!(n[1].path, "/rest/profile.json");
        assert_eq!(n[1].header("authorization"), "Bearer old-token");
    })
    .await
}

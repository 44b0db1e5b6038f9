//! The portal's operating-time limit, and the limiter and stats that clones share.

use std::time::{Duration, Instant};

use b24sense_bitrix24::*;
use serde_json::json;

use crate::mock::{bounded, fast_config, spawn_mock, time_block, unix_now, webhook_client, Reply};

#[tokio::test]
async fn operation_time_limit_waits_until_reset() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        let reset = unix_now() + 1.0;
        mock.push(Reply::Json(429, json!({"error": "OPERATION_TIME_LIMIT",
            "error_description": "Method is blocked due to operation time limit.", "time": time_block(Some((481.0, reset)))})));
        mock.ok(json!({"ok": 1}));
        let c = webhook_client(addr);
        c.call("voximplant.statistic.get", json!({})).await.unwrap();
        let seen = mock.seen();
        assert!(seen[1].unix >= reset, "retried after the reset, not at once: {} < {reset}", seen[1].unix);
        assert!(seen[1].unix < reset + 3.0);
        assert_eq!(c.stats().operating_limited, 1);
    })
    .await
}

#[tokio::test]
async fn operating_time_near_the_limit_holds_only_that_method() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        let reset = unix_now() + 1.0;
        // 400 s > 0.75 × 480 s.
        mock.push(Reply::Json(
            200,
            json!({"result": [], "time": time_block(Some((400.0, reset)))}),
        ));
        mock.ok(json!("other"));
        mock.ok(json!("same"));
        let c = webhook_client(addr);
        c.call("voximplant.statistic.get", json!({})).await.unwrap();
        let t = Instant::now();
        c.call("user.get", json!({})).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "other methods keep working"
        );
        c.call("voximplant.statistic.get", json!({})).await.unwrap();
        let seen = mock.seen();
        assert!(seen[2].unix >= reset, "held until operating_reset_at");
        assert!(seen[1].unix < reset, "the other method was not held");
        assert_eq!(c.stats().operating_limited, 1);
    })
    .await
}

#[tokio::test]
async fn clones_share_the_limiter_and_stats() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        for _ in 0..4 {
            mock.ok(json!(1));
        }
        let w = WebhookUrl::parse(&format!("http://{addr}/rest/1/s3cr3tw3bh00k/")).unwrap();
        // Burst ceil(0.9 × 2) = 2, then 1 request per 100 ms... per_second 10.
        let cfg = ClientConfig {
            rate: RatePlan {
                capacity: 2,
                per_second: 10,
            },
            ..fast_config()
        };
        let c = Bitrix24Client::new(Credentials::Webhook(w), cfg).unwrap();
        let c2 = c.clone();
        let t = Instant::now();
        let (a, b) = tokio::join!(
            async { (c.call("a", json!({})).await, c.call("a", json!({})).await) },
            async { (c2.call("b", json!({})).await, c2.call("b", json!({})).await) }
        );
        assert!(a.0.is_ok() && a.1.is_ok() && b.0.is_ok() && b.1.is_ok());
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "2 at once, then 2 × 100 ms: {:?}",
            t.elapsed()
        );
        assert_eq!(c2.stats().requests, 4);
    })
    .await
}

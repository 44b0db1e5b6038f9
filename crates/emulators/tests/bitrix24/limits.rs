//! The portal's limits: the leaky bucket and the per-method operating-time limit.

use std::time::Duration;

use b24sense_emulators::bitrix24::{OperatingConfig, PortalConfig};
use serde_json::{json, Value};

use crate::support::{call_json, client, emu, roomy};

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

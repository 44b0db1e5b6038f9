//! The CSV report (calls; the chat rows are in `chats.rs`), streamed from the ledger page by page, against the emulators over real sockets.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use b24sense_core::{Call, FailReason, Outcome};
use chrono::FixedOffset;
use common::{good_settings, http, App};
use serde_json::json;

fn call(id: u64) -> Call {
    let row = json!({
        "ID": id.to_string(), "CALL_ID": format!("call-{id}"), "CALL_DURATION": "60", "CALL_TYPE": "1",
        "CALL_START_DATE": "2026-03-10T11:19:38+03:00", "CALL_RECORD_URL": "",
        "PORTAL_USER_ID": "1", "PHONE_NUMBER": "+79001234567",
    });
    Call::from_bitrix(&row, FixedOffset::east_opt(3 * 3600).unwrap()).unwrap()
}

#[tokio::test]
async fn the_report_is_every_ledger_row_streamed_as_csv() {
    let fx = App::start(30, |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(4)
    })
    .await;
    fx.install().await;
    let s = fx.session().await;
    assert_eq!(
        s.call("POST", "settings", Some(good_settings(&fx.speech)))
            .await
            .0,
        200
    );
    s.export().await;

    // More rows than a page holds (several pages), and a detail CSV must quote.
    let member = fx.emu.app_member_id();
    let store = &fx.store;
    let extra: Vec<Call> = (1_000_000..1_001_234).map(call).collect();
    store.register(&member, &extra).await.unwrap();
    let detail = "download failed, \"HTTP 500\"\nsecond line; третья, строка";
    let claim = store
        .claim(&member, 1_000_500, "test", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .finish(
            &claim,
            &Outcome::Failed {
                reason: FailReason::DownloadFailed,
                detail: detail.into(),
            },
        )
        .await
        .unwrap());

    let r = http()
        .get(format!("{}api/report", fx.base))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    // Streamed: no length known up front.
    assert!(r.headers().get("content-length").is_none());
    let body = r.text().await.unwrap();
    assert!(
        body.contains("\"download failed, \"\"HTTP 500\"\"\nsecond line; третья, строка\""),
        "the detail is quoted as RFC 4180 says"
    );

    let mut reader = csv::Reader::from_reader(body.as_bytes());
    assert_eq!(
        reader.headers().unwrap(),
        vec![
            "kind",
            "id",
            "state",
            "reason",
            "talk_id",
            "attempts",
            "detail",
            "updated_at"
        ]
    );
    // Without a chat connection every row is a call's; the columns after `kind` are read as before.
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(&r[0], "call");
            r.iter().skip(1).collect()
        })
        .collect();
    let total: u64 = store
        .counts(Some(&member))
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(rows.len() as u64, total);
    assert!(rows.len() > 1_234);
    let ids: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
    for row in &rows {
        let e = store
            .entry(&member, row[0].parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&row[1], e.state.as_str());
        assert_eq!(&row[2], e.reason.as_deref().unwrap_or(""));
        assert_eq!(&row[3], e.talk_id.as_deref().unwrap_or(""));
        assert_eq!(row[4].parse::<u32>().unwrap(), e.attempts);
        assert_eq!(&row[5], e.detail.as_deref().unwrap_or(""));
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(&row[6]).unwrap(),
            e.updated_at
        );
    }
    let special = rows.iter().find(|r| &r[0] == "1000500").unwrap();
    assert_eq!(
        (&special[1], &special[2], &special[5]),
        ("failed", "download_failed", detail)
    );
    // Uploaded calls carry their talk IDs.
    let talks: BTreeSet<String> = fx.speech.talks().into_iter().map(|t| t.id).collect();
    let reported: BTreeSet<String> = rows
        .iter()
        .filter(|r| &r[1] == "uploaded" && !r[3].is_empty())
        .map(|r| r[3].to_string())
        .collect();
    assert_eq!(reported, talks);
}

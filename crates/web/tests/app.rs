//! The application server against the Bitrix24 and SpeechSense emulators over real sockets on 127.0.0.1:
//! install, the settings page and its API, check connection, export with live progress, OAuth refresh
//! (single-flight), events with the application token, metrics, uninstall.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24sense_bitrix24::{AccessToken, TokenSource};
use b24sense_core::LedgerState;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, FrameRequest, PortalConfig};
use b24sense_engine::LateRecordings;
use b24sense_store::PortalStatus;
use b24sense_web::metrics::Metrics;
use b24sense_web::oauth::{OAuthClient, RefreshLocks, StoreTokenSource};
use b24sense_web::{AppServer, WebConfig};
use common::{
    good_settings, http, listen, open_page, portal, post_event, post_frame, serve, App, Session,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use url::Url;

/// The fixture with four uploads at a time (the exports here are about progress, not concurrency).
async fn fixture(calls: usize) -> App {
    fixture_with(calls, |_| {}).await
}

async fn fixture_with(calls: usize, adjust: impl FnOnce(&mut WebConfig)) -> App {
    App::start(calls, |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(4);
        adjust(c);
    })
    .await
}

/// A change that forges a Bitrix24 form.
type Forge = fn(&mut FrameRequest);

/// Sets one field of a Bitrix24 form (adds it when the form has none).
fn set_field(frame: &mut FrameRequest, key: &str, value: &str) {
    match frame.form.iter_mut().find(|(k, _)| k == key) {
        Some(field) => field.1 = value.into(),
        None => frame.form.push((key.into(), value.into())),
    }
}

#[tokio::test]
async fn install_settings_export_events_uninstall() {
    let fx = fixture(40).await;

    // A forged install naming its own OAuth server (where the client secret would go) is refused.
    let mut forged = fx.emu.app_frame_request(1, "ru");
    set_field(
        &mut forged,
        "SERVER_ENDPOINT",
        "https://oauth.evil.example/rest/",
    );
    assert_eq!(post_frame(&fx.base, "install", &forged).await, 403);
    assert!(fx
        .store
        .portal(&fx.key, &fx.emu.app_member_id())
        .await
        .unwrap()
        .is_none());

    // Install: stored, events bound to our handler, Bitrix24 told the installation is finished.
    let done = fx.install().await;
    let member = fx.emu.app_member_id();
    let portal = fx.store.portal(&fx.key, &member).await.unwrap().unwrap();
    assert_eq!(portal.status, PortalStatus::Installed);
    let events: Vec<String> = fx
        .emu
        .event_bindings()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert!(
        events.contains(&"ONVOXIMPLANTCALLEND".to_string()),
        "{events:?}"
    );
    // Events go to our handler; ONAPPINSTALL (the application token) to the install path.
    assert!(fx.emu.event_bindings().iter().all(|(e, h)| {
        let path = if e == "ONAPPINSTALL" {
            "install"
        } else {
            "events"
        };
        h == &format!("{}{path}", fx.base)
    }));
    assert_eq!(done.install_event, vec![200]);

    // The settings page: framable only by the portal, Russian by default, English on LANG=en.
    let page = fx.open_page("ru").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csp = page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains(&format!("frame-ancestors http://{}", fx.emu.app_domain())),
        "{csp}"
    );
    let body = &page.body;
    assert!(body.contains("ID подключения SpeechSense") && body.contains("Редактировать"));
    assert!(
        body.contains("С какой даты загружать звонки")
            && body.contains("Минимальная длина разговора")
    );
    let en = fx.open_page("en").await.body;
    assert!(en.contains("SpeechSense connection ID") && en.contains("Check connection"));
    let s = page.session();
    // Opening the page keeps the administrator's fresh, verified token pair.
    let t = fx.tokens().await;
    assert!(
        t.version >= 3,
        "install + two page opens rotate the pair: {}",
        t.version
    );

    // A request naming another domain, or an unknown installation, gets nothing.
    let forgeries: [(&str, Forge); 2] = [
        ("another domain", |f| {
            f.query[0].1 = "evil.example.com".into()
        }),
        ("an unknown installation", |f| {
            set_field(f, "member_id", "nobody")
        }),
    ];
    for (label, forge) in forgeries {
        let mut frame = fx.emu.app_frame_request(1, "ru");
        forge(&mut frame);
        assert_eq!(post_frame(&fx.base, "app", &frame).await, 403, "{label}");
    }

    // Changes need the CSRF token and a valid session.
    let r = http()
        .post(format!("{}api/settings", fx.base))
        .bearer_auth(&s.token)
        .json(&good_settings(&fx.speech))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (st, _) = Session {
        token: "x.y".into(),
        ..s.clone()
    }
    .call("GET", "state", None)
    .await;
    assert_eq!(st, 401);

    // Field errors next to the fields.
    let mut bad = good_settings(&fx.speech);
    bad["since"] = json!("yesterday");
    bad["users"] = json!("1, bob");
    bad["api_key"] = json!("");
    bad["connection_id"] = json!("");
    bad["organization_id"] = json!("org1");
    let (st, v) = s.call("POST", "settings", Some(bad)).await;
    assert_eq!(st, 422, "{v}");
    for f in [
        "since",
        "users",
        "api_key",
        "connection_id",
        "space_id",
        "project_id",
    ] {
        assert!(v["errors"][f].is_string(), "{f}: {v}");
    }

    // The user picker lists the portal's active users (via the portal's OAuth tokens).
    let (st, v) = s.call("GET", "users", None).await;
    assert_eq!(st, 200, "{v}");
    let users = v["users"].as_array().unwrap();
    assert!(!users.is_empty());
    let (first, last) = fx.emu.user_name(users[0]["id"].as_u64().unwrap()).unwrap();
    assert_eq!(users[0]["name"], format!("{first} {last}"));

    // Check connection: a wrong key says so; the right one gives the seed's message.
    let mut wrong = good_settings(&fx.speech);
    wrong["api_key"] = json!("wrong-key");
    let (_, v) = s.call("POST", "check", Some(wrong)).await;
    assert_eq!(v["ok"], false);
    assert!(v["message"].as_str().unwrap().contains("API-ключ"), "{v}");
    let (_, v) = s
        .call("POST", "check", Some(good_settings(&fx.speech)))
        .await;
    assert_eq!(
        (&v["ok"], &v["message"]),
        (&json!(true), &json!("Успешный запрос к SpeechSense"))
    );

    // Save; the key is write-only.
    let (st, v) = s
        .call("POST", "settings", Some(good_settings(&fx.speech)))
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s.call("GET", "state", None).await;
    assert_eq!(v["api_key_set"], true);
    assert!(!v.to_string().contains(&fx.speech.config().api_keys[0]));
    // Saving again without the key keeps it.
    let mut again = good_settings(&fx.speech);
    again["api_key"] = json!("");
    let (st, _) = s.call("POST", "settings", Some(again)).await;
    assert_eq!(st, 200);

    // Export with live progress to the end; the talks are in SpeechSense.
    let (st, v) = s.call("POST", "export/start", None).await;
    assert_eq!(st, 200, "{v}");
    let p = s.wait_finished().await;
    assert!(p["stopped"].is_null(), "{p}");
    let uploaded = p["uploaded"].as_u64().unwrap();
    assert!(uploaded > 0, "{p}");
    assert_eq!(p["found"].as_u64().unwrap(), p["settled"].as_u64().unwrap());
    assert_eq!(fx.speech.talk_count() as u64, uploaded);
    let csv = s.send("GET", "report", None).await.text;
    assert_eq!(
        csv.lines().count() as u64,
        1 + p["settled"].as_u64().unwrap()
    );

    // Expired access token: the run refreshes it once (rotation stored) and skips what is done.
    fx.emu.expire_access_tokens();
    let before = fx.tokens().await;
    // The install exchanged the frame's and the install event's refresh tokens.
    let (installed, _) = fx.emu.oauth_refreshes();
    let (st, _) = s.call("POST", "export/start", None).await;
    assert_eq!(st, 200);
    let p = s.wait_finished().await;
    assert!(p["stopped"].is_null(), "{p}");
    assert_eq!(p["uploaded"], 0);
    assert_eq!(p["skipped"]["already_uploaded"].as_u64().unwrap(), uploaded);
    assert_eq!(fx.emu.oauth_refreshes(), (installed + 1, 0));
    let after = fx.tokens().await;
    assert_eq!(after.version, before.version + 1);
    assert_eq!(fx.speech.talk_count() as u64, uploaded);

    // Events: only with the portal's application token.
    let forged = [
        ("event", "ONVOXIMPLANTCALLEND"),
        ("auth[member_id]", member.as_str()),
        ("auth[application_token]", "forged"),
    ];
    assert_eq!(post_event(&fx.base, &forged).await, 403);
    assert_eq!(fx.end_first_call().await, Some(vec![200]));

    // Metrics.
    let m = fx.get("metrics").await.text().await.unwrap();
    assert!(
        m.contains(&format!(
            "b24sense_calls_total{{outcome=\"uploaded\"}} {uploaded}"
        )),
        "{m}"
    );
    assert!(m.contains("b24sense_events_rejected_total 1"), "{m}");
    assert!(m.contains("b24sense_events_accepted_total 1"), "{m}");
    for path in ["healthz", "readyz"] {
        assert_eq!(fx.get(path).await.status().as_u16(), 200);
    }

    // Uninstall: secrets gone, page and API closed.
    assert_eq!(fx.emu.uninstall_app(true).await, vec![200]);
    let portal = fx.store.portal(&fx.key, &member).await.unwrap().unwrap();
    assert_eq!(portal.status, PortalStatus::Uninstalled);
    assert!(fx
        .store
        .portal_tokens(&fx.key, &member)
        .await
        .unwrap()
        .is_none());
    assert!(fx
        .store
        .settings(&fx.key, &member)
        .await
        .unwrap()
        .unwrap()
        .api_key
        .is_none());
    let (st, _) = s.call("GET", "state", None).await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn continuous_sync_runs_on_call_end_events() {
    let fx = fixture(10).await;
    let s = fx.install_with_sync().await;
    assert_eq!(fx.end_first_call().await, Some(vec![200]));
    let p = s.wait_finished().await;
    assert_eq!(p["trigger"], "event");
    assert!(p["uploaded"].as_u64().unwrap() > 0, "{p}");
    // The periodic catch-up pass starts a run for the idle portal with sync on (a missed event loses nothing).
    assert_eq!(fx.server.sync_pass().await, 1);
    let p = s.wait_finished().await;
    assert_eq!(p["trigger"], "schedule");
    assert_eq!(p["uploaded"], 0, "{p}");
}

/// Talks SpeechSense holds, by call statistic `ID` (a call uploaded twice shows up twice).
fn talks_by_call(fx: &App) -> BTreeMap<u64, usize> {
    let mut by_call = BTreeMap::new();
    for t in fx.speech.talks() {
        *by_call
            .entry(t.fields["id"].parse::<u64>().unwrap())
            .or_insert(0) += 1;
    }
    by_call
}

#[tokio::test]
async fn continuous_sync_waits_for_late_recordings_and_gives_up_at_the_horizon() {
    let late = LateRecordings {
        horizon: Duration::from_secs(4),
        first_check: Duration::from_millis(300),
        max_interval: Duration::from_millis(600),
    };
    let fx = fixture_with(30, |c| c.late_recordings = late).await;
    let recorded: Vec<u64> = (1..=30)
        .filter(|id| fx.emu.recording(*id).is_some())
        .collect();
    // Conversations without a recording at all wait too (recording may be off); missed calls do not.
    let talked_unrecorded = |ids: std::ops::RangeInclusive<u64>| {
        let rows = fx.emu.call_rows();
        ids.filter(|id| {
            let row = rows
                .iter()
                .find(|r| r["ID"].as_str().and_then(|v| v.parse::<u64>().ok()) == Some(*id))
                .unwrap();
            fx.emu.recording(*id).is_none()
                && row["CALL_DURATION"] != "0"
                && row["CALL_FAILED_CODE"] == "200"
        })
        .count() as u64
    };
    let (unrecorded_old, unrecorded_new) = (talked_unrecorded(1..=20), talked_unrecorded(21..=30));
    let (old, new): (Vec<u64>, Vec<u64>) = recorded.iter().partition(|id| **id <= 20);
    // Calls 1–20 have ended, 21–30 are still to come. Three recordings are attached late: `a` (an old call) and
    // `b` (a new one) during the horizon, `c` never.
    fx.emu.hide_calls_after(20);
    let (a, c, b) = (old[0], old[1], new[0]);
    for id in [a, b, c] {
        fx.emu.withhold_recording(id);
    }
    let s = fx.install_with_sync().await;
    assert_eq!(s.call("POST", "export/start", None).await.0, 200);
    let p = s.wait_finished().await;
    assert_eq!(
        (p["found"].as_u64(), p["awaiting_recording"].as_u64()),
        (Some(20), Some(2 + unrecorded_old)),
        "{p}"
    );
    assert_eq!(p["uploaded"].as_u64(), Some(old.len() as u64 - 2), "{p}");
    let member = fx.emu.app_member_id();
    let waiting = fx.store.entry(&member, a).await.unwrap().unwrap();
    assert_eq!(
        (waiting.state, waiting.reason.as_deref()),
        (LedgerState::Pending, Some("awaiting_recording"))
    );
    assert!(waiting.retry_at.is_some());

    // New calls end; one event brings them all in, and only them (an incremental pass from the high-water mark),
    // plus the waiting calls whose check has come (still without a recording: they wait on).
    fx.emu.reveal_calls_up_to(30);
    assert_eq!(fx.emu.send_call_end(25).await, Some(vec![200]));
    let p = s.wait_finished().await;
    assert_eq!(p["trigger"], "event", "{p}");
    let found = p["found"].as_u64().unwrap();
    let rechecked = found - 10;
    assert!(
        rechecked <= 2 + unrecorded_old,
        "only new and due calls: {p}"
    );
    assert_eq!(
        p["awaiting_recording"].as_u64(),
        Some(1 + unrecorded_new + rechecked),
        "{p}"
    );
    assert_eq!(p["uploaded"].as_u64(), Some(new.len() as u64 - 1), "{p}");

    // The late recordings arrive (no event fires for that); the rechecks the ledger schedules find them, and give
    // up on `c` at the horizon.
    assert!(fx.emu.attach_recording(a) && fx.emu.attach_recording(b));
    let t0 = Instant::now();
    loop {
        let c_entry = fx.store.entry(&member, c).await.unwrap().unwrap();
        let by_call = talks_by_call(&fx);
        // Every waiting call (also the talked ones without any recording, first seen at different times) is done.
        let waiting = fx
            .store
            .entries(
                &member,
                &[LedgerState::Pending, LedgerState::Uploading],
                100,
            )
            .await
            .unwrap();
        if by_call.contains_key(&a)
            && by_call.contains_key(&b)
            && c_entry.state == LedgerState::Skipped
            && waiting.is_empty()
        {
            assert_eq!(c_entry.reason.as_deref(), Some("no_recording"));
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "late recordings not picked up: {by_call:?} {c_entry:?}"
        );
        if fx.server.recheck_pass().await > 0 {
            let p = s.wait_finished().await;
            assert_eq!(p["trigger"], "recheck", "{p}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every call with a recording is in SpeechSense exactly once; nothing is left waiting.
    let expected: BTreeMap<u64, usize> = recorded
        .iter()
        .filter(|id| **id != c)
        .map(|id| (*id, 1))
        .collect();
    assert_eq!(talks_by_call(&fx), expected);
    assert!(fx.store.portals_due().await.unwrap().is_empty());
    assert_eq!(fx.server.recheck_pass().await, 0, "nothing is due any more");
    // A catch-up pass with nothing new lists nothing and uploads nothing.
    assert_eq!(fx.server.sync_pass().await, 1);
    let p = s.wait_finished().await;
    assert_eq!(
        (
            p["trigger"].as_str(),
            p["found"].as_u64(),
            p["uploaded"].as_u64()
        ),
        (Some("schedule"), Some(0), Some(0)),
        "{p}"
    );
}

#[tokio::test]
async fn concurrent_refreshes_use_one_refresh_token() {
    let fx = fixture(5).await;
    fx.install().await;
    let member = fx.emu.app_member_id();
    let portal = fx.store.portal(&fx.key, &member).await.unwrap().unwrap();
    let locks = Arc::new(RefreshLocks::default());
    let (id, secret) = fx.emu.app_credentials();
    let oauth = OAuthClient {
        client_id: id.into(),
        client_secret: SecretString::from(secret.to_string()),
        http: http(),
    };
    let sources: Vec<StoreTokenSource> = (0..4)
        .map(|_| {
            StoreTokenSource::new(
                fx.store.clone(),
                fx.key.clone(),
                member.clone(),
                Url::parse(&portal.client_endpoint).unwrap(),
                Url::parse(&portal.server_endpoint).unwrap(),
                oauth.clone(),
                locks.clone(),
                Arc::new(Metrics::default()),
            )
        })
        .collect();
    let stale: AccessToken = sources[0].access_token().await.unwrap();
    // The install exchanged the frame's and the install event's refresh tokens.
    let (installed, _) = fx.emu.oauth_refreshes();
    let results = futures::future::join_all(sources.iter().map(|s| s.refresh(&stale))).await;
    let tokens: Vec<String> = results
        .into_iter()
        .map(|r| r.unwrap().token.expose_secret().to_string())
        .collect();
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "all callers got the one new token"
    );
    assert_ne!(tokens[0], stale.token.expose_secret());
    assert_eq!(fx.emu.oauth_refreshes(), (installed + 1, 0));
}

#[tokio::test]
async fn two_portals_export_side_by_side() {
    let fx = fixture(25).await;
    let other = Bitrix24Emulator::start(PortalConfig {
        seed: 2,
        ..portal(25)
    })
    .await
    .unwrap();
    assert_ne!(other.app_member_id(), fx.emu.app_member_id());
    // The second portal's OAuth server must be allowed too: a server built for both.
    let (listener, base) = listen().await;
    let config = common::web_config(&base, &fx.emu, &fx.speech, &[&fx.emu, &other]);
    let server = AppServer::new(config, fx.store.clone(), fx.key.clone()).unwrap();
    let _guard = serve(server, listener);
    let fx2 = App {
        base: base.clone(),
        ..fx
    };

    let mut sessions = Vec::new();
    for emu in [&fx2.emu, &other] {
        common::install(emu, &base).await;
        let page = open_page(&base, emu, "ru").await;
        assert_eq!(page.status, 200);
        let s = page.session();
        let (st, _) = s
            .call("POST", "settings", Some(good_settings(&fx2.speech)))
            .await;
        assert_eq!(st, 200);
        sessions.push(s);
    }
    for s in &sessions {
        let (st, v) = s.call("POST", "export/start", None).await;
        assert_eq!(st, 200, "{v}");
    }
    let mut total = 0;
    for s in &sessions {
        let p = s.wait_finished().await;
        assert!(p["stopped"].is_null(), "{p}");
        total += p["uploaded"].as_u64().unwrap();
    }
    assert_eq!(fx2.speech.talk_count() as u64, total);
    assert_eq!(
        fx2.store.installed_portals(&fx2.key).await.unwrap().len(),
        2
    );
}

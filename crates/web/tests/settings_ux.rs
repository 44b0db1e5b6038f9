//! What the settings page's server says and counts, over real sockets against the emulators: saving checks the
//! key and the connection (and refuses an unchecked save unless confirmed), a run that SpeechSense refuses stops
//! once with one message saying what to do, the progress counts add up, the time left is known early, continuous
//! sync reports what it delivered, every text of the English page is English, and the install page says what to
//! do next.

mod common;

use std::time::Duration;

use b24sense_emulators::speechsense::{Code, SpeechSenseConfig};
use common::{good_settings, portal, App, Session};
use serde_json::{json, Value};

fn has_cyrillic(s: &str) -> bool {
    s.chars().any(|c| ('\u{400}'..='\u{4ff}').contains(&c))
}

/// Every count of the progress adds up to the calls found.
fn assert_adds_up(p: &Value) {
    let n = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a count: {v} in {p}"))
    };
    let sum = |v: &Value| v.as_object().unwrap().values().map(n).sum::<u64>();
    assert_eq!(
        n(&p["found"]),
        n(&p["uploaded"])
            + sum(&p["skipped"])
            + sum(&p["failed"])
            + n(&p["awaiting_recording"])
            + n(&p["remaining"]),
        "found = uploaded + skipped + failed + awaiting recording + remaining: {p}"
    );
}

async fn installed(calls: usize) -> (App, Session) {
    let fx = App::start(calls, |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(4)
    })
    .await;
    fx.install().await;
    let s = fx.session().await;
    (fx, s)
}

#[tokio::test]
async fn save_checks_the_key_and_connection_and_needs_a_confirmation_to_save_unchecked() {
    let (fx, s) = installed(5).await;
    let mut wrong_key = good_settings(&fx.speech);
    wrong_key["api_key"] = json!("wrong-key");
    let (st, v) = s.call("POST", "settings", Some(wrong_key.clone())).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["unverified"], true, "{v}");
    assert!(
        v["errors"]["api_key"]
            .as_str()
            .unwrap()
            .contains("Проверьте API-ключ"),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Сохранить без проверки"),
        "{v}"
    );
    let (_, state) = s.call("GET", "state", None).await;
    assert_eq!(state["saved"], false, "nothing was saved: {state}");

    let mut unknown = good_settings(&fx.speech);
    unknown["connection_id"] = json!("no-such-connection");
    let (st, v) = s.call("POST", "settings", Some(unknown)).await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["errors"]["connection_id"]
            .as_str()
            .unwrap()
            .contains("ID подключения"),
        "{v}"
    );

    // A chat connection is no place for calls.
    let mut chat = good_settings(&fx.speech);
    chat["connection_id"] = json!("conn-chat");
    let (st, v) = s.call("POST", "settings", Some(chat)).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["errors"]["connection_id"].is_string(), "{v}");

    // Confirmed: saved although the check failed, and the answer says so.
    wrong_key["save_anyway"] = json!(true);
    let (st, v) = s.call("POST", "settings", Some(wrong_key)).await;
    assert_eq!((st, &v["verified"]), (200, &json!(false)), "{v}");
    let (_, state) = s.call("GET", "state", None).await;
    assert_eq!(state["saved"], true, "{state}");

    // The right key needs no confirmation.
    let (st, v) = s
        .call("POST", "settings", Some(good_settings(&fx.speech)))
        .await;
    assert_eq!((st, &v["verified"]), (200, &json!(true)), "{v}");

    // In English, in English.
    let en = fx.open_page("en").await.session();
    let mut wrong = good_settings(&fx.speech);
    wrong["api_key"] = json!("wrong-key");
    let (st, v) = en.call("POST", "settings", Some(wrong)).await;
    assert_eq!(st, 422, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("Save without check") && !has_cyrillic(error),
        "{v}"
    );
    let key_error = v["errors"]["api_key"].as_str().unwrap();
    assert!(!has_cyrillic(key_error), "{v}");
}

#[tokio::test]
async fn a_refused_key_stops_the_export_once_with_what_to_do() {
    // Saved with a wrong key on purpose: the run stops before touching a call.
    let (fx, s) = installed(20).await;
    let mut wrong_key = good_settings(&fx.speech);
    wrong_key["api_key"] = json!("wrong-key");
    wrong_key["save_anyway"] = json!(true);
    assert_eq!(s.call("POST", "settings", Some(wrong_key)).await.0, 200);
    let p = s.export().await;
    let stopped = p["stopped"].as_str().unwrap();
    assert!(stopped.contains("Проверьте API-ключ"), "{p}");
    assert!(!p.to_string().contains("UNAUTHENTICATED"), "{p}");
    assert_eq!(
        p["last_errors"],
        json!([]),
        "one message, not one per call: {p}"
    );
    assert_eq!(fx.speech.talk_count(), 0);
}

#[tokio::test]
async fn a_key_revoked_during_the_export_stops_it_once_with_what_to_do() {
    let speech = SpeechSenseConfig {
        upload_latency: Duration::from_millis(100),
        ..SpeechSenseConfig::default()
    };
    let fx = App::start_full(portal(80), speech, &[], |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(2)
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
    assert_eq!(s.call("POST", "export/start", None).await.0, 200);
    s.wait_for(|_| {}, |p| p["uploaded"].as_u64() >= Some(2))
        .await;
    // From now on SpeechSense refuses the key (as if it had been revoked).
    fx.speech.inject(Code::Unauthenticated, 10_000);
    let p = s.wait_finished().await;
    let stopped = p["stopped"].as_str().unwrap();
    assert!(stopped.contains("Проверьте API-ключ"), "{p}");
    assert!(!p.to_string().contains("UNAUTHENTICATED"), "{p}");
    // The calls the stop left unfinished are not listed one by one.
    assert!(
        p["last_errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e.as_str().unwrap().contains("API")),
        "{p}"
    );
    assert!(p["remaining"].as_u64().unwrap() > 0, "{p}");
    assert_adds_up(&p);
    fx.speech.clear_faults();
}

#[tokio::test]
async fn counts_add_up_and_the_time_left_is_known_early() {
    let speech = SpeechSenseConfig {
        upload_latency: Duration::from_millis(20),
        ..SpeechSenseConfig::default()
    };
    let fx = App::start_full(portal(400), speech, &[], |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(2)
    })
    .await;
    fx.install().await;
    let s = fx.session().await;
    // With continuous sync on, calls without a recording wait for it (their own count).
    let mut settings = good_settings(&fx.speech);
    settings["sync_enabled"] = json!(true);
    assert_eq!(s.call("POST", "settings", Some(settings)).await.0, 200);
    assert_eq!(s.call("POST", "export/start", None).await.0, 200);
    let (mut running, mut with_eta, mut etas) = (0, 0, Vec::new());
    let p = s
        .wait_for(
            |p| {
                assert_adds_up(p);
                let done =
                    p["settled"].as_u64().unwrap() + p["awaiting_recording"].as_u64().unwrap();
                if p["finished"] == false && done >= 10 {
                    running += 1;
                    if let Some(eta) = p["eta_secs"].as_u64() {
                        with_eta += 1;
                        etas.push(eta);
                    }
                }
            },
            |p| p["finished"] == true,
        )
        .await;
    assert_adds_up(&p);
    assert_eq!(p["remaining"], 0, "{p}");
    assert!(p["awaiting_recording"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["expected"].as_u64(), p["found"].as_u64(), "{p}");
    println!("time left while running (s), {with_eta} of {running} polls: {etas:?}");
    assert!(running >= 10, "the run was observed: {running} polls");
    assert!(
        with_eta * 10 >= running * 9,
        "the time left is known for most of the run: {with_eta} of {running}"
    );
}

#[tokio::test]
async fn the_progress_shows_what_continuous_sync_delivered() {
    let fx = App::start(30, |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(4);
        c.event_pass_spacing = Duration::ZERO;
    })
    .await;
    fx.emu.hide_calls_after(20);
    let s = fx.install_with_sync().await;
    let (_, state) = s.call("GET", "state", None).await;
    let since = state["settings"]["sync_since"]
        .as_str()
        .unwrap()
        .to_string();

    let passes = |n: u64| move |p: &Value| p["finished"] == true && p["sync"]["passes"] == n;
    assert_eq!(fx.end_first_call().await, Some(vec![200]));
    let first = s.wait_for(|_| {}, passes(1)).await;
    let first_uploaded = first["uploaded"].as_u64().unwrap();
    assert!(first_uploaded > 0, "{first}");
    fx.emu.reveal_calls_up_to(30);
    assert_eq!(fx.emu.send_call_end(25).await, Some(vec![200]));
    let second = s.wait_for(|_| {}, passes(2)).await;
    let second_uploaded = second["uploaded"].as_u64().unwrap();
    assert!(second_uploaded > 0, "{second}");

    let sync = &second["sync"];
    assert_eq!(sync["since"], since.as_str(), "{sync}");
    assert_eq!(
        sync["total"]["uploaded"].as_u64(),
        Some(first_uploaded + second_uploaded),
        "{sync}"
    );
    assert_eq!(sync["today"], sync["total"], "{sync}");
    assert_eq!(
        sync["last_pass"]["uploaded"].as_u64(),
        Some(second_uploaded),
        "{sync}"
    );
    assert_eq!(sync["last_pass"]["found"], second["found"], "{sync}");
    assert!(chrono::DateTime::parse_from_rfc3339(sync["last_pass_at"].as_str().unwrap()).is_ok());
    assert_eq!(
        fx.speech.talk_count() as u64,
        first_uploaded + second_uploaded
    );

    // Saving again with sync on keeps the totals; turning it off and on again starts new ones.
    let mut on = good_settings(&fx.speech);
    on["sync_enabled"] = json!(true);
    assert_eq!(s.call("POST", "settings", Some(on.clone())).await.0, 200);
    let (_, state) = s.call("GET", "state", None).await;
    assert_eq!(state["settings"]["sync_since"], since.as_str());
    let mut off = on.clone();
    off["sync_enabled"] = json!(false);
    assert_eq!(s.call("POST", "settings", Some(off)).await.0, 200);
    assert_eq!(s.call("POST", "settings", Some(on)).await.0, 200);
    assert_eq!(fx.server.sync_pass().await, 1);
    let p = s.wait_for(|_| {}, passes(1)).await;
    assert_ne!(p["sync"]["since"], since.as_str(), "{p}");
    assert_eq!(p["sync"]["total"]["uploaded"], 0, "{p}");
}

#[tokio::test]
async fn the_english_page_and_script_have_no_russian_words() {
    let (fx, _) = installed(1).await;
    let page = fx.open_page("en").await;
    assert_eq!(page.status, 200);
    assert!(!has_cyrillic(&page.body), "{}", page.body);
    let js = fx.get("static/app.js").await.text().await.unwrap();
    let russian: Vec<&str> = js.lines().filter(|l| has_cyrillic(l)).collect();
    assert!(
        russian.is_empty(),
        "the script's words come from the page: {russian:?}"
    );
    // The Russian page is Russian.
    let ru = fx.open_page("ru").await.body;
    assert!(ru.contains("Ждут записи") && ru.contains("Сохранить без проверки"));
}

#[tokio::test]
async fn the_install_page_is_styled_and_says_what_to_do_next() {
    let fx = App::start(1, |_| {}).await;
    let ru = fx
        .emu
        .install_app(&format!("{}install", fx.base), "ru")
        .await
        .unwrap();
    assert!(ru.installed, "{ru:?}");
    for needle in [
        "href=\"static/app.css\"",
        "class=\"card\"",
        "Что дальше",
        "Проверить подключение",
        "installFinish",
    ] {
        assert!(ru.body.contains(needle), "{needle}: {}", ru.body);
    }
    assert!(ru.body.contains(&fx.emu.sdk_url()), "{}", ru.body);
    let en = fx
        .emu
        .install_app(&format!("{}install", fx.base), "en")
        .await
        .unwrap();
    assert!(
        en.body.contains("Next:") && !has_cyrillic(&en.body),
        "{}",
        en.body
    );
    assert_eq!(fx.get("static/app.css").await.status().as_u16(), 200);
}

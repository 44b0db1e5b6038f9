//! Open Lines chats in the application, against the Bitrix24 and SpeechSense emulators over real sockets: the chat
//! connection field (checked and refused by kind, naming the field), «Запустить выгрузку» sending the finished
//! sessions to the chat connection beside the calls with their counts in the progress, the CSV report's chat rows,
//! a session that closes later arriving through `ONCRMACTIVITYUPDATE` with no manual export, and forged activity
//! events refused.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use b24sense_core::LedgerState;
use b24sense_emulators::speechsense::{ConnectionConfig, SpeechSenseConfig};
use common::{
    call_talk_count, chat_connection, chat_settings, chat_talks, good_settings, http,
    parse_metrics, portal, post_event, sample, App, Session,
};
use serde_json::{json, Value};

async fn fixture() -> App {
    App::start(20, |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(4)
    })
    .await
}

/// Installs, opens the page and saves settings with the chat connection and continuous sync on.
async fn installed_with_chats(fx: &App) -> Session {
    fx.install().await;
    let s = fx.session().await;
    let mut settings = chat_settings(&fx.speech);
    settings["sync_enabled"] = json!(true);
    let (st, v) = s.call("POST", "settings", Some(settings)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["settings"]["chat_connection_id"],
        json!(chat_connection(&fx.speech))
    );
    s
}

fn sum(map: &Value) -> u64 {
    map.as_object()
        .map(|m| m.values().map(|v| v.as_u64().unwrap()).sum())
        .unwrap_or(0)
}

/// Waits (bounded: 60 s) until SpeechSense holds a chat talk of `session_id`.
async fn wait_for_chat(fx: &App, session_id: u64) {
    let t0 = Instant::now();
    while !chat_talks(&fx.speech)
        .iter()
        .any(|(id, _)| id == &session_id.to_string())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "session {session_id} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_sends_chats_beside_calls_and_a_session_closing_later_arrives_by_event() {
    let fx = fixture().await;
    let s = installed_with_chats(&fx).await;
    let events: Vec<String> = fx
        .emu
        .event_bindings()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert!(
        events.contains(&"ONCRMACTIVITYUPDATE".to_string()),
        "the install binds the activity event: {events:?}"
    );
    let oracle = fx.emu.chat_sessions();
    let open: Vec<u64> = oracle
        .iter()
        .filter(|x| !x.completed)
        .map(|x| x.session_id)
        .collect();
    assert!(!open.is_empty() && oracle.len() > open.len() + 5);

    // «Запустить выгрузку»: calls and chats side by side, the chats counted apart.
    let p = s.export().await;
    let chats = &p["chats"];
    assert_eq!(chats["finished"], true, "{p}");
    assert_eq!(chats["stopped"], Value::Null, "{p}");
    let talks = chat_talks(&fx.speech);
    let distinct: BTreeSet<&(String, String)> = talks.iter().collect();
    assert_eq!(distinct.len(), talks.len(), "no part twice: {talks:?}");
    let sessions: BTreeSet<&str> = talks.iter().map(|t| t.0.as_str()).collect();
    assert!(!sessions.is_empty());
    assert_eq!(
        chats["uploaded"].as_u64().unwrap() as usize,
        sessions.len(),
        "{p}"
    );
    assert_eq!(
        chats["talks"].as_u64().unwrap() as usize,
        talks.len(),
        "{p}"
    );
    assert_eq!(chats["waiting"]["session_open"], json!(open.len()), "{p}");
    assert_eq!(sum(&chats["failed"]), 0, "{p}");
    // Every session listed has its result: uploaded, skipped by rule or waiting to close.
    assert_eq!(
        chats["uploaded"].as_u64().unwrap() + sum(&chats["skipped"]) + sum(&chats["waiting"]),
        oracle.len() as u64,
        "{p}"
    );
    assert_eq!(chats["settled"], json!(oracle.len()), "{p}");
    assert!(open
        .iter()
        .all(|id| !sessions.contains(id.to_string().as_str())));
    // The calls' counts are the calls' alone.
    assert_eq!(
        p["uploaded"].as_u64().unwrap() as usize,
        call_talk_count(&fx.speech),
        "{p}"
    );
    assert!(p["uploaded"].as_u64().unwrap() > 0);

    // The CSV report: the calls, then the sessions, told apart by `kind`.
    let member = fx.emu.app_member_id();
    let body = http()
        .get(format!("{}api/report", fx.base))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let chat_rows: Vec<&csv::StringRecord> = rows.iter().filter(|r| &r[0] == "chat").collect();
    let call_rows = rows.iter().filter(|r| &r[0] == "call").count();
    assert_eq!(
        chat_rows.len() + call_rows,
        rows.len(),
        "every row is a call or a chat"
    );
    assert_eq!(chat_rows.len(), oracle.len());
    let calls_in_ledger: u64 = fx
        .store
        .counts(Some(&member))
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(call_rows as u64, calls_in_ledger);
    for row in &chat_rows {
        let e = fx
            .store
            .chat_entry(&member, row[1].parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&row[2], e.state.as_str());
        assert_eq!(&row[3], e.reason.as_deref().unwrap_or(""));
        assert_eq!(&row[4], e.talk_ids.join(" "));
    }
    let reported: BTreeSet<String> = chat_rows
        .iter()
        .filter(|r| &r[2] == "uploaded")
        .flat_map(|r| r[4].split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let chat = chat_connection(&fx.speech);
    let stored: BTreeSet<String> = fx
        .speech
        .talks()
        .into_iter()
        .filter(|t| t.connection_id == chat)
        .map(|t| t.id)
        .collect();
    assert_eq!(reported, stored);

    // An operator closes an open dialog: the portal sends ONCRMACTIVITYUPDATE, and the session goes out without
    // anyone pressing «Запустить выгрузку».
    let before = chat_talks(&fx.speech).len();
    assert_eq!(
        fx.emu.close_chat_session_notify(open[0]).await,
        Some(vec![200])
    );
    wait_for_chat(&fx, open[0]).await;
    let p = s
        .wait_for(|_| {}, |p| p["trigger"] == "event" && p["finished"] == true)
        .await;
    assert_eq!(p["chats"]["uploaded"], 1, "{p}");
    assert_eq!(
        p["chats"]["waiting"]["session_open"],
        json!(open.len() - 1),
        "{p}"
    );
    let row = fx
        .store
        .chat_entry(&member, open[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, LedgerState::Uploaded);
    let after = chat_talks(&fx.speech);
    let distinct: BTreeSet<&(String, String)> = after.iter().collect();
    assert_eq!(distinct.len(), after.len(), "still no part twice");
    assert_eq!(after.len(), before + row.talk_ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_activity_events_are_refused_and_upload_nothing() {
    // Event passes may follow each other closely here (the second event is the point, not the spacing).
    let fx = App::start(20, |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(4);
        c.event_pass_spacing = Duration::from_millis(200);
    })
    .await;
    let s = installed_with_chats(&fx).await;
    let closed = fx
        .emu
        .chat_sessions()
        .into_iter()
        .find(|x| x.completed)
        .unwrap();
    let forged = |member: &str, token: &str| {
        vec![
            ("event", "ONCRMACTIVITYUPDATE".to_string()),
            ("data[FIELDS][ID]", closed.activity_id.to_string()),
            ("ts", chrono::Utc::now().timestamp().to_string()),
            ("auth[member_id]", member.to_string()),
            ("auth[application_token]", token.to_string()),
            ("auth[domain]", fx.emu.app_domain()),
        ]
    };
    let member = fx.emu.app_member_id();
    assert_eq!(
        post_event(&fx.base, &forged(&member, "not-the-token")).await,
        403
    );
    assert_eq!(post_event(&fx.base, &forged(&member, "")).await, 403);
    assert_eq!(
        post_event(&fx.base, &forged("0000feedface0000", "not-the-token")).await,
        403
    );
    // Nothing started (a run is registered before the handler answers) and nothing went out.
    assert_eq!(s.progress().await, Value::Null);
    assert_eq!(fx.speech.talk_count(), 0);
    let metrics = parse_metrics(&fx.get("metrics").await.text().await.unwrap());
    assert_eq!(sample(&metrics, "b24sense_events_rejected_total"), 3.0);

    // The portal's own event (its application token) starts the incremental pass; what goes out is what the
    // portal's REST says: every finished session, not the one the event named.
    assert_eq!(
        fx.emu.send_activity_update(closed.activity_id).await,
        vec![200]
    );
    let p = s
        .wait_for(|_| {}, |p| p["trigger"] == "event" && p["finished"] == true)
        .await;
    let talks = chat_talks(&fx.speech);
    let sessions: BTreeSet<&str> = talks.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        p["chats"]["uploaded"].as_u64().unwrap() as usize,
        sessions.len(),
        "{p}"
    );
    assert!(sessions.len() > 1, "{p}");

    // Closing a session in the portal sends the event by itself (from a task, as the portal's queue does).
    let open = fx
        .emu
        .chat_sessions()
        .into_iter()
        .find(|x| !x.completed)
        .unwrap();
    assert!(fx.emu.close_chat_session(open.session_id));
    wait_for_chat(&fx, open.session_id).await;
}

#[tokio::test]
async fn a_connection_of_the_wrong_kind_is_refused_by_check_and_save_naming_the_field() {
    // A second two-channel connection: a call connection to put in the chat field.
    let mut config = SpeechSenseConfig::default();
    config
        .connections
        .push(ConnectionConfig::two_channel("conn-audio-2"));
    let fx = App::start_full(portal(20), config, &[], |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(4)
    })
    .await;
    fx.install().await;
    let s = fx.session().await;
    let speech = &fx.speech;
    let audio = "conn-audio-2".to_string();
    let chat = chat_connection(speech);
    let key = speech.config().api_keys[0].clone();

    // Both right: one check per field, both pass.
    let mut form = chat_settings(speech);
    let (st, v) = s.call("POST", "check", Some(form.clone())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checks"].as_array().unwrap().len(), 2, "{v}");

    // A call connection in the chat field.
    form["chat_connection_id"] = json!(audio.clone());
    let (_, v) = s.call("POST", "check", Some(form.clone())).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["checks"][0]["ok"], true, "{v}");
    let chat_check = &v["checks"][1];
    assert_eq!(chat_check["field"], "chat_connection_id");
    let words = chat_check["message"].as_str().unwrap();
    assert!(
        words.starts_with(&format!(
            "ID подключения для чатов: Подключение {audio} — для двухканального аудио"
        )),
        "{words}"
    );
    assert!(
        words.contains("нужно подключение для чатов") && words.contains("Укажите ID подключения"),
        "{words}"
    );

    // A chat connection in the call field (no chat field): named, with what to do.
    let mut form = good_settings(speech);
    form["connection_id"] = json!(chat.clone());
    let (_, v) = s.call("POST", "check", Some(form.clone())).await;
    assert_eq!(v["ok"], false, "{v}");
    let words = v["message"].as_str().unwrap();
    assert!(
        words.starts_with(&format!(
            "ID подключения SpeechSense: Подключение {chat} — для чатов"
        )),
        "{words}"
    );
    assert!(
        words.contains("для звонков нужно подключение для двухканального аудио"),
        "{words}"
    );

    // Save refuses the call connection in the chat field, next to that field, and stores nothing.
    let mut form = chat_settings(speech);
    form["chat_connection_id"] = json!(audio.clone());
    let (st, v) = s.call("POST", "settings", Some(form.clone())).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["unverified"], true);
    let err = v["errors"]["chat_connection_id"].as_str().unwrap();
    assert!(
        err.starts_with("ID подключения для чатов: Подключение"),
        "{err}"
    );
    assert!(!v.to_string().contains(&key), "the key is never echoed");
    let member = fx.emu.app_member_id();
    assert!(fx.store.settings(&fx.key, &member).await.unwrap().is_none());

    // The field's own rules: an ID's characters, and not the call connection again.
    form["chat_connection_id"] = json!("чат; DROP");
    let (st, v) = s.call("POST", "settings", Some(form.clone())).await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["errors"]["chat_connection_id"]
            .as_str()
            .unwrap()
            .starts_with("ID подключения для чатов содержит недопустимые символы"),
        "{v}"
    );
    form["chat_connection_id"] = json!(form["connection_id"].clone());
    let (st, v) = s.call("POST", "check", Some(form.clone())).await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["errors"]["chat_connection_id"]
            .as_str()
            .unwrap()
            .contains("совпадает с ID подключения для звонков"),
        "{v}"
    );

    // Right: saved, the chat connection stored with the settings, the key not echoed; empty means no chats.
    let (st, v) = s
        .call("POST", "settings", Some(chat_settings(speech)))
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(!v.to_string().contains(&key));
    let stored = fx.store.settings(&fx.key, &member).await.unwrap().unwrap();
    assert_eq!(
        stored.settings.chat_connection_id.as_deref(),
        Some(chat.as_str())
    );
    let mut form = chat_settings(speech);
    form["chat_connection_id"] = json!("  ");
    assert_eq!(s.call("POST", "settings", Some(form)).await.0, 200);
    let stored = fx.store.settings(&fx.key, &member).await.unwrap().unwrap();
    assert_eq!(stored.settings.chat_connection_id, None);
    let p = s.export().await;
    assert_eq!(
        p["chats"],
        Value::Null,
        "no chat lane without a chat connection: {p}"
    );
    assert!(chat_talks(speech).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_catch_up_exports_the_chats_too() {
    let fx = fixture().await;
    let s = installed_with_chats(&fx).await;
    // The catch-up pass (what `serve` runs every `--sync-interval`): an incremental run with both lanes.
    assert_eq!(fx.server.sync_pass().await, 1);
    let p = s
        .wait_for(
            |_| {},
            |p| p["trigger"] == "schedule" && p["finished"] == true,
        )
        .await;
    let talks = chat_talks(&fx.speech);
    let sessions: BTreeSet<&str> = talks.iter().map(|t| t.0.as_str()).collect();
    assert!(!sessions.is_empty());
    assert_eq!(
        p["chats"]["uploaded"].as_u64().unwrap() as usize,
        sessions.len(),
        "{p}"
    );
    assert!(p["uploaded"].as_u64().unwrap() > 0, "the calls too: {p}");
    // The next catch-up sends nothing again.
    assert_eq!(fx.server.sync_pass().await, 1);
    let p = s
        .wait_for(
            |_| {},
            |p| p["trigger"] == "schedule" && p["finished"] == true && p["chats"]["uploaded"] == 0,
        )
        .await;
    assert_eq!(chat_talks(&fx.speech).len(), talks.len(), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_connection_saved_unchecked_stops_the_chats_not_the_calls() {
    let fx = fixture().await;
    fx.install().await;
    let s = fx.session().await;
    let mono = fx
        .speech
        .config()
        .connection_id(b24sense_speechsense::ConnectionKind::OneChannelAudio)
        .unwrap()
        .to_string();
    let mut form = chat_settings(&fx.speech);
    form["chat_connection_id"] = json!(mono.clone());
    assert_eq!(s.call("POST", "settings", Some(form.clone())).await.0, 422);
    form["save_anyway"] = json!(true);
    let (st, v) = s.call("POST", "settings", Some(form)).await;
    assert_eq!((st, &v["verified"]), (200, &json!(false)), "{v}");

    let p = s.export().await;
    assert_eq!(p["stopped"], Value::Null, "the calls ran to the end: {p}");
    assert!(p["uploaded"].as_u64().unwrap() > 0, "{p}");
    let why = p["chats"]["stopped"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "Выгрузка чатов остановлена: ID подключения для чатов: Подключение {mono} — для одноканального аудио"
        )),
        "{why}"
    );
    assert!(why.contains("Исправьте настройки"), "{why}");
    assert_eq!(p["chats"]["uploaded"], 0, "{p}");
    assert!(chat_talks(&fx.speech).is_empty());
    assert_eq!(call_talk_count(&fx.speech), fx.speech.talk_count());
}

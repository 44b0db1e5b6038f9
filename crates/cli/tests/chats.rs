//! Open Lines chats through the real `b24sense` binary against the emulators: `--chat-connection-id` alone and
//! beside `--connection-id`, re-runs, open sessions, connections of the wrong type, Unicode, dry runs,
//! `--min-client-messages` and `--users`. The emulated portal's sessions are the oracle (`common::chats`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use b24sense_emulators::bitrix24::ChatSessionInfo;
use common::chats::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_only_uploads_every_finished_session_once_and_lists_no_call() {
    let w = world(10, 24, Duration::ZERO).await;
    let expected = w.expected(1);
    assert!(expected.len() >= 15, "{expected:?}");
    let v = w.json(&["--chat-connection-id", CHATS], 0).await;
    let chats = &v["chats"];
    assert_eq!(
        chats["uploaded"].as_u64(),
        Some(expected.len() as u64),
        "{v}"
    );
    assert_eq!(chats["listed"], 24, "{v}");
    assert!(v.get("uploaded").is_none(), "no call run: {v}");
    let talks = w.chat_talks();
    assert_eq!(talks.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(talks.values().all(|t| t.len() == 1), "one talk per session");
    let messages: usize = talks.values().flatten().map(|t| t.messages.len()).sum();
    assert_eq!(chats["messages"].as_u64(), Some(messages as u64));
    assert_eq!(w.talks_on(CALLS), 0);
    let portal = w.portal.stats();
    assert!(
        !portal.by_method.contains_key("voximplant.statistic.get"),
        "calls were not listed: {portal:?}"
    );
    assert_eq!(v["rest"]["rate_limited"], 0, "{v}");
    // The operators' and clients' roles: each message's author is one of the talk's participants.
    for t in talks.values().flatten() {
        let ids = [
            &t.fields["operator_id"],
            &t.fields["client_id"],
            &t.fields["bot_id"],
        ];
        assert!(t.messages.iter().all(|m| ids.contains(&&m.user_id)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_chats_in_one_run_then_a_rerun_uploads_nothing() {
    let w = world(40, 24, Duration::ZERO).await;
    let expected = w.expected(1);
    let report = w.dir.path().join("report.jsonl");
    let both = [
        "--connection-id",
        CALLS,
        "--chat-connection-id",
        CHATS,
        "--report",
        report.to_str().unwrap(),
    ];
    let v = w.json(&both, 0).await;
    let calls = v["uploaded"].as_u64().unwrap();
    assert!(calls > 20, "{v}");
    assert_eq!(w.talks_on(CALLS) as u64, calls);
    assert_eq!(v["chats"]["uploaded"].as_u64(), Some(expected.len() as u64));
    assert_eq!(w.talks_on(CHATS), expected.len());
    // One client, one bucket: the portal never refused a request for its rate limit.
    assert_eq!(v["rest"]["rate_limited"], 0, "{v}");
    assert_eq!(w.portal.stats().rate_limited, 0);
    let lines = report_lines(&report);
    let kind = |k: &str| lines.iter().filter(|l| l["kind"] == k).count();
    assert_eq!(kind("call"), 40, "one line per call");
    assert_eq!(kind("chat"), 24, "one line per session");
    assert_eq!(sessions_with(&lines, "uploaded"), expected);

    let again = w.json(&both, 0).await;
    assert_eq!(again["uploaded"], 0, "{again}");
    assert_eq!(again["chats"]["uploaded"], 0, "{again}");
    assert_eq!(
        again["chats"]["already_uploaded"].as_u64(),
        Some(expected.len() as u64)
    );
    assert_eq!(w.talks_on(CALLS) as u64, calls);
    assert_eq!(w.talks_on(CHATS), expected.len());
    let lines = report_lines(&report);
    assert_eq!(sessions_with(&lines, "already_uploaded"), expected);

    // The text summary shows the chats apart from the calls.
    let out = w.run(&both).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.contains("qualifying calls"), "{printed}");
    assert!(
        printed.contains("chats (Open Lines) export finished"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_waits_and_the_next_run_uploads_it_once_closed() {
    let w = world(5, 40, Duration::ZERO).await;
    let open: BTreeSet<u64> = w
        .portal
        .chat_sessions()
        .iter()
        .filter(|s| !s.completed && client_messages(s) > 0)
        .map(|s| s.session_id)
        .collect();
    assert!(!open.is_empty());
    let report = w.dir.path().join("open.jsonl");
    let args = [
        "--chat-connection-id",
        CHATS,
        "--report",
        report.to_str().unwrap(),
    ];
    let v = w.json(&args, 0).await;
    let waiting = v["chats"]["waiting"]["session_open"].as_u64().unwrap();
    assert!(waiting >= open.len() as u64, "{v}");
    let talks = w.chat_talks();
    assert!(
        open.iter().all(|id| !talks.contains_key(id)),
        "open sessions wait"
    );
    let waited = sessions_with(&report_lines(&report), "waiting");
    assert!(open.is_subset(&waited));
    // `status` shows the chat sessions by state and reason.
    let mut status = Command::new(assert_cmd::cargo::cargo_bin("b24sense"));
    status
        .env_clear()
        .args(["status", "--json", "--database"])
        .arg(format!("sqlite:{}", w.db().display()));
    let status = tokio::task::spawn_blocking(move || status.output().unwrap())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    let pending = v["chat_counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["reason"] == "session_open")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(pending["count"].as_u64(), Some(waited.len() as u64), "{v}");

    for id in &open {
        assert!(w.portal.close_chat_session(*id));
    }
    let v = w.json(&args, 0).await;
    assert_eq!(
        v["chats"]["uploaded"].as_u64(),
        Some(open.len() as u64),
        "{v}"
    );
    let talks = w.chat_talks();
    for id in &open {
        assert_eq!(talks[id].len(), 1, "session {id} uploaded once");
        // The closing notice is a system message: the talk holds the conversation only.
        assert!(!talks[id][0].messages.is_empty());
    }
    assert_eq!(
        talks.keys().copied().collect::<BTreeSet<_>>(),
        w.expected(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_of_the_wrong_type_is_refused_both_ways_and_nothing_is_uploaded() {
    let w = world(10, 24, Duration::ZERO).await;
    let cases: [(&[&str], &str, &str); 3] = [
        // Swapped: the chat connection given for calls (checked first).
        (
            &["--connection-id", CHATS, "--chat-connection-id", CALLS, "--lang", "ru"],
            "--connection-id: Подключение conn-chat — для чатов; для звонков нужно подключение для двухканального \
             аудио.",
            "передайте в --chat-connection-id",
        ),
        // An audio connection given for chats.
        (
            &["--connection-id", CALLS, "--chat-connection-id", CALLS, "--lang", "en"],
            "--chat-connection-id: Connection conn-two-channel is for two-channel audio; Open Lines chats need a \
             connection for chats.",
            "Pass a connection for calls as --connection-id",
        ),
        (
            &["--chat-connection-id", MONO, "--lang", "en"],
            "--chat-connection-id: Connection conn-mono is for one-channel audio; Open Lines chats need a \
             connection for chats.",
            "not chats",
        ),
    ];
    for (args, says, hint) in cases {
        let out = w.run(args).await;
        let printed = text(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {printed}");
        assert!(printed.contains(says), "{args:?}: {printed}");
        assert!(printed.contains(hint), "{args:?}: {printed}");
    }
    assert_eq!(w.speech.talk_count(), 0, "nothing uploaded");
    assert_eq!(
        w.portal.stats().http_requests,
        0,
        "refused before the portal"
    );

    // `check` tells both kinds apart at once.
    let check = |args: &[&str]| {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("b24sense"));
        c.env_clear()
            .args([
                "check",
                "--lang",
                "en",
                "--speechsense-endpoint",
                &w.speech.endpoint(),
            ])
            .args(["--api-key", &w.key])
            .args(args);
        c
    };
    let run = |mut c: Command| tokio::task::spawn_blocking(move || c.output().unwrap());
    let ok = run(check(&[
        "--connection-id",
        CALLS,
        "--chat-connection-id",
        CHATS,
    ]))
    .await
    .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let said = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(
        said.contains("--connection-id: Successful request to SpeechSense"),
        "{said}"
    );
    assert!(
        said.contains("--chat-connection-id: Successful request to SpeechSense"),
        "{said}"
    );
    let swapped = run(check(&[
        "--connection-id",
        CHATS,
        "--chat-connection-id",
        CALLS,
    ]))
    .await
    .unwrap();
    let said = text(&swapped);
    assert_eq!(swapped.status.code(), Some(3), "{said}");
    assert!(
        said.contains("--connection-id: Connection conn-chat is for chats"),
        "{said}"
    );
    assert!(
        said.contains("--chat-connection-id: Connection conn-two-channel is for two-channel audio"),
        "{said}"
    );
    let chat_only = run(check(&["--chat-connection-id", CHATS])).await.unwrap();
    assert_eq!(chat_only.status.code(), Some(0), "{}", text(&chat_only));
    assert_eq!(w.speech.talk_count(), 0, "a check never creates a talk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_emoji_and_cyrillic_arrive_intact() {
    let w = world(5, 24, Duration::ZERO).await;
    w.json(&["--chat-connection-id", CHATS], 0).await;
    let talks = w.chat_talks();
    let sessions = w.portal.chat_sessions();
    let long = sessions
        .iter()
        .find(|s| s.long_text && s.completed)
        .expect("the catalogue has a very long Cyrillic and emoji text");
    let (_, _, _, sent, _) = long
        .messages
        .iter()
        .find(|m| m.1 == "client" && m.3.len() > 5_000)
        .unwrap();
    assert!(sent.contains('📦') && sent.contains("Подробно"));
    let stored = &talks[&long.session_id][0];
    assert!(
        stored.messages.iter().any(|m| m.text == sent.trim()),
        "the long text arrived byte for byte"
    );
    let all: Vec<&str> = talks
        .values()
        .flatten()
        .flat_map(|t| t.messages.iter().map(|m| m.text.as_str()))
        .collect();
    assert!(all.contains(&"Спасибо за обращение! Хорошего дня 🌷"));
    // BB-code gone, the text and its line break kept.
    if let Some(m) = all.iter().find(|m| m.starts_with("Доставка занимает")) {
        assert_eq!(*m, "Доставка занимает 2–3 дня.\nСтоимость — 350 ₽");
    }
    // Files become a line with their (Cyrillic) name.
    for s in sessions
        .iter()
        .filter(|s| s.completed && talks.contains_key(&s.session_id))
    {
        for (_, _, _, _, file) in &s.messages {
            if let Some(name) = file {
                let line = format!("📎 {name}");
                let t = &talks[&s.session_id][0];
                assert!(t.messages.iter().any(|m| m.text.contains(&line)), "{line}");
            }
        }
    }
    for t in talks.values().flatten() {
        assert!(
            t.fields["operator_name"]
                .chars()
                .any(|c| ('А'..='я').contains(&c))
                || t.fields["operator_id"].is_empty(),
            "{:?}",
            t.fields
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_uploads_nothing_and_counts_sessions_and_messages() {
    let w = world(5, 24, Duration::ZERO).await;
    let expected = w.expected(1);
    let dry = w
        .json(&["--chat-connection-id", CHATS, "--dry-run"], 0)
        .await;
    let c = &dry["chats"];
    assert_eq!(
        c["would_upload"].as_u64(),
        Some(expected.len() as u64),
        "{dry}"
    );
    assert_eq!(c["uploaded"], 0);
    assert_eq!(w.speech.talk_count(), 0, "a dry run uploads nothing");
    let out = w.run(&["--chat-connection-id", CHATS, "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        printed.contains(&format!("would upload      {:>7} sessions", expected.len())),
        "{printed}"
    );
    assert!(printed.contains("nothing was uploaded"), "{printed}");
    assert_eq!(w.speech.talk_count(), 0);
    // The messages counted are those the real run sends.
    let real = w.json(&["--chat-connection-id", CHATS], 0).await;
    assert_eq!(
        real["chats"]["messages"], c["would_upload_messages"],
        "{real}"
    );
    assert!(c["would_upload_messages"].as_u64().unwrap() > expected.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_client_messages_and_the_operator_filter_apply_to_chats() {
    let w = world(5, 40, Duration::ZERO).await;
    let report = w.dir.path().join("min.jsonl");
    let args = [
        "--chat-connection-id",
        CHATS,
        "--min-client-messages",
        "3",
        "--report",
        report.to_str().unwrap(),
    ];
    let v = w.json(&args, 0).await;
    let lines = report_lines(&report);
    let few: BTreeSet<u64> = lines
        .iter()
        .filter(|l| l["reason"] == "too_few_client_messages")
        .map(|l| l["session_id"].as_u64().unwrap())
        .collect();
    assert!(!few.is_empty(), "{v}");
    assert_eq!(
        v["chats"]["skipped"]["too_few_client_messages"].as_u64(),
        Some(few.len() as u64)
    );
    let sessions: BTreeMap<u64, ChatSessionInfo> = w
        .portal
        .chat_sessions()
        .into_iter()
        .map(|s| (s.session_id, s))
        .collect();
    assert!(few
        .iter()
        .all(|id| (1..3).contains(&client_messages(&sessions[id]))));
    assert_eq!(sessions_with(&lines, "uploaded"), w.expected(3));

    // The operators filter (`--users`) lists only the sessions of that responsible operator (each reported, done
    // before or not).
    let operator = sessions
        .values()
        .find(|s| s.completed)
        .unwrap()
        .responsible_id;
    let op = operator.to_string();
    let v = w
        .json(
            &[
                "--chat-connection-id",
                CHATS,
                "--users",
                &op,
                "--report",
                report.to_str().unwrap(),
            ],
            0,
        )
        .await;
    let listed: BTreeSet<u64> = report_lines(&report)
        .iter()
        .map(|l| l["session_id"].as_u64().unwrap())
        .collect();
    let of_operator: BTreeSet<u64> = sessions
        .values()
        .filter(|s| s.responsible_id == operator)
        .map(|s| s.session_id)
        .collect();
    assert_eq!(listed, of_operator, "{v}");

    // Bad input names the flag; no connection at all names both.
    for (bad, flag) in [
        (
            &["--chat-connection-id", CHATS, "--min-client-messages", "0"][..],
            "--min-client-messages",
        ),
        (
            &[
                "--chat-connection-id",
                CHATS,
                "--since",
                "2026-02-01",
                "--until",
                "2026-01-01",
            ][..],
            "--until",
        ),
        (&[][..], "--chat-connection-id"),
    ] {
        let out = w.run(bad).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        assert!(text(&out).contains(flag), "{bad:?}: {}", text(&out));
    }
}

//! Open Lines chats over sockets: the client against the emulated portal. Finished sessions listed from their CRM
//! activities in one batched request per 2,500 (keyset by ID, filters applied by the portal), histories read 50
//! sessions per request within the bucket, messages in ID order with their authors' roles, BB-code gone, Unicode
//! intact, and the mapping of what was read.

use std::collections::BTreeSet;
use std::time::Duration;

use b24sense_bitrix24::{
    Bitrix24Client, ClientConfig, Credentials, RatePlan, SessionRead, WebhookUrl,
};
use b24sense_core::chat::{
    chat_talks, session_crm, ChatActivity, ChatFilter, ChatOptions, ChatRole, ChatSession,
    ChatSkipReason,
};
use b24sense_core::TimeBound;
use b24sense_emulators::bitrix24::{
    Bitrix24Emulator, ChatSessionInfo, FaultConfig, OpenLinesConfig, PortalConfig,
};

fn portal(sessions: usize, rate: (u32, u32)) -> PortalConfig {
    PortalConfig {
        seed: 23,
        calls: 20,
        rate,
        open_lines: OpenLinesConfig {
            sessions,
            ..OpenLinesConfig::default()
        },
        ..PortalConfig::default()
    }
}

fn client(portal: &Bitrix24Emulator, rate: RatePlan) -> Bitrix24Client {
    let webhook = WebhookUrl::parse(&portal.webhook_url()).unwrap();
    let config = ClientConfig {
        rate,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    Bitrix24Client::new(Credentials::Webhook(webhook), config).unwrap()
}

const ROOMY: RatePlan = RatePlan {
    capacity: 10_000,
    per_second: 10_000,
};

fn finished(oracle: &[ChatSessionInfo]) -> Vec<u64> {
    oracle
        .iter()
        .filter(|s| s.completed)
        .map(|s| s.activity_id)
        .collect()
}

fn activity_ids(a: &[ChatActivity]) -> Vec<u64> {
    a.iter().map(|a| a.activity_id).collect()
}

async fn read_all(c: &Bitrix24Client) -> Vec<ChatSession> {
    let page = c
        .list_chat_sessions(&ChatFilter::default(), 0)
        .await
        .unwrap();
    assert!(page.exhausted && page.bad_rows.is_empty());
    c.chat_sessions(&page.sessions)
        .await
        .unwrap()
        .into_values()
        .map(|r| match r {
            SessionRead::Read(s) => *s,
            SessionRead::Failed(e) => panic!("history refused: {e}"),
        })
        .collect()
}

#[tokio::test]
async fn finished_sessions_in_one_batched_request() {
    let e = Bitrix24Emulator::start(portal(130, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let page = c
        .list_chat_sessions(&ChatFilter::default(), 0)
        .await
        .unwrap();
    let oracle = e.chat_sessions();
    assert_eq!(activity_ids(&page.sessions), finished(&oracle));
    assert!(
        finished(&oracle).len() < oracle.len(),
        "open sessions are not listed"
    );
    assert!(page.exhausted);
    assert_eq!(page.last_id, finished(&oracle).last().copied());
    assert_eq!(
        c.stats().requests,
        1,
        "three pages of sessions in one batch request"
    );
    let stats = e.stats();
    // All 50 chained commands run (those past the end repeat page 0 and are ignored), as for calls.
    assert_eq!(stats.by_method["crm.activity.list"], 50);
    assert_eq!(stats.by_method["batch"], 1);
}

#[tokio::test]
async fn keyset_paging_resumes_after_the_last_id() {
    let e = Bitrix24Emulator::start(portal(130, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let mut after = 0;
    let mut got = Vec::new();
    let mut requests = 0;
    for _ in 0..10 {
        let page = c
            .list_chat_sessions_pages(&ChatFilter::default(), after, 1)
            .await
            .unwrap();
        requests += 1;
        got.extend(activity_ids(&page.sessions));
        if page.exhausted {
            break;
        }
        after = page.last_id.unwrap();
    }
    let want = finished(&e.chat_sessions());
    assert_eq!(got, want, "each finished session once, in ID order");
    assert_eq!(requests, want.len() / 50 + 1);
    assert_eq!(c.stats().requests, requests as u64);
}

#[tokio::test]
async fn the_portal_applies_operator_and_period_filters() {
    let e = Bitrix24Emulator::start(portal(150, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let oracle = e.chat_sessions();
    let ops: Vec<u64> = vec![oracle[9].responsible_id, oracle[30].responsible_id];
    let (from, to) = (oracle[15].start, oracle[120].start);
    let filter = ChatFilter {
        since: Some(TimeBound::Instant(from)),
        until: Some(TimeBound::Instant(to)),
        operators: ops.clone(),
        ..ChatFilter::default()
    };
    let page = c.list_chat_sessions(&filter, 0).await.unwrap();
    let want: Vec<u64> = oracle
        .iter()
        .filter(|s| s.completed && ops.contains(&s.responsible_id))
        .filter(|s| s.start >= from && s.start <= to)
        .map(|s| s.activity_id)
        .collect();
    assert!(!want.is_empty() && want.len() < finished(&oracle).len());
    assert_eq!(activity_ids(&page.sessions), want);
    assert!(page
        .sessions
        .iter()
        .all(|a| ops.contains(&a.responsible_id.unwrap())));
}

#[tokio::test]
async fn histories_are_read_fifty_sessions_per_request() {
    let e = Bitrix24Emulator::start(portal(160, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let page = c
        .list_chat_sessions(&ChatFilter::default(), 0)
        .await
        .unwrap();
    let n = page.sessions.len();
    assert!(n > 100, "{n} finished sessions");
    let before = c.stats().requests;
    let read = c.chat_sessions(&page.sessions).await.unwrap();
    assert_eq!(read.len(), n);
    assert!(read.values().all(|r| matches!(r, SessionRead::Read(_))));
    assert_eq!(c.stats().requests - before, n.div_ceil(50) as u64);
    let stats = e.stats();
    assert_eq!(stats.by_method["imopenlines.session.history.get"], n as u64);
    assert_eq!(stats.by_method["batch"], 1 + n.div_ceil(50) as u64);
    assert_eq!(
        stats.http_requests,
        1 + n.div_ceil(50) as u64,
        "listing + one request per 50 histories"
    );
}

fn role_name(r: ChatRole) -> &'static str {
    match r {
        ChatRole::Operator => "operator",
        ChatRole::Client => "client",
        ChatRole::Bot => "bot",
        ChatRole::System => "system",
    }
}

#[tokio::test]
async fn messages_in_id_order_with_roles_plain_text_and_unicode() {
    let e = Bitrix24Emulator::start(portal(40, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let oracle = e.chat_sessions();
    let sessions = read_all(&c).await;
    assert_eq!(sessions.len(), finished(&oracle).len());
    let (mut emoji, mut long, mut files, mut bb) = (false, false, false, 0);
    for s in &sessions {
        let o = oracle
            .iter()
            .find(|o| o.session_id == s.activity.session_id)
            .unwrap();
        let got: Vec<(u64, &str, u64)> = s
            .history
            .messages
            .iter()
            .map(|m| (m.id, role_name(m.role), m.author_id))
            .collect();
        let want: Vec<(u64, &str, u64)> = o.messages.iter().map(|m| (m.0, m.1, m.2)).collect();
        assert_eq!(got, want, "session {}: order, roles, authors", o.session_id);
        for (m, (_, _, _, text, file)) in s.history.messages.iter().zip(&o.messages) {
            if text.contains('[') {
                bb += 1;
                assert!(!m.text.contains('['), "BB-code left in {:?}", m.text);
                assert!(!m.text.is_empty());
            } else {
                assert_eq!(&m.text, text, "plain text arrives as written");
            }
            emoji |= m.text.contains("👍🏽") || m.text.contains("🌷");
            long |= m.text.len() == 12_000;
            if let Some(name) = file {
                files = true;
                assert_eq!(m.files, std::slice::from_ref(name));
            }
        }
    }
    assert!(
        emoji && long && files && bb > 20,
        "the catalogue was covered"
    );
    let first = sessions
        .iter()
        .find(|s| s.activity.session_id == oracle[0].session_id)
        .unwrap();
    let greeting = first
        .history
        .messages
        .iter()
        .find(|m| m.text.starts_with("Здравствуйте, "))
        .unwrap();
    assert_eq!(
        greeting.text,
        format!(
            "Здравствуйте, {}! Меня зовут {}. Чем помочь?",
            oracle[0].client_name,
            {
                let (n, l) = e.user_name(oracle[0].operators[0]).unwrap();
                format!("{n} {l}")
            }
        )
    );
}

#[tokio::test]
async fn sessions_map_to_chat_talks() {
    let e = Bitrix24Emulator::start(portal(40, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let oracle = e.chat_sessions();
    let sessions = read_all(&c).await;
    let crm: Vec<_> = sessions.iter().filter_map(session_crm).collect();
    let names = c.lookup(&[], &crm).await.unwrap();
    let (mut uploaded, mut skipped) = (0, 0);
    for s in &sessions {
        let o = oracle
            .iter()
            .find(|o| o.session_id == s.activity.session_id)
            .unwrap();
        let entity = session_crm(s).unwrap();
        let talks = chat_talks(s, None, names.crm.get(&entity), &ChatOptions::default());
        let talks = match talks {
            Err(skip) => {
                assert!(
                    o.unanswered,
                    "only the unanswered session is skipped: {skip}"
                );
                assert_eq!(skip.reason, ChatSkipReason::NoClientMessage);
                skipped += 1;
                continue;
            }
            Ok(t) => t,
        };
        uploaded += 1;
        assert_eq!(talks.len(), 1, "histories here fit one request");
        let t = &talks[0];
        let f = &t.fields;
        let shown = o.messages.iter().filter(|m| m.1 != "system").count();
        assert_eq!(t.messages.len(), shown, "system messages left out");
        let speakers = [&f["operator_id"], &f["client_id"], &f["bot_id"]];
        assert!(t.messages.iter().all(|m| speakers.contains(&&m.user_id)));
        assert!(t
            .messages
            .windows(2)
            .all(|w| w[0].timestamp <= w[1].timestamp));
        assert_eq!(f["ticket_id"], format!("{}_{}", o.owner.0, o.owner.1));
        assert_eq!(f["client_id"], f["ticket_id"]);
        let expected_name = if o.owner_deleted {
            o.client_name.clone()
        } else {
            e.crm_title(&o.owner.0, o.owner.1).unwrap()
        };
        assert_eq!(f["client_name"], expected_name, "session {}", o.session_id);
        if o.operators.len() > 1 && o.bot_id.is_none() {
            let mut ops: Vec<String> = Vec::new();
            for op in &o.operators {
                if !ops.contains(&op.to_string()) {
                    ops.push(op.to_string());
                }
            }
            assert_eq!(f["operator_ids"], ops.join(","), "the transfers show");
            assert_eq!(f["operator_id"], o.responsible_id.to_string());
        }
        assert_eq!(f["connector"], o.connector);
        assert_eq!(f["line_id"], o.line_id.to_string());
    }
    assert_eq!(skipped, 1);
    assert!(uploaded > 20);
}

#[tokio::test]
async fn a_session_closing_during_a_run_is_found_by_the_rescan() {
    let e = Bitrix24Emulator::start(portal(30, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let open: Vec<ChatSessionInfo> = e
        .chat_sessions()
        .into_iter()
        .filter(|s| !s.completed)
        .collect();
    let target = &open[0];
    let first = c
        .list_chat_sessions(&ChatFilter::default(), 0)
        .await
        .unwrap();
    assert!(!activity_ids(&first.sessions).contains(&target.activity_id));
    let still = c
        .chat_activities_by_id(&[target.activity_id])
        .await
        .unwrap();
    assert!(!still.sessions[0].completed, "open: it waits");
    assert!(e.close_chat_session(target.session_id));
    let now = c
        .chat_activities_by_id(&[target.activity_id])
        .await
        .unwrap();
    let closed = &now.sessions[0];
    assert!(closed.completed);
    // The keyset is past it; the re-scan of recently changed activities finds it.
    let rescan = ChatFilter {
        updated_since: closed.last_updated,
        ..ChatFilter::default()
    };
    let page = c.list_chat_sessions(&rescan, 0).await.unwrap();
    assert_eq!(activity_ids(&page.sessions), [target.activity_id]);
    let read = c.chat_sessions(&page.sessions).await.unwrap();
    let SessionRead::Read(s) = &read[&target.session_id] else {
        panic!("history refused")
    };
    assert_eq!(
        s.history.messages.last().unwrap().role,
        ChatRole::System,
        "closing notice"
    );
}

#[tokio::test]
async fn a_refused_history_does_not_fail_the_others() {
    let e = Bitrix24Emulator::start(portal(20, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let mut list = c
        .list_chat_sessions(&ChatFilter::default(), 0)
        .await
        .unwrap()
        .sessions;
    let mut ghost = list[0].clone();
    ghost.session_id = 99_999_999;
    list.push(ghost);
    let read = c.chat_sessions(&list).await.unwrap();
    match &read[&99_999_999] {
        SessionRead::Failed(err) => assert_eq!(err.code, "ACCESS_ERROR"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let ok = read
        .values()
        .filter(|r| matches!(r, SessionRead::Read(_)))
        .count();
    assert_eq!(ok, list.len() - 1);
}

#[tokio::test]
async fn a_small_bucket_is_never_overrun() {
    // The portal's bucket holds 6 requests and leaks 4 a second; the client allows itself a burst of 4 and 4 a
    // second (the slack absorbs network jitter). About ten requests sent at once would overflow it.
    let e = Bitrix24Emulator::start(portal(500, (6, 4))).await.unwrap();
    let c = client(
        &e,
        RatePlan {
            capacity: 4,
            per_second: 4,
        },
    );
    let sessions = read_all(&c).await;
    let ids: BTreeSet<u64> = sessions.iter().map(|s| s.activity.session_id).collect();
    assert_eq!(ids.len(), finished(&e.chat_sessions()).len());
    let stats = e.stats();
    assert_eq!(stats.rate_limited, 0, "no request refused");
    assert_eq!(c.stats().requests, 1 + ids.len().div_ceil(50) as u64);
}

#[tokio::test]
async fn transient_portal_faults_are_retried() {
    let e = Bitrix24Emulator::start(portal(120, (100, 100)))
        .await
        .unwrap();
    let c = client(&e, ROOMY);
    let clean = read_all(&c).await;
    e.set_faults(FaultConfig {
        internal_error_next: 1,
        html_502_next: 1,
        cut_rest_next: 1,
        query_limit_next: 1,
        ..FaultConfig::default()
    });
    let again = read_all(&c).await;
    assert_eq!(again, clean, "the same sessions, whole");
    assert!(c.stats().retries >= 4, "{:?}", c.stats());
    assert!(e.stats().faults_injected.values().sum::<u64>() >= 4);
}

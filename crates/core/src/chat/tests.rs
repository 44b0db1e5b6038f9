//! Tests of the session → talk mapping.

use chrono::FixedOffset;
use serde_json::{json, Value};

use super::*;

fn msk() -> FixedOffset {
    FixedOffset::east_opt(3 * 3600).unwrap()
}

fn activity() -> Value {
    json!({"ID": "30011", "ASSOCIATED_ENTITY_ID": "517", "START_TIME": "2026-03-02T10:00:00+03:00",
        "END_TIME": "2026-03-02T10:20:00+03:00", "COMPLETED": "Y", "RESPONSIBLE_ID": "7",
        "PROVIDER_PARAMS": {"USER_CODE": "livechat|1|77|abc"}, "PROVIDER_TYPE_ID": "1",
        "RESULT_SOURCE_ID": "livechat", "OWNER_TYPE_ID": "3", "OWNER_ID": "42"})
}

fn msg(id: u64, sender: u64, minute: u32, text: &str) -> (String, Value) {
    (
        id.to_string(),
        json!({"id": id, "chatid": 77, "senderid": sender.to_string(), "recipientid": "chat77",
            "date": format!("2026-03-02T10:{minute:02}:00+03:00"), "text": text, "params": []}),
    )
}

fn history(messages: Vec<(String, Value)>) -> Value {
    json!({"chatId": 77, "sessionId": 517,
        "message": Value::Object(messages.into_iter().collect()),
        "users": {"1001": {"id": 1001, "name": "Гость сайта", "connector": true, "bot": false},
                  "900": {"id": 900, "name": "Бот-помощник", "bot": true, "connector": false},
                  "5": {"id": 5, "name": "Анна Петрова", "bot": false, "connector": false},
                  "7": {"id": 7, "name": "Олег Смирнов", "bot": false, "connector": false}},
        "chat": {"77": {"id": 77, "entityId": "livechat|1|77|abc", "entityData1": "Y|CONTACT|42|N|N|517"}},
        "files": {"55": {"id": 55, "name": "фото.jpg"}}})
}

/// A session with a bot, a transfer from operator 5 to 7, system notices, an attachment and BB-code.
fn full() -> ChatSession {
    let mut with_file = msg(1006, 1001, 6, "");
    with_file.1["params"] = json!({"FILE_ID": [55]});
    let h = history(vec![
        msg(1000, 0, 0, "Обращение принято"),
        msg(1001, 1001, 1, "Здравствуйте, [b]заказ[/b] не пришёл 😟"),
        msg(1002, 900, 1, "Соединяю с оператором"),
        msg(1003, 5, 2, "[USER=1001]Гость[/USER], проверю"),
        msg(1004, 0, 3, "Диалог передан: Олег Смирнов"),
        msg(1005, 7, 4, "Номер заказа?[br]Спасибо"),
        with_file,
        msg(1007, 0, 9, "Диалог закрыт"),
    ]);
    ChatSession {
        activity: ChatActivity::from_bitrix(&activity(), msk()).unwrap(),
        history: ChatHistory::from_bitrix(&h, msk()).unwrap(),
    }
}

fn one(s: &ChatSession) -> ChatTalk {
    let mut talks = chat_talks(s, None, None, &ChatOptions::default()).unwrap();
    assert_eq!(talks.len(), 1);
    talks.remove(0)
}

#[test]
fn roles_order_text_and_time() {
    let t = one(&full());
    let got: Vec<(&str, &str)> = t
        .messages
        .iter()
        .map(|m| (m.user_id.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("CONTACT_42", "Здравствуйте, заказ не пришёл 😟"),
            ("900", "Соединяю с оператором"),
            ("7", "Гость, проверю"),
            ("7", "Номер заказа?\nСпасибо"),
            ("CONTACT_42", "📎 фото.jpg"),
        ],
        "system messages left out, every operator's message under the session's operator"
    );
    assert_eq!(
        t.messages[0].timestamp.to_rfc3339(),
        "2026-03-02T07:01:00+00:00",
        "UTC"
    );
    let f = &t.fields;
    assert_eq!(f["operator_id"], "7");
    assert_eq!(f["operator_name"], "Олег Смирнов");
    assert_eq!(f["operator_ids"], "5,7", "the transfer shows");
    assert_eq!(
        (f["bot_id"].as_str(), f["bot_name"].as_str()),
        ("900", "Бот-помощник")
    );
    assert_eq!(f["client_id"], "CONTACT_42");
    assert_eq!(
        f["ticket_id"], "CONTACT_42",
        "the same form as a bound call's client_id"
    );
    assert_eq!(
        f["client_name"], "Гость сайта",
        "no CRM lookup: the connector user's name"
    );
    assert_eq!(f["date"], "2026-03-02T10:00:00+03:00");
    assert_eq!(f["direction_outgoing"], "false");
    assert_eq!(f["language"], "ru-RU");
    let counts = [
        "message_count",
        "client_message_count",
        "operator_message_count",
        "bot_message_count",
    ]
    .map(|k| f[k].as_str());
    assert_eq!(counts, ["5", "2", "2", "1"]);
    assert_eq!(f["system_message_count"], "3");
    assert_eq!(f["file_count"], "1");
    assert_eq!(
        (
            f["id"].as_str(),
            f["session_id"].as_str(),
            f["chat_id"].as_str()
        ),
        ("517", "517", "77")
    );
    assert_eq!(
        (f["line_id"].as_str(), f["connector"].as_str()),
        ("1", "livechat")
    );
    assert_eq!(f["crm_activity_id"], "30011");
    assert_eq!((f["part"].as_str(), f["parts"].as_str()), ("1", "1"));
    let speakers: Vec<&str> = ["operator_id", "client_id", "bot_id"]
        .map(|k| f[k].as_str())
        .to_vec();
    assert!(t
        .messages
        .iter()
        .all(|m| speakers.contains(&m.user_id.as_str())));
}

#[test]
fn crm_names_and_unbound_sessions() {
    let s = full();
    let contact = CrmInfo {
        entity: CrmRef {
            kind: CrmEntityType::Contact,
            id: 42,
        },
        title: None,
        name: Some("Иван".into()),
        last_name: Some("Сидоров".into()),
    };
    let t = chat_talks(&s, None, Some(&contact), &ChatOptions::default()).unwrap();
    assert_eq!(t[0].fields["client_name"], "Иван Сидоров");
    let mut unbound = s.clone();
    unbound.activity.crm = None;
    unbound.history.crm = None;
    let t = one(&unbound);
    assert_eq!(t.fields["client_id"], "imol|livechat|1|77|abc");
    assert_eq!(t.fields["ticket_id"], t.fields["client_id"]);
    assert_eq!(t.fields["crm_entity_type"], "");
    assert_eq!(t.messages[0].user_id, "imol|livechat|1|77|abc");
    // The activity lost its owner, the chat still says LEAD 9: the chat's binding is used.
    let mut chat_only = s.clone();
    chat_only.activity.crm = None;
    chat_only.history.crm = Some(CrmRef {
        kind: CrmEntityType::Lead,
        id: 9,
    });
    assert_eq!(one(&chat_only).fields["ticket_id"], "LEAD_9");
}

#[test]
fn skip_rules() {
    let mut open = full();
    open.activity.completed = false;
    let e = chat_talks(&open, None, None, &ChatOptions::default()).unwrap_err();
    assert_eq!(e.reason, ChatSkipReason::SessionOpen);
    for r in ChatSkipReason::ALL {
        assert_eq!(
            r.as_str().parse::<ChatSkipReason>(),
            Ok(r),
            "names survive the ledger"
        );
    }
    assert!("closed".parse::<ChatSkipReason>().is_err());

    let mut silent = full();
    silent
        .history
        .messages
        .retain(|m| m.role != ChatRole::Client);
    let e = chat_talks(&silent, None, None, &ChatOptions::default()).unwrap_err();
    assert_eq!(
        (e.reason, e.client_messages),
        (ChatSkipReason::NoClientMessage, 0)
    );
    assert_eq!(
        e.to_string(),
        "no_client_message: 0 client message(s), at least 1 wanted"
    );

    let three = ChatOptions {
        min_client_messages: 3,
        ..Default::default()
    };
    let e = chat_talks(&full(), None, None, &three).unwrap_err();
    assert_eq!(
        (e.reason, e.client_messages),
        (ChatSkipReason::TooFewClientMessages, 2)
    );
    let two = ChatOptions {
        min_client_messages: 2,
        ..Default::default()
    };
    assert!(chat_talks(&full(), None, None, &two).is_ok());

    // A client message that is only BB-code with nothing readable does not count.
    let mut empty = full();
    empty
        .history
        .messages
        .retain(|m| m.role != ChatRole::Client);
    empty.history.messages.push(ChatLine {
        id: 2000,
        author_id: 1001,
        role: ChatRole::Client,
        date: None,
        text: bbcode::to_plain_text("[ICON=x]"),
        files: vec![],
    });
    assert_eq!(
        chat_talks(&empty, None, None, &ChatOptions::default())
            .unwrap_err()
            .reason,
        ChatSkipReason::NoClientMessage
    );
}

#[test]
fn operator_choice() {
    // The responsible user is the bot: the first operator who wrote is the operator.
    let mut s = full();
    s.activity.responsible_id = Some(900);
    let t = one(&s);
    assert_eq!(t.fields["operator_id"], "5");
    assert!(t
        .messages
        .iter()
        .filter(|m| m.text.contains("проверю"))
        .all(|m| m.user_id == "5"));
    // A responsible user missing from the history is named from user.get, else `user <id>`.
    let mut s = full();
    s.activity.responsible_id = Some(12);
    assert_eq!(one(&s).fields["operator_name"], "user 12");
    let u = UserInfo {
        id: 12,
        name: Some("Мария".into()),
        last_name: Some("Козлова".into()),
    };
    let t = chat_talks(&s, Some(&u), None, &ChatOptions::default()).unwrap();
    assert_eq!(t[0].fields["operator_name"], "Мария Козлова");
    // Operator first: outgoing.
    let mut s = full();
    s.history.messages.retain(|m| m.id >= 1003);
    s.history.messages.push(ChatLine {
        id: 3000,
        author_id: 1001,
        role: ChatRole::Client,
        date: None,
        text: "ок".into(),
        files: vec![],
    });
    let t = one(&s);
    assert_eq!(t.fields["direction_outgoing"], "true");
    assert_eq!(
        t.messages.last().unwrap().timestamp,
        t.messages[t.messages.len() - 2].timestamp,
        "no date: the previous one's"
    );
}

#[test]
fn values_are_cut_on_a_character_boundary() {
    let mut s = full();
    s.history.users.get_mut(&1001).unwrap().name = Some("Ж".repeat(700)); // 1,400 bytes
    s.activity.user_code = Some(format!("livechat|1|{}|x", "ы".repeat(600)));
    s.activity.crm = None;
    s.history.crm = None;
    let t = one(&s);
    for k in ["client_name", "client_id", "user_code", "ticket_id"] {
        let v = &t.fields[k];
        assert!(v.len() <= 1024 && v.len() > 1000, "{k}: {} bytes", v.len());
    }
    assert!(t.fields["client_name"].chars().all(|c| c == 'Ж'));
    // Messages carry the cut client_id, so they still match the field.
    assert!(t
        .messages
        .iter()
        .any(|m| m.user_id == t.fields["client_id"]));
}

#[test]
fn long_history_is_sent_in_parts() {
    let mut s = full();
    let base = s.history.messages.clone();
    for i in 0..2_000u64 {
        let mut m = base[1].clone();
        m.id = 10_000 + i;
        m.role = if i.is_multiple_of(2) {
            ChatRole::Client
        } else {
            ChatRole::Operator
        };
        m.author_id = if i.is_multiple_of(2) { 1001 } else { 7 };
        m.text = format!("{i}: {}", "длинный текст ".repeat(20));
        s.history.messages.push(m);
    }
    let whole = chat_talks(&s, None, None, &ChatOptions::default()).unwrap();
    assert_eq!(whole.len(), 1, "about 1 MB fits one request");
    let small = ChatOptions {
        max_request_bytes: 128 * 1024,
        ..Default::default()
    };
    let parts = chat_talks(&s, None, None, &small).unwrap();
    assert!(parts.len() > 3, "{} parts", parts.len());
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.fields["part"], (i + 1).to_string());
        assert_eq!(p.fields["parts"], parts.len().to_string());
        assert_eq!(p.fields["session_id"], "517");
        let size = split::fields_bytes(&p.fields)
            + p.messages.iter().map(split::message_bytes).sum::<usize>();
        assert!(size <= 128 * 1024, "part {i}: {size} bytes");
    }
    let joined: Vec<ChatMessage> = parts.into_iter().flat_map(|p| p.messages).collect();
    assert_eq!(
        joined, whole[0].messages,
        "the parts are the whole history, in order"
    );
}

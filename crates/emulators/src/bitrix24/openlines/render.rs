//! The wire shapes: a session's CRM activity as `crm.activity.list`/`get` return it, and its history as
//! `imopenlines.session.history.get` does (object keyed by message ID, `[]` for empty maps, `senderid` as a
//! string, `0` for the line's own notices).

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Map, Value};

use super::gen::{SessionRec, LINES};
use super::script::{bot_name, Author, GenMsg};
use crate::bitrix24::batch::php_array;
use crate::bitrix24::clock::portal_date;
use crate::bitrix24::data::{CrmKind, FieldVal, UserRec};

/// Where a session stands now.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    pub completed: bool,
    pub end: DateTime<FixedOffset>,
    pub last_updated: DateTime<FixedOffset>,
}

/// `OWNER_TYPE_ID` of a CRM kind.
pub fn owner_type_id(k: CrmKind) -> i64 {
    match k {
        CrmKind::Lead => 1,
        CrmKind::Deal => 2,
        CrmKind::Contact => 3,
        CrmKind::Company => 4,
    }
}

/// A field of the activity for `filter`/`order`; `None` for a field activities do not have.
pub fn field(r: &SessionRec, st: &Status, name: &str) -> Option<FieldVal> {
    let int = |n: u64| FieldVal::Int(n as i64);
    let s = |v: &str| FieldVal::Str(v.to_string());
    Some(match name {
        "ID" => int(r.activity_id),
        "OWNER_ID" => int(r.owner.1),
        "OWNER_TYPE_ID" => FieldVal::Int(owner_type_id(r.owner.0)),
        "TYPE_ID" => FieldVal::Int(6),
        "PROVIDER_ID" => s("IMOPENLINES_SESSION"),
        "PROVIDER_TYPE_ID" => s(&r.line_id().to_string()),
        "ASSOCIATED_ENTITY_ID" => int(r.session_id),
        "ORIGIN_ID" => s(&format!("IMOL_{}", r.session_id)),
        "START_TIME" | "CREATED" => FieldVal::Date(r.start),
        "END_TIME" | "DEADLINE" => FieldVal::Date(st.end),
        "LAST_UPDATED" => FieldVal::Date(st.last_updated),
        "COMPLETED" => s(if st.completed { "Y" } else { "N" }),
        "STATUS" => FieldVal::Int(if st.completed { 2 } else { 1 }),
        "RESPONSIBLE_ID" | "AUTHOR_ID" | "EDITOR_ID" => int(r.responsible()),
        "RESULT_SOURCE_ID" => s(r.connector()),
        "DIRECTION" => FieldVal::Int(if r.shape.unanswered { 2 } else { 1 }),
        "SUBJECT" => s(&subject(r)),
        _ => return None,
    })
}

fn subject(r: &SessionRec) -> String {
    format!("{} - {}", r.client_name, LINES[r.line].2)
}

/// The activity row with every field (`COMMUNICATIONS` only when selected, as on the portal).
pub fn activity(r: &SessionRec, st: &Status, select: &[String]) -> Value {
    let d = |t: &DateTime<FixedOffset>| portal_date(t);
    let id = |n: u64| n.to_string();
    let all = json!({
        "ID": id(r.activity_id), "OWNER_ID": id(r.owner.1), "OWNER_TYPE_ID": owner_type_id(r.owner.0).to_string(),
        "TYPE_ID": "6", "PROVIDER_ID": "IMOPENLINES_SESSION", "PROVIDER_TYPE_ID": r.line_id().to_string(),
        "PROVIDER_GROUP_ID": null, "ASSOCIATED_ENTITY_ID": id(r.session_id), "SUBJECT": subject(r),
        "CREATED": d(&r.start), "LAST_UPDATED": d(&st.last_updated), "START_TIME": d(&r.start),
        "END_TIME": d(&st.end), "DEADLINE": d(&st.end), "COMPLETED": if st.completed { "Y" } else { "N" },
        "STATUS": if st.completed { "2" } else { "1" }, "RESPONSIBLE_ID": id(r.responsible()), "PRIORITY": "2",
        "NOTIFY_TYPE": "0", "NOTIFY_VALUE": "0", "DESCRIPTION": "", "DESCRIPTION_TYPE": "1",
        "DIRECTION": if r.shape.unanswered { "2" } else { "1" }, "LOCATION": "", "SETTINGS": [],
        "ORIGINATOR_ID": null, "ORIGIN_ID": format!("IMOL_{}", r.session_id), "AUTHOR_ID": id(r.responsible()),
        "EDITOR_ID": id(r.responsible()), "PROVIDER_PARAMS": {"USER_CODE": r.user_code},
        "PROVIDER_DATA": null, "RESULT_MARK": "0", "RESULT_VALUE": null, "RESULT_SUM": null,
        "RESULT_CURRENCY_ID": null, "RESULT_STATUS": "0", "RESULT_STREAM": "0",
        "RESULT_SOURCE_ID": r.connector(), "AUTOCOMPLETE_RULE": "0",
    });
    let Value::Object(mut all) = all else {
        return Value::Null;
    };
    let named = |k: &str| select.iter().any(|s| s == k);
    if named("COMMUNICATIONS") {
        all.insert(
            "COMMUNICATIONS".into(),
            json!([{"ID": id(r.activity_id * 10), "TYPE": "IM", "VALUE": format!("imol|{}", r.user_code),
                "ENTITY_ID": id(r.owner.1), "ENTITY_TYPE_ID": owner_type_id(r.owner.0).to_string()}]),
        );
    }
    if select.is_empty() || named("*") {
        return Value::Object(all);
    }
    Value::Object(
        all.into_iter()
            .filter(|(k, _)| k == "ID" || named(k))
            .collect::<Map<_, _>>(),
    )
}

fn person(users: &[UserRec], id: u64) -> (String, String, String) {
    usize::try_from(id)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| users.get(i))
        .map_or_else(
            || {
                (
                    format!("Сотрудник {id}"),
                    String::new(),
                    "Менеджер".to_string(),
                )
            },
            |u| (u.name.clone(), u.last_name.clone(), u.position.clone()),
        )
}

fn user_json(id: u64, first: &str, last: &str, position: &str, kind: &str) -> Value {
    let full = format!("{first} {last}").trim().to_string();
    let (bot, connector) = (kind == "bot", kind == "connector");
    json!({"id": id, "active": true, "name": full, "firstName": first, "lastName": last, "workPosition": position,
        "color": "#df532d", "avatar": "", "gender": "M", "birthday": false, "extranet": connector, "network": false,
        "bot": bot, "connector": connector,
        "externalAuthId": match kind { "bot" => "bot", "connector" => "imconnector", _ => "default" },
        "type": match kind { "bot" => "bot", "connector" => "extranet", _ => "user" }, "status": "online",
        "idle": false, "departments": if bot || connector { json!([]) } else { json!([1]) }, "phones": false})
}

/// `imopenlines.session.history.get`'s result: `messages` are the session's messages so far (the closing notice
/// only once it is closed).
pub fn history(r: &SessionRec, st: &Status, messages: &[GenMsg], users: &[UserRec]) -> Value {
    let shown: &[GenMsg] = if st.completed {
        messages
    } else {
        &messages[..messages.len().saturating_sub(1)]
    };
    let chat = format!("chat{}", r.chat_id);
    let mut msg_map = Vec::with_capacity(shown.len());
    let mut files = Vec::new();
    for m in shown {
        let params = match &m.file {
            Some(f) => {
                let ext = f.name.rsplit('.').next().unwrap_or("");
                files.push((
                    f.id.to_string(),
                    json!({"id": f.id, "chatid": r.chat_id, "date": portal_date(&m.at), "type": f.kind,
                        "name": f.name, "extension": ext, "size": f.size, "authorid": r.client_user,
                        "authorname": r.client_name, "urldownload": format!("/disk/downloadFile/{}/?&ncc=1", f.id),
                        "urlshow": format!("/disk/showFile/{}/", f.id), "urlpreview": ""}),
                ));
                json!({"FILE_ID": [f.id.to_string()]})
            }
            None => json!([]),
        };
        msg_map.push((
            m.id.to_string(),
            json!({"id": m.id, "chatid": r.chat_id, "senderid": m.author.sender_id(r).to_string(),
                "recipientid": chat, "date": portal_date(&m.at), "text": m.text,
                "textlegacy": m.text.replace("[br]", "<br />"), "params": params}),
        ));
    }
    let mut people = vec![(
        r.client_user.to_string(),
        user_json(r.client_user, &r.client_name, "", "", "connector"),
    )];
    for op in &r.operators {
        let (first, last, position) = person(users, *op);
        people.push((
            op.to_string(),
            user_json(*op, &first, &last, &position, "user"),
        ));
    }
    if let Some(bot) = r.bot {
        people.push((
            bot.to_string(),
            user_json(bot, bot_name(bot), "", "", "bot"),
        ));
    }
    let (kind, owner) = r.owner;
    let others = |k: CrmKind| if kind == k { owner } else { 0 };
    let chat_card = json!({
        "id": r.chat_id, "name": format!("{} - {}", r.client_name, LINES[r.line].2), "owner": r.responsible(),
        "entityType": "LINES", "entityId": r.user_code,
        "entityData1": format!("Y|{}|{owner}|N|N|{}|{}|{}|0|", kind.as_str(), r.session_id, r.start.timestamp(),
            r.line_id()),
        "entityData2": format!("LEAD|{}|COMPANY|{}|CONTACT|{}|DEAL|{}", others(CrmKind::Lead),
            others(CrmKind::Company), others(CrmKind::Contact), others(CrmKind::Deal)),
        "entityData3": "", "messageCount": shown.len(), "dateCreate": portal_date(&r.start),
        "managerList": r.operators, "type": "lines",
    });
    let ids: Vec<u64> = shown.iter().map(|m| m.id).collect();
    json!({
        "chatId": r.chat_id, "sessionId": r.session_id, "canJoin": "Y", "canVoteHead": "Y", "sessionVoteHead": 0,
        "sessionCommentHead": "", "userId": chat,
        "message": php_array(msg_map),
        "usersMessage": {chat.clone(): ids},
        "users": php_array(people),
        "chat": {r.chat_id.to_string(): chat_card},
        "userInChat": {r.chat_id.to_string(): r.operators.iter().copied().chain([r.client_user]).collect::<Vec<_>>()},
        "userBlockChat": [], "userInGroup": [], "woUserInGroup": [], "openlines": [],
        "files": php_array(files),
    })
}

/// `"a"` for `Author` in tests' oracle: the role a reader must infer.
pub fn role(a: Author) -> &'static str {
    match a {
        Author::System => "system",
        Author::Client => "client",
        Author::Operator(_) => "operator",
        Author::Bot(_) => "bot",
    }
}

//! An Open Lines session as Bitrix24 describes it: its CRM activity (`crm.activity.list`, provider
//! `IMOPENLINES_SESSION`) and its history (`imopenlines.session.history.get`), read leniently like calls.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bbcode::to_plain_text;
use crate::call::{parse_datetime, CrmEntityType, CrmRef};
use crate::lenient;

/// The CRM activity provider of Open Lines sessions.
pub const SESSION_PROVIDER: &str = "IMOPENLINES_SESSION";

/// Who wrote a message (`docs/mapping.md`, "Chats").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    /// An employee answering in the line.
    Operator,
    /// The customer, writing through a connector (website chat, Telegram, WhatsApp…).
    Client,
    /// A chatbot handling the line.
    Bot,
    /// The line itself (sender `0`): queue, transfer, CRM and closing notices.
    System,
}

/// Why an activity row or a history could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatParseError {
    #[error("Open Lines activity is not a JSON object")]
    NotAnObject,
    #[error("Open Lines activity has no usable ID")]
    MissingId,
    #[error("Open Lines activity {0}: neither ASSOCIATED_ENTITY_ID nor ORIGIN_ID names a session")]
    MissingSession(u64),
    #[error("Open Lines activity {id}: START_TIME {value:?} is not an ISO-8601 date-time")]
    BadStartTime { id: u64, value: String },
    #[error("session history is not a JSON object")]
    HistoryNotAnObject,
}

/// One `IMOPENLINES_SESSION` CRM activity: the session's listing entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatActivity {
    /// The activity `ID` (the keyset of the listing).
    pub activity_id: u64,
    /// `ASSOCIATED_ENTITY_ID` (or the number in `ORIGIN_ID` `IMOL_<id>`).
    pub session_id: u64,
    /// `PROVIDER_TYPE_ID`: the Open Line's config id.
    pub line_id: Option<String>,
    /// `RESULT_SOURCE_ID`, else the first part of `USER_CODE`: `livechat`, `telegrambot`…
    pub connector: Option<String>,
    /// `PROVIDER_PARAMS.USER_CODE`: `<connector>|<line>|<connector chat>|<connector user>`.
    pub user_code: Option<String>,
    /// `RESPONSIBLE_ID`: the session's operator.
    pub responsible_id: Option<u64>,
    pub start: DateTime<FixedOffset>,
    pub end: Option<DateTime<FixedOffset>>,
    /// `COMPLETED` = `Y`: the session is closed.
    pub completed: bool,
    /// The owner (`OWNER_TYPE_ID`, `OWNER_ID`): the CRM record the session is bound to.
    pub crm: Option<CrmRef>,
    pub last_updated: Option<DateTime<FixedOffset>>,
}

/// `OWNER_TYPE_ID` / `ENTITY_TYPE_ID` → the CRM kind (1 lead, 2 deal, 3 contact, 4 company, others by number).
pub fn crm_type_from_id(n: u64) -> CrmEntityType {
    match n {
        1 => CrmEntityType::Lead,
        2 => CrmEntityType::Deal,
        3 => CrmEntityType::Contact,
        4 => CrmEntityType::Company,
        7 => CrmEntityType::Other("QUOTE".into()),
        31 => CrmEntityType::Other("SMART_INVOICE".into()),
        n => CrmEntityType::Other(format!("DYNAMIC_{n}")),
    }
}

fn date(v: Option<&Value>, offset: FixedOffset) -> Option<DateTime<FixedOffset>> {
    v.and_then(lenient::text)
        .and_then(|s| parse_datetime(&s, offset))
}

impl ChatActivity {
    /// Reads one `crm.activity.list` row. `offset` is used for dates without an offset.
    pub fn from_bitrix(row: &Value, offset: FixedOffset) -> Result<ChatActivity, ChatParseError> {
        let o = row.as_object().ok_or(ChatParseError::NotAnObject)?;
        let get = |k: &str| o.get(k);
        let activity_id = get("ID")
            .and_then(lenient::id)
            .ok_or(ChatParseError::MissingId)?;
        let session_id = get("ASSOCIATED_ENTITY_ID")
            .and_then(lenient::id)
            .or_else(|| {
                get("ORIGIN_ID")
                    .and_then(lenient::text)
                    .and_then(|s| s.trim().strip_prefix("IMOL_").and_then(|n| n.parse().ok()))
                    .filter(|n| *n > 0)
            })
            .ok_or(ChatParseError::MissingSession(activity_id))?;
        let raw_start = get("START_TIME")
            .and_then(lenient::text)
            .unwrap_or_default();
        let start =
            parse_datetime(&raw_start, offset).ok_or_else(|| ChatParseError::BadStartTime {
                id: activity_id,
                value: raw_start.clone(),
            })?;
        let user_code = match get("PROVIDER_PARAMS") {
            Some(Value::Object(p)) => p.get("USER_CODE").and_then(lenient::text),
            // Some portals send the params serialized.
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .ok()
                .and_then(|v| v.get("USER_CODE").and_then(lenient::text)),
            _ => None,
        };
        let connector = get("RESULT_SOURCE_ID")
            .and_then(lenient::text)
            .or_else(|| {
                user_code
                    .as_deref()
                    .and_then(|c| c.split('|').next())
                    .map(String::from)
            })
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let crm = match (
            get("OWNER_TYPE_ID").and_then(lenient::id),
            get("OWNER_ID").and_then(lenient::id),
        ) {
            (Some(t), Some(id)) => Some(CrmRef {
                kind: crm_type_from_id(t),
                id,
            }),
            _ => None,
        };
        Ok(ChatActivity {
            activity_id,
            session_id,
            line_id: get("PROVIDER_TYPE_ID")
                .and_then(lenient::text)
                .map(|s| s.trim().to_string()),
            connector,
            user_code,
            responsible_id: get("RESPONSIBLE_ID").and_then(lenient::id),
            start,
            end: date(get("END_TIME"), offset),
            completed: get("COMPLETED").and_then(lenient::flag).unwrap_or(false),
            crm,
            last_updated: date(get("LAST_UPDATED"), offset),
        })
    }
}

/// A participant of the chat (`users` of the history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatUser {
    pub id: u64,
    /// `name`, else `firstName lastName`.
    pub name: Option<String>,
    pub bot: bool,
    /// Writes through a connector: the customer.
    pub connector: bool,
}

/// One message of the session, BB-code already turned into plain text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    pub id: u64,
    /// `senderid` (0 = the line itself).
    pub author_id: u64,
    pub role: ChatRole,
    pub date: Option<DateTime<FixedOffset>>,
    pub text: String,
    /// Names of the files attached to the message.
    pub files: Vec<String>,
}

/// What `imopenlines.session.history.get` says about one session.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatHistory {
    pub chat_id: Option<u64>,
    pub session_id: Option<u64>,
    /// Ascending by message ID (the portal's object order is not chronological).
    pub messages: Vec<ChatLine>,
    pub users: BTreeMap<u64, ChatUser>,
    /// The chat's CRM binding (`entityData1` = `Y|CONTACT|42|…`), when it has one.
    pub crm: Option<CrmRef>,
    /// The chat's `entityId` (USER_CODE).
    pub user_code: Option<String>,
}

/// A finished (or not) session with everything the mapping needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSession {
    pub activity: ChatActivity,
    pub history: ChatHistory,
}

fn entries(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Object(o)) => o.values().collect(),
        Some(Value::Array(a)) => a.iter().collect(),
        _ => Vec::new(),
    }
}

/// The first of several spellings (`firstName` / `first_name`).
fn field<'a>(o: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| o.get(*n))
}

fn flag(o: &Value, names: &[&str]) -> bool {
    field(o, names).and_then(lenient::flag).unwrap_or(false)
}

/// How the history describes who wrote: connector user → client, bot → bot, sender 0 → system, else operator.
pub fn classify(author_id: u64, user: Option<&ChatUser>) -> ChatRole {
    match user {
        _ if author_id == 0 => ChatRole::System,
        Some(u) if u.connector => ChatRole::Client,
        Some(u) if u.bot => ChatRole::Bot,
        _ => ChatRole::Operator,
    }
}

fn read_user(u: &Value) -> Option<ChatUser> {
    let id = field(u, &["id", "ID"]).and_then(lenient::id)?;
    let auth = field(u, &["externalAuthId", "external_auth_id"])
        .and_then(lenient::text)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let kind = field(u, &["type"])
        .and_then(lenient::text)
        .unwrap_or_default();
    let name = field(u, &["name"]).and_then(lenient::text).or_else(|| {
        let parts: Vec<String> = [
            field(u, &["firstName", "first_name"]),
            field(u, &["lastName", "last_name"]),
        ]
        .into_iter()
        .flatten()
        .filter_map(lenient::text)
        .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    });
    Some(ChatUser {
        id,
        name: name.map(|n| n.trim().to_string()),
        bot: flag(u, &["bot"]) || auth == "bot" || kind.eq_ignore_ascii_case("bot"),
        connector: flag(u, &["connector"]) || auth == "imconnector",
    })
}

/// `entityData1` = `CRM(Y/N)|TYPE|ID|…`.
fn crm_from_entity_data(s: &str) -> Option<CrmRef> {
    let mut parts = s.split('|');
    if parts.next()?.trim() != "Y" {
        return None;
    }
    let kind = parts.next()?.trim();
    let id: u64 = parts.next()?.trim().parse().ok().filter(|n| *n > 0)?;
    (!kind.is_empty() && kind != "NONE").then(|| CrmRef {
        kind: CrmEntityType::parse(kind),
        id,
    })
}

impl ChatHistory {
    /// Reads the `result` of `imopenlines.session.history.get`; dates without an offset are read in `offset`.
    pub fn from_bitrix(result: &Value, offset: FixedOffset) -> Result<ChatHistory, ChatParseError> {
        if !result.is_object() {
            return Err(ChatParseError::HistoryNotAnObject);
        }
        let chat_id = field(result, &["chatId", "chat_id"]).and_then(lenient::id);
        let users: BTreeMap<u64, ChatUser> = entries(result.get("users"))
            .into_iter()
            .filter_map(read_user)
            .map(|u| (u.id, u))
            .collect();
        let files: BTreeMap<u64, String> = entries(result.get("files"))
            .into_iter()
            .filter_map(|f| {
                let id = field(f, &["id"]).and_then(lenient::id)?;
                let name = field(f, &["name"])
                    .and_then(lenient::text)
                    .unwrap_or_else(|| format!("file {id}"));
                Some((id, name))
            })
            .collect();
        let mut messages: Vec<ChatLine> = entries(result.get("message"))
            .into_iter()
            .filter_map(|m| {
                let id = field(m, &["id"]).and_then(lenient::id)?;
                let author_id = field(m, &["senderid", "senderId", "author_id"])
                    .and_then(lenient::number)
                    .unwrap_or(0);
                let text = field(m, &["text"])
                    .and_then(lenient::value_to_text)
                    .unwrap_or_default();
                let file_ids: Vec<u64> = m
                    .get("params")
                    .and_then(|p| field(p, &["FILE_ID", "fileId"]))
                    .map(|v| match v {
                        Value::Array(_) | Value::Object(_) => entries(Some(v))
                            .into_iter()
                            .filter_map(lenient::id)
                            .collect(),
                        other => lenient::id(other).into_iter().collect(),
                    })
                    .unwrap_or_default();
                Some(ChatLine {
                    id,
                    author_id,
                    role: classify(author_id, users.get(&author_id)),
                    date: date(m.get("date"), offset),
                    text: to_plain_text(&text),
                    files: file_ids
                        .iter()
                        .map(|f| files.get(f).cloned().unwrap_or_else(|| format!("file {f}")))
                        .collect(),
                })
            })
            .collect();
        messages.sort_by_key(|m| m.id);
        messages.dedup_by_key(|m| m.id);
        let chat = entries(result.get("chat"))
            .into_iter()
            .find(|c| chat_id.is_none() || field(c, &["id"]).and_then(lenient::id) == chat_id);
        let text_of = |names: &[&str]| chat.and_then(|c| field(c, names)).and_then(lenient::text);
        Ok(ChatHistory {
            chat_id,
            session_id: field(result, &["sessionId", "session_id"]).and_then(lenient::id),
            messages,
            users,
            crm: text_of(&["entityData1", "entity_data_1"]).and_then(|s| crm_from_entity_data(&s)),
            user_code: text_of(&["entityId", "entity_id"]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msk() -> FixedOffset {
        FixedOffset::east_opt(3 * 3600).unwrap()
    }

    #[test]
    fn activity_row() {
        let row = json!({"ID": "30011", "ASSOCIATED_ENTITY_ID": "517", "START_TIME": "2026-03-02T10:00:00+03:00",
            "END_TIME": "2026-03-02T10:20:00+03:00", "COMPLETED": "Y", "RESPONSIBLE_ID": "5",
            "PROVIDER_PARAMS": {"USER_CODE": "telegrambot|2|777|888"}, "PROVIDER_TYPE_ID": "2",
            "RESULT_SOURCE_ID": "", "OWNER_TYPE_ID": "3", "OWNER_ID": "42", "LAST_UPDATED": "2026-03-02 10:20:05"});
        let a = ChatActivity::from_bitrix(&row, msk()).unwrap();
        assert_eq!((a.activity_id, a.session_id), (30011, 517));
        assert_eq!(
            a.connector.as_deref(),
            Some("telegrambot"),
            "from USER_CODE when RESULT_SOURCE_ID is empty"
        );
        assert_eq!(a.line_id.as_deref(), Some("2"));
        assert_eq!(
            a.crm,
            Some(CrmRef {
                kind: CrmEntityType::Contact,
                id: 42
            })
        );
        assert!(a.completed);
        assert_eq!(
            a.last_updated.unwrap().to_rfc3339(),
            "2026-03-02T10:20:05+03:00"
        );
        let mut bare = row.clone();
        bare["ASSOCIATED_ENTITY_ID"] = json!("0");
        bare["ORIGIN_ID"] = json!("IMOL_518");
        bare["OWNER_TYPE_ID"] = json!("0");
        assert_eq!(
            ChatActivity::from_bitrix(&bare, msk()).unwrap().session_id,
            518
        );
        assert_eq!(ChatActivity::from_bitrix(&bare, msk()).unwrap().crm, None);
        bare["ORIGIN_ID"] = json!(null);
        assert_eq!(
            ChatActivity::from_bitrix(&bare, msk()),
            Err(ChatParseError::MissingSession(30011))
        );
    }

    #[test]
    fn history_roles_order_and_files() {
        let h = json!({"chatId": 77, "sessionId": 517,
            "message": {
                "10001": {"id": 10001, "senderid": "900", "date": "2026-03-02T10:00:30+03:00", "text": "[b]Здравствуйте[/b]", "params": []},
                "9999": {"id": 9999, "senderid": "0", "date": "2026-03-02T10:00:00+03:00", "text": "Обращение принято", "params": []},
                "10000": {"id": 10000, "senderid": "1001", "date": "2026-03-02T10:00:10+03:00", "text": "", "params": {"FILE_ID": ["55"]}},
                "10002": {"id": 10002, "senderid": "5", "date": "2026-03-02T10:01:00+03:00", "text": "Чем помочь?", "params": []}},
            "users": {"1001": {"id": 1001, "name": "Гость", "connector": true, "bot": false},
                      "900": {"id": 900, "firstName": "Бот", "lastName": "Помощник", "externalAuthId": "bot"},
                      "5": {"id": 5, "name": "Анна Петрова", "bot": false, "connector": false}},
            "chat": {"77": {"id": 77, "entityId": "livechat|1|77|1001", "entityData1": "Y|LEAD|9|N|N|517|1772434800|1"}},
            "files": {"55": {"id": 55, "name": "счёт.pdf", "type": "file"}}});
        let h = ChatHistory::from_bitrix(&h, msk()).unwrap();
        let ids: Vec<u64> = h.messages.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            [9999, 10000, 10001, 10002],
            "numeric order, not the key order"
        );
        let roles: Vec<ChatRole> = h.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                ChatRole::System,
                ChatRole::Client,
                ChatRole::Bot,
                ChatRole::Operator
            ]
        );
        assert_eq!(h.messages[1].files, ["счёт.pdf"]);
        assert_eq!(h.messages[2].text, "Здравствуйте");
        assert_eq!(h.users[&900].name.as_deref(), Some("Бот Помощник"));
        assert_eq!(
            h.crm,
            Some(CrmRef {
                kind: CrmEntityType::Lead,
                id: 9
            })
        );
        assert_eq!(h.user_code.as_deref(), Some("livechat|1|77|1001"));
        let empty =
            ChatHistory::from_bitrix(&json!({"message": [], "users": [], "chat": []}), msk())
                .unwrap();
        assert!(empty.messages.is_empty());
        assert!(ChatHistory::from_bitrix(&json!([]), msk()).is_err());
    }
}

//! How a finished Open Lines session becomes a SpeechSense chat talk (`docs/mapping.md`, "Chats").
//!
//! - [`session`]: the session as Bitrix24 describes it ([`ChatActivity`] from `crm.activity.list`,
//!   [`ChatHistory`] from `imopenlines.session.history.get`), who wrote each message ([`ChatRole`]);
//! - [`bbcode`]: message text from BB-code to plain text;
//! - [`filter`]: which sessions qualify ([`ChatFilter`]);
//! - [`split`]: very long histories cut into parts that fit one request;
//! - here: [`chat_talks`], the `UploadText` metadata and messages, and the skip rules ([`ChatSkip`]).

pub mod bbcode;
pub mod filter;
pub mod session;
pub mod split;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::call::{CrmEntityType, CrmInfo, CrmRef, UserInfo};
use crate::mapping::{operator_name, truncate_utf8, TalkFields, DEFAULT_LANGUAGE, MAX_VALUE_BYTES};

pub use filter::ChatFilter;
pub use session::{
    ChatActivity, ChatHistory, ChatLine, ChatParseError, ChatRole, ChatSession, ChatUser,
};

/// One message of a chat talk: `Message{user_id, timestamp, text}` of `UploadText`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The talk's `operator_id`, `client_id` or `bot_id`.
    pub user_id: String,
    pub text: String,
    pub timestamp: DateTime<Utc>,
}

/// One `UploadText`: the metadata fields and the messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTalk {
    pub fields: TalkFields,
    pub messages: Vec<ChatMessage>,
}

/// How sessions are mapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatOptions {
    /// `language` of every talk; empty = [`DEFAULT_LANGUAGE`].
    pub language: String,
    /// Sessions with fewer client messages are skipped (at least 1: a session without the client is no dialog).
    pub min_client_messages: u32,
    /// The largest `UploadText` request ([`split::MAX_REQUEST_BYTES`]); longer histories are sent in parts.
    pub max_request_bytes: usize,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            language: DEFAULT_LANGUAGE.to_string(),
            min_client_messages: 1,
            max_request_bytes: split::MAX_REQUEST_BYTES,
        }
    }
}

/// Why a session is not uploaded although nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatSkipReason {
    /// `COMPLETED=N`: the session is still going on; it is uploaded once it closes.
    SessionOpen,
    /// The client wrote nothing (an operator's message nobody answered, a bot talking to itself).
    NoClientMessage,
    /// The client wrote fewer messages than the minimum.
    TooFewClientMessages,
}

impl ChatSkipReason {
    pub const ALL: [ChatSkipReason; 3] = [
        ChatSkipReason::SessionOpen,
        ChatSkipReason::NoClientMessage,
        ChatSkipReason::TooFewClientMessages,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChatSkipReason::SessionOpen => "session_open",
            ChatSkipReason::NoClientMessage => "no_client_message",
            ChatSkipReason::TooFewClientMessages => "too_few_client_messages",
        }
    }
}

impl std::str::FromStr for ChatSkipReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ChatSkipReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = ChatSkipReason::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown value {s:?}; expected one of: {}", names.join(", "))
            })
    }
}

impl std::fmt::Display for ChatSkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A skipped session with its reason and the count that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSkip {
    pub reason: ChatSkipReason,
    pub client_messages: usize,
    pub min_client_messages: u32,
}

impl std::fmt::Display for ChatSkip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            ChatSkipReason::SessionOpen => write!(f, "{}: the session is still open", self.reason),
            _ => write!(
                f,
                "{}: {} client message(s), at least {} wanted",
                self.reason, self.client_messages, self.min_client_messages
            ),
        }
    }
}

/// `KIND_ID`, the form of a call's `client_id` for a bound call (`CONTACT_42`).
pub fn crm_key(r: &CrmRef) -> String {
    format!("{}_{}", r.kind.as_str(), r.id)
}

/// A CRM record's display name by the call rules: contact → name; company/deal → title; lead → title, else name.
fn crm_display_name(c: &CrmInfo) -> Option<String> {
    let clean = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let person = [clean(&c.name), clean(&c.last_name)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let person = (!person.is_empty()).then_some(person);
    match c.entity.kind {
        CrmEntityType::Contact => person,
        CrmEntityType::Company | CrmEntityType::Deal => clean(&c.title),
        CrmEntityType::Lead | CrmEntityType::Other(_) => clean(&c.title).or(person),
    }
}

/// The session's CRM binding: the activity's owner, else the chat's `entityData1`.
pub fn session_crm(s: &ChatSession) -> Option<CrmRef> {
    s.activity.crm.clone().or_else(|| s.history.crm.clone())
}

/// The text sent for one message: its plain text, then one `📎 name` line per attached file.
fn message_text(line: &ChatLine) -> String {
    let mut text = line.text.clone();
    for f in &line.files {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str("📎 ");
        text.push_str(f);
    }
    text
}

/// Maps one session to its `UploadText` talk(s) — one, or consecutive parts for a history too long for one
/// request — or says why it is skipped. `operator` is `user.get`'s answer for the responsible operator (the
/// history's own user list is preferred), `client` the CRM lookup of [`session_crm`].
pub fn chat_talks(
    s: &ChatSession,
    operator: Option<&UserInfo>,
    client: Option<&CrmInfo>,
    opts: &ChatOptions,
) -> Result<Vec<ChatTalk>, ChatSkip> {
    let h = &s.history;
    let a = &s.activity;
    let kept: Vec<(&ChatLine, String)> = h
        .messages
        .iter()
        .filter(|m| m.role != ChatRole::System)
        .map(|m| (m, message_text(m)))
        .filter(|(_, t)| !t.trim().is_empty())
        .collect();
    let count = |r: ChatRole| kept.iter().filter(|(m, _)| m.role == r).count();
    let clients = count(ChatRole::Client);
    let min = opts.min_client_messages.max(1);
    let skip = |reason| ChatSkip {
        reason,
        client_messages: clients,
        min_client_messages: min,
    };
    if !a.completed {
        return Err(skip(ChatSkipReason::SessionOpen));
    }
    if clients == 0 {
        return Err(skip(ChatSkipReason::NoClientMessage));
    }
    if clients < min as usize {
        return Err(skip(ChatSkipReason::TooFewClientMessages));
    }
    let user = |id: u64| h.users.get(&id);
    let first_author = |r: ChatRole| {
        kept.iter()
            .find(|(m, _)| m.role == r)
            .map(|(m, _)| m.author_id)
    };
    // The responsible operator, unless the activity names a bot or the client; then the first operator who wrote.
    let operator_id = a
        .responsible_id
        .filter(|id| user(*id).is_none_or(|u| !u.bot && !u.connector))
        .or_else(|| first_author(ChatRole::Operator));
    let op_name = match operator_id {
        Some(id) => user(id)
            .and_then(|u| u.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| operator_name(Some(id), operator.filter(|u| u.id == id))),
        None => String::new(),
    };
    let bot_id = first_author(ChatRole::Bot);
    let crm = session_crm(s);
    let user_code = a.user_code.clone().or_else(|| h.user_code.clone());
    let client_id = match (&crm, &user_code, h.chat_id) {
        (Some(r), _, _) => crm_key(r),
        (None, Some(code), _) => format!("imol|{code}"),
        (None, None, Some(chat)) => format!("chat{chat}"),
        (None, None, None) => format!("session_{}", a.session_id),
    };
    let connector_user = first_author(ChatRole::Client)
        .and_then(user)
        .and_then(|u| u.name.clone());
    let client_name = client
        .filter(|c| crm.as_ref() == Some(&c.entity))
        .and_then(crm_display_name)
        .or(connector_user)
        .unwrap_or_else(|| client_id.clone());
    let first_human = kept
        .iter()
        .find(|(m, _)| matches!(m.role, ChatRole::Operator | ChatRole::Client));
    let outgoing = first_human.is_some_and(|(m, _)| m.role == ChatRole::Operator);
    let operators: Vec<String> = {
        let mut seen = BTreeSet::new();
        kept.iter()
            .filter(|(m, _)| m.role == ChatRole::Operator && seen.insert(m.author_id))
            .map(|(m, _)| m.author_id.to_string())
            .collect()
    };
    let id_text = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    let language = opts.language.trim();
    let mut fields = TalkFields::new();
    let mut put = |k: &str, v: String| {
        fields.insert(k.to_string(), v);
    };
    put("operator_id", id_text(operator_id));
    put("operator_name", op_name);
    put("client_id", client_id.clone());
    put("client_name", client_name);
    put("bot_id", id_text(bot_id));
    put(
        "bot_name",
        bot_id
            .and_then(user)
            .and_then(|u| u.name.clone())
            .unwrap_or_default(),
    );
    put("date", a.start.to_rfc3339());
    put("direction_outgoing", outgoing.to_string());
    put(
        "language",
        if language.is_empty() {
            DEFAULT_LANGUAGE
        } else {
            language
        }
        .to_string(),
    );
    put(
        "ticket_id",
        crm.as_ref().map(crm_key).unwrap_or(client_id.clone()),
    );
    put("id", a.session_id.to_string());
    put("session_id", a.session_id.to_string());
    put("chat_id", id_text(h.chat_id));
    put("line_id", a.line_id.clone().unwrap_or_default());
    put("connector", a.connector.clone().unwrap_or_default());
    put("user_code", user_code.unwrap_or_default());
    put(
        "crm_entity_type",
        crm.as_ref()
            .map(|r| r.kind.as_str().to_string())
            .unwrap_or_default(),
    );
    put("crm_entity_id", id_text(crm.as_ref().map(|r| r.id)));
    put("crm_activity_id", a.activity_id.to_string());
    put(
        "session_end",
        a.end.map(|e| e.to_rfc3339()).unwrap_or_default(),
    );
    put("operator_ids", operators.join(","));
    put("message_count", kept.len().to_string());
    put("client_message_count", clients.to_string());
    put(
        "operator_message_count",
        count(ChatRole::Operator).to_string(),
    );
    put("bot_message_count", count(ChatRole::Bot).to_string());
    let system = h
        .messages
        .iter()
        .filter(|m| m.role == ChatRole::System)
        .count();
    put("system_message_count", system.to_string());
    put(
        "file_count",
        kept.iter()
            .map(|(m, _)| m.files.len())
            .sum::<usize>()
            .to_string(),
    );
    for v in fields.values_mut() {
        truncate_utf8(v, MAX_VALUE_BYTES);
    }
    let ids = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let (op_key, client_key, bot_key) = (ids("operator_id"), ids("client_id"), ids("bot_id"));
    let mut last = a.start.to_utc();
    let messages: Vec<ChatMessage> = kept
        .into_iter()
        .map(|(m, text)| {
            // A message without a readable date takes the previous one's (or the session start).
            let timestamp = m.date.map(|d| d.to_utc()).unwrap_or(last);
            last = timestamp;
            let user_id = match m.role {
                ChatRole::Client => client_key.clone(),
                ChatRole::Bot => bot_key.clone(),
                _ => op_key.clone(),
            };
            ChatMessage {
                user_id,
                text,
                timestamp,
            }
        })
        .collect();
    // `part`/`parts` are in every talk, so the cost is counted with them.
    let cost = split::fields_bytes(&fields) + 40;
    let parts = split::split_messages(messages, cost, opts.max_request_bytes);
    let n = parts.len();
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, messages)| {
            let mut fields = fields.clone();
            fields.insert("part".into(), (i + 1).to_string());
            fields.insert("parts".into(), n.to_string());
            ChatTalk { fields, messages }
        })
        .collect())
}

#[cfg(test)]
mod tests;

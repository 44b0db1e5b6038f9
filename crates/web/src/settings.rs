//! A portal's settings, the one place they are read and validated: the page's form as typed
//! ([`SettingsForm`] → [`read_form`]), the stored settings turned into what the engine takes ([`plan`], also
//! run before every export), and the fields "Check connection" needs ([`check_form`]). Errors are
//! `field → message` in the page's language, shown next to the fields.

use std::collections::BTreeMap;

use b24sense_core::chat::ChatFilter;
use b24sense_core::{CallFilter, CallType, MonoPolicy, TimeBound};
use b24sense_speechsense::SearchScope;
use b24sense_store::PortalSettings;
use secrecy::SecretString;
use serde::Deserialize;

use crate::i18n::{Lang, Msg};

/// `field → message`.
pub type FieldErrors = BTreeMap<String, String>;

/// What the form sends (strings, as typed).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct SettingsForm {
    pub connection_id: String,
    /// The chat connection (Open Lines sessions); empty = chats are not exported.
    pub chat_connection_id: String,
    /// Empty = keep the stored key.
    pub api_key: String,
    pub language: String,
    pub since: String,
    pub users: String,
    pub min_duration: String,
    pub direction: Vec<String>,
    pub mono_policy: String,
    pub mono_route: String,
    pub organization_id: String,
    pub space_id: String,
    pub project_id: String,
    pub sync_enabled: bool,
    /// Save even though SpeechSense refused the key or the connection (the administrator confirmed it).
    pub save_anyway: bool,
}

/// The trimmed value, `None` when empty.
pub fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn add(errors: &mut FieldErrors, field: &str, msg: Msg, lang: Lang) {
    errors.insert(field.to_string(), msg.text(lang).to_string());
}

/// Parses and validates the form (`has_key`: a key is stored already, so the form may leave it empty).
pub fn read_form(
    f: &SettingsForm,
    lang: Lang,
    has_key: bool,
) -> Result<(PortalSettings, Option<SecretString>), FieldErrors> {
    let mut errors = FieldErrors::new();
    let users = b24sense_core::filter::parse_user_ids("users", &f.users).unwrap_or_else(|_| {
        add(&mut errors, "users", Msg::BadUsers, lang);
        Vec::new()
    });
    let min_duration = match f.min_duration.trim() {
        "" => 0,
        v => v.parse::<u64>().unwrap_or_else(|_| {
            add(&mut errors, "min_duration", Msg::BadMinDuration, lang);
            0
        }),
    };
    let mono_policy = match f.mono_policy.trim() {
        "route" => format!("route:{}", f.mono_route.trim()),
        "" => "upload".to_string(),
        other => other.to_string(),
    };
    let settings = PortalSettings {
        connection_id: f.connection_id.trim().to_string(),
        chat_connection_id: opt(&f.chat_connection_id),
        language: opt(&f.language).unwrap_or_else(|| "ru-RU".into()),
        since: opt(&f.since),
        users,
        min_duration,
        direction: f
            .direction
            .iter()
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect(),
        mono_policy,
        organization_id: opt(&f.organization_id),
        space_id: opt(&f.space_id),
        project_id: opt(&f.project_id),
        sync_enabled: f.sync_enabled,
        // Set by the save from what was stored.
        sync_since: None,
    };
    // The settings' own rules; a field the form could not even parse keeps that message.
    if let Err(more) = plan(&settings, lang) {
        for (k, v) in more {
            let field = if k == "mono_policy" && f.mono_policy.trim() == "route" {
                "mono_route".into()
            } else {
                k
            };
            errors.entry(field).or_insert(v);
        }
    }
    let api_key = opt(&f.api_key).map(SecretString::from);
    if api_key.is_none() && !has_key {
        add(&mut errors, "api_key", Msg::EnterApiKey, lang);
    }
    if errors.is_empty() {
        Ok((settings, api_key))
    } else {
        Err(errors)
    }
}

/// What "Check connection" needs from the form.
pub struct CheckForm {
    pub connection_id: String,
    /// Checked too when filled.
    pub chat_connection_id: Option<String>,
    /// Typed, else the stored one.
    pub key: SecretString,
}

/// What "Check connection" needs from the form: the connection IDs, and a key (typed, else `stored_key`).
pub fn check_form(
    f: &SettingsForm,
    lang: Lang,
    stored_key: Option<SecretString>,
) -> Result<CheckForm, FieldErrors> {
    let mut errors = FieldErrors::new();
    let connection_id = f.connection_id.trim().to_string();
    if connection_id.is_empty() {
        add(&mut errors, "connection_id", Msg::EnterConnectionId, lang);
    }
    let chat_connection_id = opt(&f.chat_connection_id);
    if let Some(msg) = chat_id_problem(&connection_id, chat_connection_id.as_deref()) {
        add(&mut errors, "chat_connection_id", msg, lang);
    }
    let key = opt(&f.api_key).map(SecretString::from).or(stored_key);
    match key {
        Some(key) if errors.is_empty() => Ok(CheckForm {
            connection_id,
            chat_connection_id,
            key,
        }),
        Some(_) => Err(errors),
        None => {
            add(&mut errors, "api_key", Msg::EnterApiKey, lang);
            Err(errors)
        }
    }
}

/// Validated settings turned into what the engine takes.
pub struct Plan {
    pub filter: CallFilter,
    pub mono: MonoPolicy,
    pub search: Option<SearchScope>,
    /// The chat connection and which sessions qualify (the calls' period and operators); `None`: no chats.
    pub chats: Option<(String, ChatFilter)>,
}

/// Whether a connection ID has only the characters an ID has.
fn id_chars_ok(id: &str) -> bool {
    id.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && id.len() <= 100
}

/// What is wrong with the chat connection ID, if anything (`None` also when it is not given).
fn chat_id_problem(connection_id: &str, chat: Option<&str>) -> Option<Msg> {
    let chat = chat.map(str::trim).filter(|c| !c.is_empty())?;
    if !id_chars_ok(chat) {
        Some(Msg::BadChatConnectionId)
    } else if chat == connection_id.trim() {
        Some(Msg::ChatSameAsCalls)
    } else {
        None
    }
}

/// Field-level validation of stored settings, and the engine's view of them.
pub fn plan(s: &PortalSettings, lang: Lang) -> Result<Plan, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut err = |field: &str, msg: Msg| add(&mut errors, field, msg, lang);
    if s.connection_id.trim().is_empty() {
        err("connection_id", Msg::EnterConnectionId);
    } else if !id_chars_ok(&s.connection_id) {
        err("connection_id", Msg::BadConnectionId);
    }
    if let Some(msg) = chat_id_problem(&s.connection_id, s.chat_connection_id.as_deref()) {
        err("chat_connection_id", msg);
    }
    let lang_ok = {
        let l = s.language.trim();
        l.len() == 5
            && l.as_bytes()[2] == b'-'
            && l[..2].chars().all(|c| c.is_ascii_lowercase())
            && l[3..].chars().all(|c| c.is_ascii_uppercase())
    };
    if !lang_ok {
        err("language", Msg::BadLanguage);
    }
    let since = match s.since.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match TimeBound::parse("since", v) {
            Ok(t) => Some(t),
            Err(_) => {
                err("since", Msg::BadSince);
                None
            }
        },
    };
    if s.min_duration > 86_400 {
        err("min_duration", Msg::MinDurationTooLong);
    }
    let mut call_types = Vec::new();
    for d in &s.direction {
        match CallType::parse_name(d) {
            Some(t) => call_types.push(t),
            None => err("direction", Msg::BadDirection),
        }
    }
    let mono = MonoPolicy::parse(&s.mono_policy);
    if mono.is_none() {
        err("mono_policy", Msg::ChooseMonoPolicy);
    }
    let ids = [&s.organization_id, &s.space_id, &s.project_id];
    let given = ids
        .iter()
        .filter(|v| v.as_deref().is_some_and(|v| !v.trim().is_empty()))
        .count();
    if given != 0 && given != 3 {
        for (f, v) in ["organization_id", "space_id", "project_id"]
            .iter()
            .zip(ids)
        {
            if v.as_deref().is_none_or(|v| v.trim().is_empty()) {
                err(f, Msg::DupesNeedAllIds);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let get = |v: &Option<String>| v.as_deref().unwrap_or_default().trim().to_string();
    let chats = s
        .chat_connection_id
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let filter = ChatFilter {
                since,
                operators: s.users.clone(),
                ..ChatFilter::default()
            };
            (c.to_string(), filter)
        });
    Ok(Plan {
        chats,
        filter: CallFilter {
            since,
            users: s.users.clone(),
            min_duration: s.min_duration,
            call_types,
            ..CallFilter::default()
        },
        mono: mono.unwrap_or_default(),
        search: (given == 3).then(|| SearchScope {
            organization_id: get(&s.organization_id),
            space_id: get(&s.space_id),
            project_id: get(&s.project_id),
            connection_id: s.connection_id.trim().to_string(),
        }),
    })
}

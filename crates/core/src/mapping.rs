//! How a Bitrix24 call becomes SpeechSense talk metadata (`docs/mapping.md`, "One call → one talk").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::call::{Call, CrmEntityType, CrmInfo, UserInfo};

/// `TalkMetadata.fields`: a flat map of strings, each value at most [`MAX_VALUE_BYTES`].
pub type TalkFields = BTreeMap<String, String>;

/// SpeechSense's limit on one metadata value.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The recognition language when the portal sets none.
pub const DEFAULT_LANGUAGE: &str = "ru-RU";

/// What to do with a one-channel recording when the connection expects two channels.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonoPolicy {
    /// Upload it anyway (as the official app does) and count it as `mono` in the report.
    #[default]
    Upload,
    /// Skip it with reason `mono_recording`.
    Skip,
    /// Upload it to this one-channel connection instead.
    Route(String),
}

impl MonoPolicy {
    /// `upload`, `skip` or `route:<connection id>`.
    pub fn parse(s: &str) -> Option<MonoPolicy> {
        let s = s.trim();
        match s {
            "upload" => Some(MonoPolicy::Upload),
            "skip" => Some(MonoPolicy::Skip),
            _ => s
                .strip_prefix("route:")
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(|id| MonoPolicy::Route(id.to_string())),
        }
    }
}

/// `NAME LAST_NAME`, trimmed; `None` when both are empty.
fn full_name(name: Option<&str>, last_name: Option<&str>) -> Option<String> {
    let joined = [name, last_name]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let s = joined.collect::<Vec<_>>().join(" ");
    (!s.is_empty()).then_some(s)
}

/// `operator_name`: the user's `NAME LAST_NAME`, or `user <id>` when the user cannot be read.
pub fn operator_name(user_id: Option<u64>, user: Option<&UserInfo>) -> String {
    user.and_then(|u| full_name(u.name.as_deref(), u.last_name.as_deref()))
        .or_else(|| user_id.map(|id| format!("user {id}")))
        .unwrap_or_default()
}

/// `client_name`: contact → name; company/deal → title; lead → title, else its name; otherwise the phone number.
pub fn client_name(call: &Call, crm: Option<&CrmInfo>) -> String {
    let from_crm = crm.and_then(|c| {
        let title = c
            .title
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from);
        let person = full_name(c.name.as_deref(), c.last_name.as_deref());
        match c.entity.kind {
            CrmEntityType::Contact => person,
            CrmEntityType::Company | CrmEntityType::Deal => title,
            CrmEntityType::Lead => title.or(person),
            CrmEntityType::Other(_) => title.or(person),
        }
    });
    from_crm
        .or_else(|| call.phone_number.clone())
        .unwrap_or_default()
}

/// `client_id`: `CONTACT_42` when the call is bound to a CRM record, else the phone number.
pub fn client_id(call: &Call) -> String {
    match call.crm_ref() {
        Some(r) => format!("{}_{}", r.kind.as_str(), r.id),
        None => call.phone_number.clone().unwrap_or_default(),
    }
}

/// Cuts `s` to at most `max` bytes on a UTF-8 character boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// Builds `TalkMetadata.fields` for one call: the seven standard keys plus the 28 call-history keys.
/// `operator`/`client` are what `user.get` and the CRM lookups returned (or `None` when they could not be read).
pub fn talk_fields(
    call: &Call,
    operator: Option<&UserInfo>,
    client: Option<&CrmInfo>,
    language: &str,
) -> TalkFields {
    let mut fields = TalkFields::new();
    for (k, v) in call.history.fields() {
        fields.insert(k.to_string(), v.to_string());
    }
    fields.insert("operator_id".into(), opt(&call.portal_user_id));
    fields.insert(
        "operator_name".into(),
        operator_name(call.portal_user_id, operator),
    );
    fields.insert("client_id".into(), client_id(call));
    fields.insert("client_name".into(), client_name(call, client));
    fields.insert("date".into(), call.call_start_date.to_rfc3339());
    fields.insert(
        "direction_outgoing".into(),
        call.call_type.is_outgoing().to_string(),
    );
    let language = if language.trim().is_empty() {
        DEFAULT_LANGUAGE
    } else {
        language.trim()
    };
    fields.insert("language".into(), language.to_string());
    for v in fields.values_mut() {
        truncate_utf8(v, MAX_VALUE_BYTES);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CrmRef;
    use chrono::FixedOffset;
    use serde_json::json;

    fn call() -> Call {
        call_from(row())
    }

    fn call_from(row: serde_json::Value) -> Call {
        Call::from_bitrix(&row, FixedOffset::east_opt(3 * 3600).unwrap()).unwrap()
    }

    fn row() -> serde_json::Value {
        json!({"ID":"7","PORTAL_USER_ID":"12","PORTAL_NUMBER":"reg1234","PHONE_NUMBER":"+79001234567",
         "CALL_ID":"AB12.1754478570.1","EXTERNAL_CALL_ID":null,"CALL_CATEGORY":"external",
         "CALL_DURATION":"95","CALL_START_DATE":"2025-04-24T14:34:19+03:00","CALL_RECORD_URL":"",
         "COST":"0.0000","COST_CURRENCY":"RUR","CALL_FAILED_CODE":"200","CALL_FAILED_REASON":"",
         "CRM_ENTITY_TYPE":"CONTACT","CRM_ENTITY_ID":"797","CRM_ACTIVITY_ID":"7943",
         "TRANSCRIPT_PENDING":"N","SESSION_ID":"3841557776","RECORD_FILE_ID":9079,"CALL_TYPE":"4"})
    }

    #[test]
    fn standard_keys() {
        let c = call();
        let user = UserInfo {
            id: 12,
            name: Some(" Anna ".into()),
            last_name: Some("Petrova".into()),
        };
        let crm = CrmInfo {
            entity: CrmRef {
                kind: CrmEntityType::Contact,
                id: 797,
            },
            title: None,
            name: Some("Ivan".into()),
            last_name: Some("Sidorov".into()),
        };
        let f = talk_fields(&c, Some(&user), Some(&crm), "");
        assert_eq!(f["operator_id"], "12");
        assert_eq!(f["operator_name"], "Anna Petrova");
        assert_eq!(f["client_id"], "CONTACT_797");
        assert_eq!(f["client_name"], "Ivan Sidorov");
        assert_eq!(f["date"], "2025-04-24T14:34:19+03:00");
        assert_eq!(
            f["direction_outgoing"], "true",
            "callback counts as outgoing"
        );
        assert_eq!(f["language"], "ru-RU");
        assert_eq!(f.len(), 35, "7 standard keys + 28 call-history keys");
        assert_eq!(f["record_file_id"], "9079");
        assert_eq!(f["call_record_url"], "", "null/empty → empty string");
        assert_eq!(f["external_call_id"], "");
        assert_eq!(f["transcript_pending"], "N");
        assert_eq!(f["call_type"], "4");
    }

    #[test]
    fn fallbacks_when_lookups_fail() {
        let mut c = call();
        assert_eq!(
            talk_fields(&c, None, None, "kk-KZ")["operator_name"],
            "user 12"
        );
        assert_eq!(
            talk_fields(&c, None, None, "kk-KZ")["client_name"],
            "+79001234567"
        );
        assert_eq!(talk_fields(&c, None, None, "kk-KZ")["language"], "kk-KZ");
        c.crm_entity_type = None;
        assert_eq!(client_id(&c), "+79001234567");
    }

    #[test]
    fn crm_name_rules() {
        let c = call();
        let mk = |kind, title: Option<&str>, name: Option<&str>| CrmInfo {
            entity: CrmRef { kind, id: 1 },
            title: title.map(Into::into),
            name: name.map(Into::into),
            last_name: None,
        };
        assert_eq!(
            client_name(
                &c,
                Some(&mk(CrmEntityType::Company, Some("ООО Ромашка"), None))
            ),
            "ООО Ромашка"
        );
        assert_eq!(
            client_name(&c, Some(&mk(CrmEntityType::Lead, Some(""), Some("Олег")))),
            "Олег"
        );
        assert_eq!(
            client_name(
                &c,
                Some(&mk(CrmEntityType::Lead, Some("Заявка"), Some("Олег")))
            ),
            "Заявка"
        );
        assert_eq!(
            client_name(&c, Some(&mk(CrmEntityType::Deal, Some("Сделка"), None))),
            "Сделка"
        );
        assert_eq!(
            client_name(&c, Some(&mk(CrmEntityType::Contact, None, None))),
            "+79001234567"
        );
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let mut row = row();
        row["COMMENT"] = json!("я".repeat(600)); // 1200 bytes
        let f = talk_fields(&call_from(row), None, None, "ru-RU");
        assert_eq!(f["comment"].len(), 1024);
        assert!(f["comment"].chars().all(|ch| ch == 'я'));
        let mut s = "aя".repeat(10);
        truncate_utf8(&mut s, 4);
        assert_eq!(s, "aяa");
    }

    #[test]
    fn call_history_values_are_the_portals_own_text() {
        let mut row = row();
        row["CALL_VOTE"] = json!("0");
        row["REDIAL_ATTEMPT"] = json!(0);
        row["REST_APP_ID"] = json!("0");
        row["TRANSCRIPT_ID"] = json!(null);
        row["COMMENT"] = json!(" spaced ");
        row.as_object_mut().unwrap().remove("RECORD_DURATION");
        let f = talk_fields(&call_from(row), None, None, "ru-RU");
        let cases = [
            ("call_vote", "0", "\"0\" stays \"0\""),
            ("redial_attempt", "0", "a JSON 0 is rendered"),
            ("rest_app_id", "0", "an ID of \"0\" is the portal's value"),
            ("transcript_id", "", "null becomes \"\""),
            ("record_duration", "", "an absent field becomes \"\""),
            ("comment", " spaced ", "text is not trimmed"),
            ("record_file_id", "9079", "a JSON number is rendered"),
            ("cost", "0.0000", "as sent"),
            ("call_start_date", "2025-04-24T14:34:19+03:00", "as sent"),
            ("session_id", "3841557776", "as sent"),
        ];
        for (key, want, why) in cases {
            assert_eq!(f[key], want, "{key}: {why}");
        }
        let keys = crate::call::CALL_HISTORY_KEYS;
        assert!(keys.iter().all(|(_, key)| f.contains_key(*key)));
    }

    #[test]
    fn mono_policy_parsing() {
        assert_eq!(MonoPolicy::parse("skip"), Some(MonoPolicy::Skip));
        assert_eq!(
            MonoPolicy::parse("route:abc"),
            Some(MonoPolicy::Route("abc".into()))
        );
        assert_eq!(MonoPolicy::parse("route:"), None);
        assert_eq!(MonoPolicy::parse("drop"), None);
    }
}

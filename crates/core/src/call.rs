//! A Bitrix24 telephony call (one row of `voximplant.statistic.get`) and the people it refers to.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lenient;

/// `CALL_TYPE`: 1 outgoing, 2 incoming, 3 incoming redirected, 4 callback, 5 info (robot) call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u64", from = "u64")]
pub enum CallType {
    Outgoing,
    Incoming,
    IncomingRedirected,
    Callback,
    Info,
    Other(u64),
}

impl CallType {
    pub fn code(self) -> u64 {
        match self {
            CallType::Outgoing => 1,
            CallType::Incoming => 2,
            CallType::IncomingRedirected => 3,
            CallType::Callback => 4,
            CallType::Info => 5,
            CallType::Other(n) => n,
        }
    }

    /// Operator-initiated: outgoing calls and callbacks (`docs/mapping.md`, `direction_outgoing`).
    pub fn is_outgoing(self) -> bool {
        matches!(self, CallType::Outgoing | CallType::Callback)
    }

    /// The direction names the settings form and CLI accept.
    pub fn parse_name(s: &str) -> Option<CallType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "outgoing" | "out" | "1" => Some(CallType::Outgoing),
            "incoming" | "in" | "2" => Some(CallType::Incoming),
            "redirected" | "incoming-redirected" | "3" => Some(CallType::IncomingRedirected),
            "callback" | "4" => Some(CallType::Callback),
            "info" | "5" => Some(CallType::Info),
            _ => None,
        }
    }
}

impl From<u64> for CallType {
    fn from(n: u64) -> Self {
        match n {
            1 => CallType::Outgoing,
            2 => CallType::Incoming,
            3 => CallType::IncomingRedirected,
            4 => CallType::Callback,
            5 => CallType::Info,
            n => CallType::Other(n),
        }
    }
}

impl From<CallType> for u64 {
    fn from(t: CallType) -> u64 {
        t.code()
    }
}

/// `CRM_ENTITY_TYPE` of a call, or the kind of a CRM record looked up for a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CrmEntityType {
    Contact,
    Company,
    Lead,
    Deal,
    Other(String),
}

impl CrmEntityType {
    pub fn parse(s: &str) -> CrmEntityType {
        match s.trim().to_ascii_uppercase().as_str() {
            "CONTACT" => CrmEntityType::Contact,
            "COMPANY" => CrmEntityType::Company,
            "LEAD" => CrmEntityType::Lead,
            "DEAL" => CrmEntityType::Deal,
            other => CrmEntityType::Other(other.to_string()),
        }
    }

    /// The wire name (`CONTACT`, …).
    pub fn as_str(&self) -> &str {
        match self {
            CrmEntityType::Contact => "CONTACT",
            CrmEntityType::Company => "COMPANY",
            CrmEntityType::Lead => "LEAD",
            CrmEntityType::Deal => "DEAL",
            CrmEntityType::Other(s) => s,
        }
    }
}

/// A CRM record a call is bound to, e.g. `CONTACT 42`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CrmRef {
    pub kind: CrmEntityType,
    pub id: u64,
}

/// A Bitrix24 user as `user.get` describes them (only what the mapping needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: u64,
    pub name: Option<String>,
    pub last_name: Option<String>,
}

/// A CRM record's naming fields (contact/lead: NAME + LAST_NAME; company/deal/lead: TITLE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmInfo {
    pub entity: CrmRef,
    pub title: Option<String>,
    pub name: Option<String>,
    pub last_name: Option<String>,
}

/// The 28 call-history fields of the official connection template: the portal's name and the talk's key.
pub const CALL_HISTORY_KEYS: [(&str, &str); 28] = [
    ("ID", "id"),
    ("PORTAL_USER_ID", "portal_user_id"),
    ("PORTAL_NUMBER", "portal_number"),
    ("PHONE_NUMBER", "phone_number"),
    ("CALL_ID", "call_id"),
    ("EXTERNAL_CALL_ID", "external_call_id"),
    ("CALL_CATEGORY", "call_category"),
    ("CALL_DURATION", "call_duration"),
    ("CALL_START_DATE", "call_start_date"),
    ("CALL_RECORD_URL", "call_record_url"),
    ("CALL_VOTE", "call_vote"),
    ("COST", "cost"),
    ("COST_CURRENCY", "cost_currency"),
    ("CALL_FAILED_CODE", "call_failed_code"),
    ("CALL_FAILED_REASON", "call_failed_reason"),
    ("CRM_ENTITY_TYPE", "crm_entity_type"),
    ("CRM_ENTITY_ID", "crm_entity_id"),
    ("CRM_ACTIVITY_ID", "crm_activity_id"),
    ("REST_APP_ID", "rest_app_id"),
    ("REST_APP_NAME", "rest_app_name"),
    ("TRANSCRIPT_ID", "transcript_id"),
    ("TRANSCRIPT_PENDING", "transcript_pending"),
    ("SESSION_ID", "session_id"),
    ("REDIAL_ATTEMPT", "redial_attempt"),
    ("COMMENT", "comment"),
    ("RECORD_DURATION", "record_duration"),
    ("RECORD_FILE_ID", "record_file_id"),
    ("CALL_TYPE", "call_type"),
];

/// The portal's own values of the 28 call-history fields (in [`CALL_HISTORY_KEYS`] order), as text.
///
/// Why raw: the typed fields of [`Call`] read "no value" leniently (`"0"` is no vote, no file), which is right for
/// the engine's decisions but not for the talk's metadata, where users filter on what the portal said: `"0"` stays
/// `"0"`, and only `null` or an absent field becomes `""`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallHistory([String; 28]);

impl CallHistory {
    /// Reads the 28 fields of one row: strings as they are, numbers and booleans rendered, `null`/absent → `""`.
    pub fn from_row(row: &serde_json::Map<String, Value>) -> CallHistory {
        CallHistory(CALL_HISTORY_KEYS.map(|(name, _)| {
            row.get(name)
                .and_then(lenient::value_to_text)
                .unwrap_or_default()
        }))
    }

    /// `(talk key, portal value)` pairs in template order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        CALL_HISTORY_KEYS
            .iter()
            .zip(&self.0)
            .map(|((_, key), value)| (*key, value.as_str()))
    }
}

/// One row of the call history with all its fields, typed. Absent values are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub id: u64,
    pub portal_user_id: Option<u64>,
    pub portal_number: Option<String>,
    pub phone_number: Option<String>,
    pub call_id: String,
    pub external_call_id: Option<String>,
    pub call_category: Option<String>,
    pub call_log: Option<String>,
    pub call_duration: u64,
    pub call_start_date: DateTime<FixedOffset>,
    pub call_record_url: Option<String>,
    pub call_vote: Option<u64>,
    pub cost: Option<String>,
    pub cost_currency: Option<String>,
    pub call_failed_code: Option<String>,
    pub call_failed_reason: Option<String>,
    pub crm_entity_type: Option<CrmEntityType>,
    pub crm_entity_id: Option<u64>,
    pub crm_activity_id: Option<u64>,
    pub rest_app_id: Option<u64>,
    pub rest_app_name: Option<String>,
    pub transcript_id: Option<u64>,
    pub transcript_pending: Option<bool>,
    pub session_id: Option<String>,
    pub redial_attempt: Option<u64>,
    pub comment: Option<String>,
    pub record_duration: Option<u64>,
    pub record_file_id: Option<u64>,
    pub call_type: CallType,
    /// The 28 call-history fields exactly as the portal sent them (rows stored before this field read as empty).
    #[serde(default)]
    pub history: CallHistory,
}

/// Why a call-history row could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallParseError {
    #[error("call row is not a JSON object")]
    NotAnObject,
    #[error("call row has no usable ID")]
    MissingId,
    #[error("call {id}: CALL_START_DATE {value:?} is not an ISO-8601 date-time")]
    BadStartDate { id: u64, value: String },
}

impl Call {
    /// Reads one `voximplant.statistic.get` row. `portal_offset` is used for a `CALL_START_DATE` without an offset
    /// (the portal writes its own time zone's offset, but older rows and external PBXs sometimes omit it).
    pub fn from_bitrix(row: &Value, portal_offset: FixedOffset) -> Result<Call, CallParseError> {
        let obj = row.as_object().ok_or(CallParseError::NotAnObject)?;
        let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
        let id = lenient::id(get("ID")).ok_or(CallParseError::MissingId)?;
        let raw_date = lenient::text(get("CALL_START_DATE")).unwrap_or_default();
        let call_start_date = parse_datetime(&raw_date, portal_offset).ok_or_else(|| {
            CallParseError::BadStartDate {
                id,
                value: raw_date.clone(),
            }
        })?;
        Ok(Call {
            id,
            portal_user_id: lenient::id(get("PORTAL_USER_ID")),
            portal_number: lenient::text(get("PORTAL_NUMBER")),
            phone_number: lenient::text(get("PHONE_NUMBER")),
            call_id: lenient::text(get("CALL_ID")).unwrap_or_default(),
            external_call_id: lenient::text(get("EXTERNAL_CALL_ID")),
            call_category: lenient::text(get("CALL_CATEGORY")),
            call_log: lenient::text(get("CALL_LOG")),
            call_duration: lenient::number(get("CALL_DURATION")).unwrap_or(0),
            call_start_date,
            call_record_url: lenient::text(get("CALL_RECORD_URL")),
            call_vote: lenient::id(get("CALL_VOTE")),
            cost: lenient::text(get("COST")),
            cost_currency: lenient::text(get("COST_CURRENCY")),
            call_failed_code: lenient::text(get("CALL_FAILED_CODE")),
            call_failed_reason: lenient::text(get("CALL_FAILED_REASON")),
            crm_entity_type: lenient::text(get("CRM_ENTITY_TYPE"))
                .map(|s| CrmEntityType::parse(&s)),
            crm_entity_id: lenient::id(get("CRM_ENTITY_ID")),
            crm_activity_id: lenient::id(get("CRM_ACTIVITY_ID")),
            rest_app_id: lenient::id(get("REST_APP_ID")),
            rest_app_name: lenient::text(get("REST_APP_NAME")),
            transcript_id: lenient::id(get("TRANSCRIPT_ID")),
            transcript_pending: lenient::flag(get("TRANSCRIPT_PENDING")),
            session_id: lenient::text(get("SESSION_ID")).filter(|s| s != "0"),
            redial_attempt: lenient::number(get("REDIAL_ATTEMPT")),
            comment: lenient::text(get("COMMENT")),
            record_duration: lenient::number(get("RECORD_DURATION")),
            record_file_id: lenient::id(get("RECORD_FILE_ID")),
            call_type: CallType::from(lenient::number(get("CALL_TYPE")).unwrap_or(0)),
            history: CallHistory::from_row(obj),
        })
    }

    /// The CRM record this call is bound to, when it has both a type and an id.
    pub fn crm_ref(&self) -> Option<CrmRef> {
        match (&self.crm_entity_type, self.crm_entity_id) {
            (Some(kind), Some(id)) => Some(CrmRef {
                kind: kind.clone(),
                id,
            }),
            _ => None,
        }
    }

    /// Whether the portal has attached any recording yet (URL or Disk file).
    pub fn has_recording(&self) -> bool {
        self.call_record_url.is_some() || self.record_file_id.is_some()
    }

    /// Whether a recording may still be attached to this call: it was a conversation (`CALL_DURATION` > 0 and no
    /// failure code other than 200). A missed, busy or rejected call never gets one, so nothing waits for it
    /// (`docs/mapping.md`, "Late recordings").
    pub fn may_get_recording(&self) -> bool {
        self.call_duration > 0
            && self
                .call_failed_code
                .as_deref()
                .is_none_or(|c| c.trim().is_empty() || c.trim() == "200")
    }

    /// Best known length of the recording in seconds.
    pub fn recording_seconds(&self) -> u64 {
        self.record_duration
            .filter(|d| *d > 0)
            .unwrap_or(self.call_duration)
    }
}

/// ISO-8601 / RFC 3339 with offset; without an offset the value is read in `default_offset`.
pub fn parse_datetime(s: &str, default_offset: FixedOffset) -> Option<DateTime<FixedOffset>> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt);
    }
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z") {
        return Some(dt);
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return default_offset.from_local_datetime(&naive).single();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msk() -> FixedOffset {
        FixedOffset::east_opt(3 * 3600).unwrap()
    }

    /// A synthetic `voximplant.statistic.get` row, every field as the portal sends it.
    fn example_row() -> Value {
        json!({"ID":"7","PORTAL_USER_ID":"12","PORTAL_NUMBER":"reg1234","PHONE_NUMBER":"+79001234567",
         "CALL_ID":"AB12CD34EF56AB78.1754478570.11438214","EXTERNAL_CALL_ID":null,"CALL_CATEGORY":"external",
         "CALL_LOG":null,"CALL_DURATION":"95","CALL_START_DATE":"2026-03-10T11:19:38+03:00","CALL_RECORD_URL":"",
         "CALL_VOTE":null,"COST":"0.0000","COST_CURRENCY":"RUR","CALL_FAILED_CODE":"200","CALL_FAILED_REASON":"",
         "CRM_ENTITY_TYPE":"CONTACT","CRM_ENTITY_ID":"797","CRM_ACTIVITY_ID":"7943","REST_APP_ID":null,"REST_APP_NAME":null,
         "TRANSCRIPT_ID":null,"TRANSCRIPT_PENDING":"N","SESSION_ID":"3841557776","REDIAL_ATTEMPT":null,"COMMENT":null,
         "RECORD_DURATION":null,"RECORD_FILE_ID":9079,"CALL_TYPE":"2"})
    }

    #[test]
    fn parses_the_documented_example_row() {
        let c = Call::from_bitrix(&example_row(), msk()).unwrap();
        assert_eq!(c.id, 7);
        assert_eq!(c.portal_user_id, Some(12));
        assert_eq!(c.call_duration, 95);
        assert_eq!(c.call_record_url, None, "empty string means no URL");
        assert_eq!(
            c.record_file_id,
            Some(9079),
            "RECORD_FILE_ID arrives as a JSON number"
        );
        assert_eq!(
            c.crm_ref(),
            Some(CrmRef {
                kind: CrmEntityType::Contact,
                id: 797
            })
        );
        assert_eq!(c.call_type, CallType::Incoming);
        assert_eq!(c.transcript_pending, Some(false));
        assert_eq!(c.call_start_date.to_rfc3339(), "2026-03-10T11:19:38+03:00");
        assert!(c.has_recording());
    }

    #[test]
    fn no_value_spellings_and_missing_offset() {
        let mut row = example_row();
        row["RECORD_FILE_ID"] = json!("0");
        row["CRM_ENTITY_ID"] = json!(false);
        row["PORTAL_USER_ID"] = json!(null);
        row["CALL_START_DATE"] = json!("2026-03-10 11:19:38");
        let c = Call::from_bitrix(&row, msk()).unwrap();
        assert_eq!(c.record_file_id, None);
        assert_eq!(c.crm_ref(), None);
        assert_eq!(c.portal_user_id, None);
        assert_eq!(c.call_start_date.to_rfc3339(), "2026-03-10T11:19:38+03:00");
        assert!(!c.has_recording());
    }

    #[test]
    fn rejects_rows_without_id_or_date() {
        let mut row = example_row();
        row["CALL_START_DATE"] = json!("yesterday");
        assert!(matches!(
            Call::from_bitrix(&row, msk()),
            Err(CallParseError::BadStartDate { id: 7, .. })
        ));
        row["ID"] = json!(null);
        assert_eq!(
            Call::from_bitrix(&row, msk()),
            Err(CallParseError::MissingId)
        );
        assert_eq!(
            Call::from_bitrix(&json!([]), msk()),
            Err(CallParseError::NotAnObject)
        );
    }

    #[test]
    fn serde_round_trip_keeps_everything() {
        let c = Call::from_bitrix(&example_row(), msk()).unwrap();
        let back: Call = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn call_types() {
        assert!(CallType::from(1).is_outgoing());
        assert!(CallType::from(4).is_outgoing());
        assert!(!CallType::from(2).is_outgoing());
        assert!(!CallType::from(3).is_outgoing());
        assert_eq!(CallType::parse_name("Callback"), Some(CallType::Callback));
        assert_eq!(CallType::parse_name("sideways"), None);
    }

    #[test]
    fn only_conversations_may_get_a_recording_later() {
        let with = |duration: &str, code: Value| {
            let mut row = example_row();
            row["CALL_DURATION"] = json!(duration);
            row["CALL_FAILED_CODE"] = code;
            Call::from_bitrix(&row, msk()).unwrap().may_get_recording()
        };
        assert!(with("95", json!("200")));
        assert!(with("95", json!(null)), "no failure code");
        assert!(!with("0", json!("200")), "no conversation");
        assert!(!with("0", json!("304")), "missed");
        assert!(!with("12", json!("486")), "busy");
    }
}

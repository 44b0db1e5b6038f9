//! One call-history row ([`CallRec`]), kept typed and rendered to the portal's wire shape (string numbers,
//! `RECORD_FILE_ID` as a number, nulls) on the way out; its fields for `FILTER`/`SORT` ([`FieldVal`]).

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Map, Value};

use super::people::CrmKind;
use crate::bitrix24::audio::RecordingSpec;
use crate::bitrix24::clock::portal_date;

/// One call-history row, typed.
#[derive(Debug, Clone)]
pub struct CallRec {
    pub id: u64,
    pub user: Option<u64>,
    pub portal_number: String,
    pub phone: String,
    pub call_id: String,
    pub external_call_id: Option<String>,
    pub call_log: Option<String>,
    pub duration: u64,
    pub start: DateTime<FixedOffset>,
    /// Recording link style: `Some(true)` = URL on the records host, `Some(false)` = "" (Disk only), `None` = no
    /// recording; `empty_url_is_null` picks `null` vs `""` for calls without one.
    pub empty_url_is_null: bool,
    pub vote: Option<u64>,
    pub cost: String,
    pub failed_code: &'static str,
    pub failed_reason: &'static str,
    pub crm: Option<(CrmKind, u64)>,
    /// Unbound rows carry `CRM_ENTITY_ID` as `null` or `"0"` (both seen on portals).
    pub unbound_id_zero: bool,
    pub activity: Option<u64>,
    pub rest_app: Option<(u64, &'static str)>,
    pub session_id: Option<u64>,
    pub redial: Option<u64>,
    pub comment: Option<String>,
    pub record_duration: Option<u64>,
    pub record: Option<RecordingSpec>,
    pub call_type: u8,
}

/// A value of one row field for filtering and sorting.
#[derive(Debug, Clone)]
pub enum FieldVal {
    Null,
    Int(i64),
    Str(String),
    Date(DateTime<FixedOffset>),
}

/// Every field of a row, in the portal's order.
pub const CALL_FIELDS: [&str; 29] = [
    "ID",
    "PORTAL_USER_ID",
    "PORTAL_NUMBER",
    "PHONE_NUMBER",
    "CALL_ID",
    "EXTERNAL_CALL_ID",
    "CALL_CATEGORY",
    "CALL_LOG",
    "CALL_DURATION",
    "CALL_START_DATE",
    "CALL_RECORD_URL",
    "CALL_VOTE",
    "COST",
    "COST_CURRENCY",
    "CALL_FAILED_CODE",
    "CALL_FAILED_REASON",
    "CRM_ENTITY_TYPE",
    "CRM_ENTITY_ID",
    "CRM_ACTIVITY_ID",
    "REST_APP_ID",
    "REST_APP_NAME",
    "TRANSCRIPT_ID",
    "TRANSCRIPT_PENDING",
    "SESSION_ID",
    "REDIAL_ATTEMPT",
    "COMMENT",
    "RECORD_DURATION",
    "RECORD_FILE_ID",
    "CALL_TYPE",
];

impl CallRec {
    pub fn record_url(&self, base: &str) -> Value {
        match &self.record {
            Some(r) if !r.disk_only => Value::String(format!(
                "{base}records/{}.{}",
                self.call_id,
                r.container.ext()
            )),
            Some(_) => Value::String(String::new()),
            None if self.empty_url_is_null => Value::Null,
            None => Value::String(String::new()),
        }
    }

    fn start_text(&self) -> String {
        portal_date(&self.start)
    }

    /// The Disk file name of the call's recording: `2026-03-01_09-12-00_79161234567.mp3`.
    pub fn disk_file_name(&self) -> String {
        let ext = self.record.as_ref().map_or("mp3", |r| r.container.ext());
        format!(
            "{}_{}.{ext}",
            self.start.format("%Y-%m-%d_%H-%M-%S"),
            self.phone.trim_start_matches('+')
        )
    }

    /// A field for FILTER/SORT; `None` = not a field of this method.
    pub fn field(&self, name: &str, base: &str) -> Option<FieldVal> {
        let s = |v: &str| FieldVal::Str(v.to_string());
        let opt_int = |v: Option<u64>| v.map_or(FieldVal::Null, |n| FieldVal::Int(n as i64));
        Some(match name {
            "ID" => FieldVal::Int(self.id as i64),
            "PORTAL_USER_ID" => opt_int(self.user),
            "PORTAL_NUMBER" => s(&self.portal_number),
            "PHONE_NUMBER" => s(&self.phone),
            "CALL_ID" => s(&self.call_id),
            "EXTERNAL_CALL_ID" => self.external_call_id.as_deref().map_or(FieldVal::Null, s),
            "CALL_CATEGORY" => s("external"),
            "CALL_LOG" => self.call_log.as_deref().map_or(FieldVal::Null, s),
            "CALL_DURATION" => FieldVal::Int(self.duration as i64),
            "CALL_START_DATE" => FieldVal::Date(self.start),
            "CALL_RECORD_URL" => match self.record_url(base) {
                Value::String(u) => FieldVal::Str(u),
                _ => FieldVal::Null,
            },
            "CALL_VOTE" => opt_int(self.vote),
            "COST" => s(&self.cost),
            "COST_CURRENCY" => s("RUR"),
            "CALL_FAILED_CODE" => s(self.failed_code),
            "CALL_FAILED_REASON" => s(self.failed_reason),
            "CRM_ENTITY_TYPE" | "CRM_BINDINGS.ENTITY_TYPE" => {
                s(self.crm.map_or("", |(k, _)| k.as_str()))
            }
            "CRM_ENTITY_ID" | "CRM_BINDINGS.ENTITY_ID" => match self.crm {
                Some((_, id)) => FieldVal::Int(id as i64),
                None if self.unbound_id_zero => FieldVal::Int(0),
                None => FieldVal::Null,
            },
            "CRM_ACTIVITY_ID" => opt_int(self.activity),
            "REST_APP_ID" => opt_int(self.rest_app.map(|(id, _)| id)),
            "REST_APP_NAME" => self.rest_app.map_or(FieldVal::Null, |(_, n)| s(n)),
            "TRANSCRIPT_ID" => FieldVal::Null,
            "TRANSCRIPT_PENDING" => s("N"),
            "SESSION_ID" => opt_int(self.session_id),
            "REDIAL_ATTEMPT" => opt_int(self.redial),
            "COMMENT" => self.comment.as_deref().map_or(FieldVal::Null, s),
            "RECORD_DURATION" => opt_int(self.record_duration),
            "RECORD_FILE_ID" => opt_int(self.record.as_ref().map(|r| r.file_id)),
            "CALL_TYPE" => FieldVal::Int(i64::from(self.call_type)),
            "HAS_RECORD" => s(if self.record.is_some() { "Y" } else { "N" }),
            _ => return None,
        })
    }

    /// The row exactly as `voximplant.statistic.get` returns it.
    pub fn to_json(&self, base: &str) -> Value {
        let str_opt = |v: Option<u64>| v.map_or(Value::Null, |n| Value::String(n.to_string()));
        let mut m = Map::new();
        m.insert("ID".into(), json!(self.id.to_string()));
        m.insert("PORTAL_USER_ID".into(), str_opt(self.user));
        m.insert("PORTAL_NUMBER".into(), json!(self.portal_number));
        m.insert("PHONE_NUMBER".into(), json!(self.phone));
        m.insert("CALL_ID".into(), json!(self.call_id));
        m.insert("EXTERNAL_CALL_ID".into(), json!(self.external_call_id));
        m.insert("CALL_CATEGORY".into(), json!("external"));
        m.insert("CALL_LOG".into(), json!(self.call_log));
        m.insert("CALL_DURATION".into(), json!(self.duration.to_string()));
        m.insert("CALL_START_DATE".into(), json!(self.start_text()));
        m.insert("CALL_RECORD_URL".into(), self.record_url(base));
        m.insert("CALL_VOTE".into(), str_opt(self.vote));
        m.insert("COST".into(), json!(self.cost));
        m.insert("COST_CURRENCY".into(), json!("RUR"));
        m.insert("CALL_FAILED_CODE".into(), json!(self.failed_code));
        m.insert("CALL_FAILED_REASON".into(), json!(self.failed_reason));
        m.insert(
            "CRM_ENTITY_TYPE".into(),
            json!(self.crm.map_or("", |(k, _)| k.as_str())),
        );
        m.insert(
            "CRM_ENTITY_ID".into(),
            match self.crm {
                Some((_, id)) => json!(id.to_string()),
                None if self.unbound_id_zero => json!("0"),
                None => Value::Null,
            },
        );
        m.insert("CRM_ACTIVITY_ID".into(), str_opt(self.activity));
        m.insert(
            "REST_APP_ID".into(),
            str_opt(self.rest_app.map(|(id, _)| id)),
        );
        m.insert("REST_APP_NAME".into(), json!(self.rest_app.map(|(_, n)| n)));
        m.insert("TRANSCRIPT_ID".into(), Value::Null);
        m.insert("TRANSCRIPT_PENDING".into(), json!("N"));
        m.insert("SESSION_ID".into(), str_opt(self.session_id));
        m.insert("REDIAL_ATTEMPT".into(), str_opt(self.redial));
        m.insert("COMMENT".into(), json!(self.comment));
        m.insert("RECORD_DURATION".into(), str_opt(self.record_duration));
        // The one real JSON number of the row.
        m.insert(
            "RECORD_FILE_ID".into(),
            json!(self.record.as_ref().map(|r| r.file_id)),
        );
        m.insert("CALL_TYPE".into(), json!(self.call_type.to_string()));
        debug_assert_eq!(m.len(), CALL_FIELDS.len());
        Value::Object(m)
    }
}

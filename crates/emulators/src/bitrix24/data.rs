//! The generated portal: users, CRM records and the call history, deterministic from the seed.
//!
//! Calls are kept typed (a 100,000-call portal as JSON objects would weigh hundreds of MB) and rendered to the
//! portal's wire shape (string numbers, `RECORD_FILE_ID` as a number, nulls) on the way out.

use std::collections::HashMap;

use chrono::{DateTime, Duration as ChronoDuration, FixedOffset};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use super::audio::{Container, RecordingSpec};
use super::PortalConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrmKind {
    Contact,
    Company,
    Lead,
    Deal,
}

impl CrmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CrmKind::Contact => "CONTACT",
            CrmKind::Company => "COMPANY",
            CrmKind::Lead => "LEAD",
            CrmKind::Deal => "DEAL",
        }
    }

    pub fn parse(s: &str) -> Option<CrmKind> {
        match s.trim().to_ascii_uppercase().as_str() {
            "CONTACT" => Some(CrmKind::Contact),
            "COMPANY" => Some(CrmKind::Company),
            "LEAD" => Some(CrmKind::Lead),
            "DEAL" => Some(CrmKind::Deal),
            _ => None,
        }
    }
}

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
        self.start.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
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

#[derive(Debug, Clone)]
pub struct UserRec {
    pub id: u64,
    pub active: bool,
    pub name: String,
    pub last_name: String,
    pub second_name: String,
    pub female: bool,
    pub email: String,
    pub position: String,
    pub mobile: String,
    pub inner: String,
    pub department: u64,
}

impl UserRec {
    pub fn to_json(&self) -> Value {
        json!({
            "ID": self.id.to_string(), "XML_ID": format!("emu-{}", self.id), "ACTIVE": self.active,
            "NAME": self.name, "LAST_NAME": self.last_name, "SECOND_NAME": self.second_name,
            "EMAIL": self.email, "LAST_LOGIN": "2026-03-01T09:12:00+03:00", "DATE_REGISTER": "2024-02-01T00:00:00+03:00",
            "TIME_ZONE": "", "IS_ONLINE": "N", "TIME_ZONE_OFFSET": "0", "TIMESTAMP_X": [], "LAST_ACTIVITY_DATE": [],
            "PERSONAL_GENDER": if self.female { "F" } else { "M" }, "PERSONAL_BIRTHDAY": "",
            "PERSONAL_MOBILE": self.mobile, "PERSONAL_CITY": "Москва", "WORK_PHONE": "", "WORK_POSITION": self.position,
            "UF_EMPLOYMENT_DATE": "", "UF_DEPARTMENT": [self.department], "UF_PHONE_INNER": self.inner,
            "USER_TYPE": "employee",
        })
    }

    pub fn field(&self, name: &str) -> Option<FieldVal> {
        let s = |v: &str| FieldVal::Str(v.to_string());
        Some(match name {
            "ID" => FieldVal::Int(self.id as i64),
            "ACTIVE" => s(if self.active { "Y" } else { "N" }),
            "NAME" => s(&self.name),
            "LAST_NAME" => s(&self.last_name),
            "SECOND_NAME" => s(&self.second_name),
            "EMAIL" => s(&self.email),
            "WORK_POSITION" => s(&self.position),
            "PERSONAL_MOBILE" => s(&self.mobile),
            "UF_PHONE_INNER" => s(&self.inner),
            "UF_DEPARTMENT" => FieldVal::Int(self.department as i64),
            "USER_TYPE" => s("employee"),
            "PERSONAL_GENDER" => s(if self.female { "F" } else { "M" }),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct CrmRec {
    pub kind: CrmKind,
    pub id: u64,
    pub title: String,
    pub name: String,
    pub last_name: String,
    pub second_name: String,
    pub phone: String,
    pub email: String,
    pub assigned: u64,
    pub company_id: u64,
    pub contact_id: u64,
    pub created: DateTime<FixedOffset>,
}

impl CrmRec {
    fn multi(&self, kind: &str, value: &str, value_type: &str, n: u64) -> Value {
        json!([{"ID": (self.id * 10 + n).to_string(), "VALUE_TYPE": value_type, "VALUE": value, "TYPE_ID": kind}])
    }

    /// All fields (what `.get` returns); `.list` drops the multi-fields unless selected.
    pub fn to_json(&self) -> Value {
        let created = self.created.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
        let id = self.id.to_string();
        let assigned = self.assigned.to_string();
        let phone = self.multi("PHONE", &self.phone, "WORK", 1);
        let email = self.multi("EMAIL", &self.email, "WORK", 2);
        match self.kind {
            CrmKind::Contact => json!({
                "ID": id, "HONORIFIC": null, "NAME": self.name, "SECOND_NAME": self.second_name,
                "LAST_NAME": self.last_name, "PHOTO": null, "BIRTHDATE": "", "TYPE_ID": "CLIENT", "SOURCE_ID": "CALL",
                "SOURCE_DESCRIPTION": null, "POST": "Менеджер", "COMMENTS": null, "OPENED": "Y", "EXPORT": "Y",
                "HAS_PHONE": "Y", "HAS_EMAIL": "Y", "HAS_IMOL": "N", "ASSIGNED_BY_ID": assigned,
                "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1", "DATE_CREATE": created, "DATE_MODIFY": created,
                "COMPANY_ID": if self.company_id > 0 { Value::String(self.company_id.to_string()) } else { Value::Null },
                "LEAD_ID": null, "ORIGINATOR_ID": null, "ORIGIN_ID": null, "PHONE": phone, "EMAIL": email,
            }),
            CrmKind::Company => json!({
                "ID": id, "COMPANY_TYPE": "CUSTOMER", "TITLE": self.title, "LOGO": null, "INDUSTRY": "IT",
                "REVENUE": "0.00", "CURRENCY_ID": "RUB", "EMPLOYEES": "EMPLOYEES_2", "COMMENTS": null, "OPENED": "Y",
                "HAS_PHONE": "Y", "HAS_EMAIL": "Y", "ASSIGNED_BY_ID": assigned, "CREATED_BY_ID": "1",
                "MODIFY_BY_ID": "1", "DATE_CREATE": created, "DATE_MODIFY": created, "LEAD_ID": null,
                "ORIGINATOR_ID": null, "ORIGIN_ID": null, "PHONE": phone, "EMAIL": email,
            }),
            CrmKind::Lead => json!({
                "ID": id, "TITLE": self.title, "HONORIFIC": null, "NAME": self.name, "SECOND_NAME": self.second_name,
                "LAST_NAME": self.last_name, "COMPANY_TITLE": null, "COMPANY_ID": null, "CONTACT_ID": null,
                "IS_RETURN_CUSTOMER": "N", "BIRTHDATE": "", "SOURCE_ID": "CALL", "SOURCE_DESCRIPTION": null,
                "STATUS_ID": "NEW", "STATUS_DESCRIPTION": null, "POST": null, "COMMENTS": null, "CURRENCY_ID": "RUB",
                "OPPORTUNITY": "0.00", "HAS_PHONE": "Y", "HAS_EMAIL": "Y", "OPENED": "Y", "ASSIGNED_BY_ID": assigned,
                "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1", "DATE_CREATE": created, "DATE_MODIFY": created,
                "DATE_CLOSED": "", "STATUS_SEMANTIC_ID": "P", "PHONE": phone, "EMAIL": email,
            }),
            CrmKind::Deal => json!({
                "ID": id, "TITLE": self.title, "TYPE_ID": "SALE", "STAGE_ID": "NEW", "PROBABILITY": null,
                "CURRENCY_ID": "RUB", "OPPORTUNITY": "150000.00", "IS_MANUAL_OPPORTUNITY": "N", "TAX_VALUE": "0.00",
                "LEAD_ID": null,
                "COMPANY_ID": if self.company_id > 0 { Value::String(self.company_id.to_string()) } else { json!("0") },
                "CONTACT_ID": if self.contact_id > 0 { Value::String(self.contact_id.to_string()) } else { Value::Null },
                "BEGINDATE": created, "CLOSEDATE": created, "OPENED": "Y", "CLOSED": "N", "COMMENTS": null,
                "ASSIGNED_BY_ID": assigned, "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1", "DATE_CREATE": created,
                "DATE_MODIFY": created, "CATEGORY_ID": "0", "STAGE_SEMANTIC_ID": "P",
            }),
        }
    }

    pub fn field(&self, name: &str) -> Option<FieldVal> {
        let s = |v: &str| FieldVal::Str(v.to_string());
        Some(match name {
            "ID" => FieldVal::Int(self.id as i64),
            "TITLE" => s(&self.title),
            "NAME" => s(&self.name),
            "LAST_NAME" => s(&self.last_name),
            "SECOND_NAME" => s(&self.second_name),
            "ASSIGNED_BY_ID" => FieldVal::Int(self.assigned as i64),
            "COMPANY_ID" => FieldVal::Int(self.company_id as i64),
            "CONTACT_ID" => FieldVal::Int(self.contact_id as i64),
            "PHONE" => s(&self.phone),
            "EMAIL" => s(&self.email),
            "DATE_CREATE" | "DATE_MODIFY" => FieldVal::Date(self.created),
            _ => return None,
        })
    }
}

/// The whole generated portal.
#[derive(Debug)]
pub struct PortalData {
    /// Ascending by ID.
    pub calls: Vec<CallRec>,
    pub users: Vec<UserRec>,
    pub contacts: Vec<CrmRec>,
    pub companies: Vec<CrmRec>,
    pub leads: Vec<CrmRec>,
    pub deals: Vec<CrmRec>,
    /// Disk file id → index into `calls`.
    pub files: HashMap<u64, usize>,
    /// CALL_ID → index into `calls`.
    pub by_call_id: HashMap<String, usize>,
}

impl PortalData {
    pub fn crm(&self, kind: CrmKind) -> &[CrmRec] {
        match kind {
            CrmKind::Contact => &self.contacts,
            CrmKind::Company => &self.companies,
            CrmKind::Lead => &self.leads,
            CrmKind::Deal => &self.deals,
        }
    }

    /// Records are generated with IDs 1..=n, so lookups are by position.
    pub fn crm_by_id(&self, kind: CrmKind, id: u64) -> Option<&CrmRec> {
        let list = self.crm(kind);
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| list.get(i))
    }

    pub fn user_by_id(&self, id: u64) -> Option<&UserRec> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.users.get(i))
    }
}

const MALE_NAMES: &[&str] = &[
    "Александр",
    "Дмитрий",
    "Максим",
    "Сергей",
    "Андрей",
    "Алексей",
    "Артём",
    "Илья",
    "Кирилл",
    "Михаил",
    "Никита",
    "Иван",
    "Егор",
    "Павел",
    "Роман",
    "Олег",
];
const FEMALE_NAMES: &[&str] = &[
    "Анна",
    "Мария",
    "Елена",
    "Ольга",
    "Татьяна",
    "Наталья",
    "Ирина",
    "Екатерина",
    "Светлана",
    "Юлия",
    "Дарья",
    "Ксения",
];
const LAST_NAMES: &[&str] = &[
    "Иванов",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Петров",
    "Соколов",
    "Михайлов",
    "Новиков",
    "Фёдоров",
    "Морозов",
    "Волков",
    "Алексеев",
    "Лебедев",
    "Семёнов",
    "Егоров",
    "Павлов",
    "Козлов",
    "Степанов",
    "Николаев",
];
const PATRONYMICS: &[&str] = &[
    "Александрович",
    "Сергеевич",
    "Игоревич",
    "Петрович",
    "Андреевич",
    "Олегович",
];
const COMPANY_WORDS: &[&str] = &[
    "Ромашка",
    "Вектор",
    "СтройИнвест",
    "Альфа-Трейд",
    "ТехноСервис",
    "Северный ветер",
    "Гранит",
    "Меридиан",
    "Логистик Плюс",
    "Интерфарм",
    "Восход",
    "Промснаб",
];
const POSITIONS: &[&str] = &[
    "Менеджер по продажам",
    "Старший менеджер",
    "Оператор колл-центра",
    "Руководитель отдела",
];
const REST_APPS: &[(u64, &str)] = &[(17, "Asterisk Connector"), (23, "Mango Office")];

fn female_last(last: &str) -> String {
    if last.ends_with("ов") || last.ends_with("ев") || last.ends_with("ёв") || last.ends_with("ин")
    {
        format!("{last}а")
    } else {
        last.to_string()
    }
}

fn person(rng: &mut StdRng) -> (String, String, String, bool) {
    let female = rng.random_bool(0.45);
    let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
    let patr = PATRONYMICS[rng.random_range(0..PATRONYMICS.len())];
    if female {
        let name = FEMALE_NAMES[rng.random_range(0..FEMALE_NAMES.len())];
        let patr = patr
            .strip_suffix("ич")
            .map_or(patr.to_string(), |p| format!("{p}на"));
        (name.to_string(), female_last(last), patr, true)
    } else {
        let name = MALE_NAMES[rng.random_range(0..MALE_NAMES.len())];
        (name.to_string(), last.to_string(), patr.to_string(), false)
    }
}

fn phone(rng: &mut StdRng) -> String {
    format!("+79{:09}", rng.random_range(0..1_000_000_000u64))
}

fn hex_upper(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| format!("{:X}", rng.random_range(0..16u8)))
        .collect()
}

/// A log-normal-ish talk length: median ≈ 2 min, clamped to 10 s..40 min.
fn talk_seconds(rng: &mut StdRng) -> u64 {
    // Box–Muller from two uniforms.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let secs = (120f64.ln() + 1.0 * z).exp();
    secs.clamp(10.0, 2400.0) as u64
}

pub fn generate(cfg: &PortalConfig) -> PortalData {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let tz = cfg.utc_offset;

    let users: Vec<UserRec> = (1..=cfg.users.max(1) as u64)
        .map(|id| {
            let (name, last_name, second_name, female) = person(&mut rng);
            UserRec {
                id,
                // The webhook user (an admin) is always active; a few others have left the company.
                active: id == cfg.webhook_user || !rng.random_bool(0.1),
                email: format!("user{id}@example.ru"),
                position: POSITIONS[rng.random_range(0..POSITIONS.len())].to_string(),
                mobile: phone(&mut rng),
                inner: format!("{}", 100 + id),
                department: 1 + id % 3,
                name,
                last_name,
                second_name,
                female,
            }
        })
        .collect();
    let n_users = users.len() as u64;
    let created = cfg.start - ChronoDuration::days(90);
    let mk_crm = |kind: CrmKind, n: usize, rng: &mut StdRng| -> Vec<CrmRec> {
        (1..=n as u64)
            .map(|id| {
                let (name, last_name, second_name, _) = person(rng);
                let company = format!(
                    "ООО «{}»",
                    COMPANY_WORDS[rng.random_range(0..COMPANY_WORDS.len())]
                );
                let title = match kind {
                    CrmKind::Contact => String::new(),
                    CrmKind::Company => company.clone(),
                    // Some leads have no title: mapping falls back to the person's name.
                    CrmKind::Lead if rng.random_bool(0.2) => String::new(),
                    CrmKind::Lead => format!("Входящий звонок: {company}"),
                    CrmKind::Deal => format!("Поставка для {company}"),
                };
                CrmRec {
                    kind,
                    id,
                    title,
                    name: if kind == CrmKind::Company || kind == CrmKind::Deal {
                        String::new()
                    } else {
                        name
                    },
                    last_name: if kind == CrmKind::Company || kind == CrmKind::Deal {
                        String::new()
                    } else {
                        last_name
                    },
                    second_name,
                    phone: phone(rng),
                    email: format!("client{id}@mail.example"),
                    assigned: rng.random_range(1..=n_users),
                    company_id: 0,
                    contact_id: 0,
                    created: created + ChronoDuration::minutes(rng.random_range(0..90 * 24 * 60)),
                }
            })
            .collect()
    };
    let companies = mk_crm(CrmKind::Company, cfg.companies, &mut rng);
    let mut contacts = mk_crm(CrmKind::Contact, cfg.contacts, &mut rng);
    let leads = mk_crm(CrmKind::Lead, cfg.leads, &mut rng);
    let mut deals = mk_crm(CrmKind::Deal, cfg.deals, &mut rng);
    for c in contacts.iter_mut() {
        if !companies.is_empty() && rng.random_bool(0.5) {
            c.company_id = rng.random_range(1..=companies.len() as u64);
        }
    }
    for d in deals.iter_mut() {
        if !companies.is_empty() {
            d.company_id = rng.random_range(1..=companies.len() as u64);
        }
        if !contacts.is_empty() {
            d.contact_id = rng.random_range(1..=contacts.len() as u64);
        }
    }

    // Start times: sorted, spread over the window with a working-hours bias.
    let window_secs = (i64::from(cfg.days.max(1)) * 86_400).max(1);
    let mut offsets: Vec<i64> = (0..cfg.calls)
        .map(|_| {
            let day = rng.random_range(0..i64::from(cfg.days.max(1)));
            let in_day = if rng.random_bool(0.85) {
                rng.random_range(9 * 3600..19 * 3600)
            } else {
                rng.random_range(0..86_400)
            };
            (day * 86_400 + in_day).min(window_secs - 1)
        })
        .collect();
    offsets.sort_unstable();

    let mut calls = Vec::with_capacity(cfg.calls);
    let mut files = HashMap::new();
    let mut by_call_id = HashMap::with_capacity(cfg.calls);
    let mut next_file_id = 9000u64;
    let mut next_activity = 7000u64;
    let mut big_assigned = false;
    for (i, off) in offsets.into_iter().enumerate() {
        let id = 1 + i as u64;
        let call_type: u8 = match rng.random_range(0..100) {
            0..=39 => 1,
            40..=84 => 2,
            85..=92 => 3,
            93..=97 => 4,
            _ => 5,
        };
        let rest_app = rng
            .random_bool(0.06)
            .then(|| REST_APPS[rng.random_range(0..REST_APPS.len())]);
        let mut start = cfg.start + ChronoDuration::seconds(off);
        if rest_app.is_some() && rng.random_bool(0.3) {
            // External PBXs report late and backdate: the row's ID is new, its start time older.
            start -= ChronoDuration::minutes(rng.random_range(30..600));
        }
        let start = start.with_timezone(&tz);
        let no_record = rng.random_bool(cfg.no_record_share.clamp(0.0, 1.0));
        let missed = no_record && rng.random_bool(0.7);
        let (failed_code, failed_reason, duration) = if missed {
            match rng.random_range(0..10) {
                0 => ("486", "Занято", 0),
                1 => ("603", "Отклонено", 0),
                _ => ("304", "Пропущенный звонок", 0),
            }
        } else {
            ("200", "", talk_seconds(&mut rng))
        };
        let unix = start.timestamp();
        let call_id = if rest_app.is_some() {
            format!(
                "externalCall.{}.{unix}",
                hex_upper(&mut rng, 32).to_ascii_lowercase()
            )
        } else {
            format!(
                "{}.{unix}.{}",
                hex_upper(&mut rng, 16),
                rng.random_range(10_000_000..99_999_999u64)
            )
        };
        let crm = match rng.random_range(0..100) {
            0..=44 if !contacts.is_empty() => Some((
                CrmKind::Contact,
                rng.random_range(1..=contacts.len() as u64),
            )),
            45..=59 if !companies.is_empty() => Some((
                CrmKind::Company,
                rng.random_range(1..=companies.len() as u64),
            )),
            60..=79 if !leads.is_empty() => {
                Some((CrmKind::Lead, rng.random_range(1..=leads.len() as u64)))
            }
            _ => None,
        };
        let user = (call_type != 5).then(|| rng.random_range(1..=n_users));
        let record = if no_record || duration == 0 {
            None
        } else {
            let wav = rng.random_bool(cfg.wav_share.clamp(0.0, 1.0));
            let channels = if rng.random_bool(cfg.stereo_share.clamp(0.0, 1.0)) {
                2
            } else {
                1
            };
            let container = if wav { Container::Wav } else { Container::Mp3 };
            let mut bytes =
                container.natural_size(duration, channels, cfg.recording_bytes_per_second);
            if let Some(cap) = cfg.max_recording_bytes {
                bytes = container.capped(bytes, cap, channels, cfg.recording_bytes_per_second);
            }
            if let (Some(big), false) = (cfg.big_recording, big_assigned) {
                bytes = big.max(container.header_len() + 1);
                big_assigned = true;
            }
            next_file_id += 1 + rng.random_range(0..3);
            files.insert(next_file_id, i);
            Some(RecordingSpec {
                file_id: next_file_id,
                container,
                channels,
                bytes,
                disk_only: rng.random_bool(cfg.disk_only_share.clamp(0.0, 1.0)),
                seed: cfg.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                kbps: super::audio::mp3_kbps(cfg.recording_bytes_per_second),
            })
        };
        let has_record = record.is_some();
        by_call_id.insert(call_id.clone(), i);
        let activity = crm.map(|_| {
            next_activity += 1 + rng.random_range(0..2);
            next_activity
        });
        calls.push(CallRec {
            id,
            user,
            portal_number: if rest_app.is_some() {
                format!("7495{:07}", rng.random_range(0..10_000_000u64))
            } else if rng.random_bool(0.7) {
                format!("reg{}", 1000 + rng.random_range(0..3) * 111)
            } else {
                format!("sip{}", rng.random_range(1..5))
            },
            phone: match rng.random_range(0..20) {
                0 => "hidden".to_string(),
                1 | 2 => format!("89{:09}", rng.random_range(0..1_000_000_000u64)),
                _ => phone(&mut rng),
            },
            external_call_id: rest_app.map(|_| format!("pbx-{}", 500_000 + id * 7)),
            call_log: rest_app.is_none().then(|| {
                format!(
                    "https://storage-gw-ru-01.voximplant.com/voximplant-logs/2026/{}/{}.log",
                    id % 28 + 1,
                    call_id
                )
            }),
            call_id,
            duration,
            start,
            empty_url_is_null: rng.random_bool(0.5),
            vote: match rng.random_range(0..10) {
                0 => Some(5),
                1 => Some(4),
                2 => Some(0),
                _ => None,
            },
            cost: if call_type == 1 && duration > 0 {
                format!("{:.4}", duration as f64 / 60.0 * 1.5)
            } else {
                "0.0000".into()
            },
            failed_code,
            failed_reason,
            crm,
            unbound_id_zero: crm.is_none() && rng.random_bool(0.5),
            activity,
            rest_app,
            session_id: rest_app
                .is_none()
                .then(|| rng.random_range(1_000_000_000..4_000_000_000u64)),
            redial: (call_type == 4).then(|| rng.random_range(1..3)),
            comment: rng
                .random_bool(0.03)
                .then(|| "Перезвонить после обеда".to_string()),
            record_duration: (has_record && rng.random_bool(0.5)).then_some(duration),
            record,
            call_type,
        });
    }
    PortalData {
        calls,
        users,
        contacts,
        companies,
        leads,
        deals,
        files,
        by_call_id,
    }
}

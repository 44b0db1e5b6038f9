//! The generated portal's users and CRM records ([`UserRec`], [`CrmRec`] of a [`CrmKind`]), rendered as
//! `user.get` and `crm.<kind>.get` return them.

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Value};

use super::call::FieldVal;
use crate::bitrix24::clock::portal_date;

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
        let created = portal_date(&self.created);
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

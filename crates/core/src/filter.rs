//! Which calls qualify for export — the settings form's filters (`docs/mapping.md`, "Which calls qualify").
//!
//! The filter is applied by Bitrix24 (`FILTER[...]` of `voximplant.statistic.get`), never by downloading everything;
//! [`CallFilter::matches`] exists for rows read back from the ledger and for tests.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::call::{Call, CallType};

/// A point in time given either as a calendar day (read in the portal's time zone, by Bitrix24 itself)
/// or as an exact instant with offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeBound {
    Date(NaiveDate),
    Instant(DateTime<FixedOffset>),
}

impl TimeBound {
    /// `YYYY-MM-DD` or RFC 3339 (`2025-04-24T14:34:19+03:00`, `...Z`).
    pub fn parse(field: &'static str, s: &str) -> Result<TimeBound, FilterError> {
        let s = s.trim();
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(TimeBound::Date(d));
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(TimeBound::Instant(t));
        }
        Err(FilterError::new(
            field,
            format!("{s:?} is not a date: use YYYY-MM-DD or an RFC 3339 time such as 2025-04-24T14:34:19+03:00"),
        ))
    }

    /// The `>=` bound as Bitrix24 wants it. A bare date is sent without an offset so that the portal reads it in
    /// its own time zone: "from the start of that day where the portal is".
    fn lower_wire(&self) -> String {
        match self {
            TimeBound::Date(d) => format!("{}T00:00:00", d.format("%Y-%m-%d")),
            TimeBound::Instant(t) => t.to_rfc3339(),
        }
    }

    /// The inclusive `<=` bound: a bare date means "until the end of that day".
    fn upper_wire(&self) -> String {
        match self {
            TimeBound::Date(d) => format!("{}T23:59:59", d.format("%Y-%m-%d")),
            TimeBound::Instant(t) => t.to_rfc3339(),
        }
    }

    fn lower_instant(&self, offset: FixedOffset) -> DateTime<FixedOffset> {
        match self {
            TimeBound::Date(d) => offset
                .from_local_datetime(&d.and_time(NaiveTime::MIN))
                .unwrap(),
            TimeBound::Instant(t) => *t,
        }
    }

    fn upper_instant(&self, offset: FixedOffset) -> DateTime<FixedOffset> {
        match self {
            TimeBound::Date(d) => offset
                .from_local_datetime(&d.and_time(NaiveTime::from_hms_opt(23, 59, 59).unwrap()))
                .unwrap(),
            TimeBound::Instant(t) => *t,
        }
    }
}

/// A validation failure that names the field (CLI flag or form field) and says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FilterError {
    pub field: &'static str,
    pub message: String,
}

impl FilterError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        FilterError {
            field,
            message: message.into(),
        }
    }
}

/// The qualifying conditions. Empty lists and `None` mean "no restriction".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallFilter {
    pub since: Option<TimeBound>,
    pub until: Option<TimeBound>,
    pub users: Vec<u64>,
    pub min_duration: u64,
    pub max_duration: Option<u64>,
    pub call_types: Vec<CallType>,
}

impl CallFilter {
    /// Checks the filter is self-consistent; errors name the offending field.
    pub fn validate(&self) -> Result<(), FilterError> {
        if let Some(max) = self.max_duration {
            if max < self.min_duration {
                return Err(FilterError::new(
                    "max_duration",
                    format!(
                        "{max} s is shorter than the minimal conversation length ({} s)",
                        self.min_duration
                    ),
                ));
            }
        }
        if let (Some(s), Some(u)) = (self.since, self.until) {
            let utc = FixedOffset::east_opt(0).unwrap();
            if u.upper_instant(utc) < s.lower_instant(utc) {
                return Err(FilterError::new("until", "is before `since`"));
            }
        }
        Ok(())
    }

    /// The `FILTER` object for `voximplant.statistic.get`, keyset-paged after `after_id`.
    pub fn to_bitrix_filter(&self, after_id: u64) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert(">ID".into(), json!(after_id));
        if let Some(s) = &self.since {
            f.insert(">=CALL_START_DATE".into(), json!(s.lower_wire()));
        }
        if let Some(u) = &self.until {
            f.insert("<=CALL_START_DATE".into(), json!(u.upper_wire()));
        }
        if !self.users.is_empty() {
            f.insert("PORTAL_USER_ID".into(), json!(self.users));
        }
        if self.min_duration > 0 {
            f.insert(">=CALL_DURATION".into(), json!(self.min_duration));
        }
        if let Some(max) = self.max_duration {
            f.insert("<=CALL_DURATION".into(), json!(max));
        }
        if !self.call_types.is_empty() {
            let codes: Vec<u64> = self.call_types.iter().map(|t| t.code()).collect();
            f.insert("CALL_TYPE".into(), json!(codes));
        }
        f
    }

    /// Whether a call satisfies the filter; bare dates are read in the call's own offset (the portal's).
    pub fn matches(&self, call: &Call) -> bool {
        let offset = *call.call_start_date.offset();
        self.since
            .is_none_or(|s| call.call_start_date >= s.lower_instant(offset))
            && self
                .until
                .is_none_or(|u| call.call_start_date <= u.upper_instant(offset))
            && (self.users.is_empty()
                || call.portal_user_id.is_some_and(|u| self.users.contains(&u)))
            && call.call_duration >= self.min_duration
            && self.max_duration.is_none_or(|m| call.call_duration <= m)
            && (self.call_types.is_empty() || self.call_types.contains(&call.call_type))
    }
}

/// Parses a user list such as `1, 5,7` (CLI `--users`, form "List of users"). Empty → all users.
pub fn parse_user_ids(field: &'static str, s: &str) -> Result<Vec<u64>, FilterError> {
    let mut ids = Vec::new();
    for part in s
        .split([',', ';', ' ', '\n', '\t'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part.parse::<u64>() {
            Ok(0) | Err(_) => {
                return Err(FilterError::new(
                    field,
                    format!("{part:?} is not a Bitrix24 user ID (a positive whole number)"),
                ))
            }
            Ok(id) if !ids.contains(&id) => ids.push(id),
            Ok(_) => {}
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Call;

    fn call(id: u64, user: u64, dur: u64, date: &str, ty: u64) -> Call {
        let row = json!({"ID": id.to_string(), "PORTAL_USER_ID": user.to_string(), "CALL_DURATION": dur.to_string(),
            "CALL_START_DATE": date, "CALL_TYPE": ty.to_string(), "CALL_ID": "x"});
        Call::from_bitrix(&row, FixedOffset::east_opt(3 * 3600).unwrap()).unwrap()
    }

    #[test]
    fn bitrix_filter_has_each_condition() {
        let f = CallFilter {
            since: Some(TimeBound::parse("since", "2025-01-01").unwrap()),
            until: Some(TimeBound::parse("until", "2025-02-01T10:00:00+03:00").unwrap()),
            users: vec![5, 7],
            min_duration: 30,
            max_duration: Some(600),
            call_types: vec![CallType::Outgoing, CallType::Callback],
        };
        let m = f.to_bitrix_filter(120);
        assert_eq!(m[">ID"], json!(120));
        assert_eq!(m[">=CALL_START_DATE"], json!("2025-01-01T00:00:00"));
        assert_eq!(m["<=CALL_START_DATE"], json!("2025-02-01T10:00:00+03:00"));
        assert_eq!(m["PORTAL_USER_ID"], json!([5, 7]));
        assert_eq!(m[">=CALL_DURATION"], json!(30));
        assert_eq!(m["<=CALL_DURATION"], json!(600));
        assert_eq!(m["CALL_TYPE"], json!([1, 4]));
        assert_eq!(
            CallFilter::default().to_bitrix_filter(0).len(),
            1,
            "no filter → only the keyset bound"
        );
    }

    #[test]
    fn local_matching_agrees_with_the_conditions() {
        let f = CallFilter {
            since: Some(TimeBound::Date(
                NaiveDate::from_ymd_opt(2025, 1, 2).unwrap(),
            )),
            users: vec![5],
            min_duration: 30,
            ..Default::default()
        };
        assert!(f.matches(&call(1, 5, 30, "2025-01-02T00:00:00+03:00", 2)));
        assert!(
            !f.matches(&call(2, 5, 30, "2025-01-01T23:59:59+03:00", 2)),
            "day starts in the portal's zone"
        );
        assert!(!f.matches(&call(3, 6, 30, "2025-01-03T00:00:00+03:00", 2)));
        assert!(!f.matches(&call(4, 5, 29, "2025-01-03T00:00:00+03:00", 2)));
        let g = CallFilter {
            call_types: vec![CallType::Incoming],
            ..Default::default()
        };
        assert!(g.matches(&call(5, 1, 1, "2025-01-03T00:00:00+03:00", 2)));
        assert!(!g.matches(&call(6, 1, 1, "2025-01-03T00:00:00+03:00", 1)));
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = TimeBound::parse("--since", "01.02.2025").unwrap_err();
        assert_eq!(e.field, "--since");
        assert!(e.to_string().contains("YYYY-MM-DD"));
        let e = parse_user_ids("--users", "1,x,3").unwrap_err();
        assert_eq!(e.field, "--users");
        assert!(e.message.contains("\"x\""));
        assert_eq!(
            parse_user_ids("--users", " 1, 5 ,7,5").unwrap(),
            vec![1, 5, 7]
        );
        assert_eq!(parse_user_ids("--users", "").unwrap(), Vec::<u64>::new());
        let bad = CallFilter {
            min_duration: 60,
            max_duration: Some(30),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "max_duration");
    }
}

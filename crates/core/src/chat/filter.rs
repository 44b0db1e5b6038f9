//! Which Open Lines sessions qualify (`docs/mapping.md`, "Chats"): the same period and operators as calls, applied
//! by Bitrix24 to the sessions' CRM activities (`crm.activity.list`), never by reading everything.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::session::SESSION_PROVIDER;
use crate::filter::{FilterError, TimeBound};

/// The qualifying conditions of sessions. Empty lists and `None` mean "no restriction".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatFilter {
    /// Session start (`START_TIME`) at or after.
    pub since: Option<TimeBound>,
    /// Session start at or before (a bare date: until the end of that day).
    pub until: Option<TimeBound>,
    /// The sessions' operators (`RESPONSIBLE_ID`).
    pub operators: Vec<u64>,
    /// Only activities changed at or after this instant (`LAST_UPDATED`): the rolling re-scan that finds sessions
    /// which closed after a listing had already passed their ID.
    pub updated_since: Option<DateTime<FixedOffset>>,
    /// Also list sessions that are still open (`COMPLETED=N`); off for exports, which want finished ones only.
    pub include_open: bool,
}

/// A bare date is sent without an offset so that the portal reads it in its own time zone.
fn wire(b: &TimeBound, end_of_day: bool) -> String {
    match b {
        TimeBound::Date(d) if end_of_day => format!("{}T23:59:59", d.format("%Y-%m-%d")),
        TimeBound::Date(d) => format!("{}T00:00:00", d.format("%Y-%m-%d")),
        TimeBound::Instant(t) => t.to_rfc3339(),
    }
}

impl ChatFilter {
    /// Checks the filter is self-consistent; errors name the field.
    pub fn validate(&self) -> Result<(), FilterError> {
        if let (Some(s), Some(u)) = (self.since, self.until) {
            // Comparing in UTC is exact for instants and within a day for dates: good enough to catch swaps.
            let key = |b: TimeBound, end: bool| match b {
                TimeBound::Date(d) => d
                    .and_hms_opt(if end { 23 } else { 0 }, 0, 0)
                    .map(|n| n.and_utc()),
                TimeBound::Instant(t) => Some(t.to_utc()),
            };
            if key(u, true) < key(s, false) {
                return Err(FilterError::new("until", "is before `since`"));
            }
        }
        if self.operators.contains(&0) {
            return Err(FilterError::new("users", "0 is not a Bitrix24 user ID"));
        }
        Ok(())
    }

    /// The `filter` object of `crm.activity.list`, keyset-paged after the activity `after_id`.
    pub fn to_bitrix_filter(&self, after_id: u64) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("PROVIDER_ID".into(), json!(SESSION_PROVIDER));
        if !self.include_open {
            f.insert("COMPLETED".into(), json!("Y"));
        }
        f.insert(">ID".into(), json!(after_id));
        if let Some(s) = &self.since {
            f.insert(">=START_TIME".into(), json!(wire(s, false)));
        }
        if let Some(u) = &self.until {
            f.insert("<=START_TIME".into(), json!(wire(u, true)));
        }
        if !self.operators.is_empty() {
            f.insert("RESPONSIBLE_ID".into(), json!(self.operators));
        }
        if let Some(t) = &self.updated_since {
            f.insert(">=LAST_UPDATED".into(), json!(t.to_rfc3339()));
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn bitrix_filter() {
        let f = ChatFilter {
            since: Some(TimeBound::Date(
                NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            )),
            until: Some(TimeBound::parse("until", "2026-03-31T18:00:00+03:00").unwrap()),
            operators: vec![5, 7],
            ..Default::default()
        };
        f.validate().unwrap();
        let w = Value::Object(f.to_bitrix_filter(30_000));
        assert_eq!(
            w,
            json!({"PROVIDER_ID": "IMOPENLINES_SESSION", "COMPLETED": "Y", ">ID": 30000,
                ">=START_TIME": "2026-03-01T00:00:00", "<=START_TIME": "2026-03-31T18:00:00+03:00",
                "RESPONSIBLE_ID": [5, 7]})
        );
        let open = ChatFilter {
            include_open: true,
            ..Default::default()
        };
        assert!(open.to_bitrix_filter(0).get("COMPLETED").is_none());
    }

    #[test]
    fn validation_names_the_field() {
        let swapped = ChatFilter {
            since: Some(TimeBound::parse("since", "2026-03-10").unwrap()),
            until: Some(TimeBound::parse("until", "2026-03-01").unwrap()),
            ..Default::default()
        };
        assert_eq!(swapped.validate().unwrap_err().field, "until");
        let same_day = ChatFilter {
            since: Some(TimeBound::parse("since", "2026-03-10").unwrap()),
            until: Some(TimeBound::parse("until", "2026-03-10").unwrap()),
            ..Default::default()
        };
        assert!(same_day.validate().is_ok());
        let zero = ChatFilter {
            operators: vec![0],
            ..Default::default()
        };
        assert_eq!(zero.validate().unwrap_err().field, "users");
    }
}

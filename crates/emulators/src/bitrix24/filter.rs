//! `FILTER` evaluation the way the portal's ORM does it: `[op]FIELD` keys, lists as IN, integer fields compared
//! after PHP `intval` (so an unresolved `$result[...]` reference compares as 0), dates as instants.

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

use super::data::FieldVal;
use super::error::ApiError;
use super::params::P;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Between,
    NotBetween,
    Like,
    NotLike,
    In,
    NotIn,
}

/// One parsed condition.
#[derive(Debug, Clone)]
pub struct Cond {
    pub field: String,
    pub op: Op,
    pub values: Vec<P>,
    /// The value was an array (IN / between).
    pub list: bool,
}

const OPS: &[(&str, Op)] = &[
    ("!><", Op::NotBetween),
    ("><", Op::Between),
    ("!=", Op::Ne),
    ("!%", Op::NotLike),
    ("!@", Op::NotIn),
    (">=", Op::Ge),
    ("<=", Op::Le),
    ("=%", Op::Like),
    ("%=", Op::Like),
    ("=", Op::Eq),
    (">", Op::Gt),
    ("<", Op::Lt),
    ("!", Op::Ne),
    ("%", Op::Like),
    ("?", Op::Like),
    ("@", Op::In),
];

/// Parses a FILTER map. Keys are upper-cased (the portal does that for the statistic).
pub fn parse(filter: Option<&P>) -> Vec<Cond> {
    let Some(P::Map(m)) = filter else {
        return Vec::new();
    };
    m.iter()
        .map(|(k, v)| {
            let key = k.trim().to_uppercase();
            let (op, field) = OPS
                .iter()
                .find_map(|(p, op)| key.strip_prefix(p).map(|f| (*op, f.to_string())))
                .unwrap_or((Op::Eq, key.clone()));
            let (values, list) = match v.elements() {
                Some(els) => (els.into_iter().cloned().collect(), true),
                None => (vec![v.clone()], false),
            };
            Cond {
                field,
                op,
                values,
                list,
            }
        })
        .collect()
}

/// Reads a date-time filter value; without an offset it is in the portal's zone; a bare date is its midnight.
pub fn parse_date(s: &str, tz: FixedOffset) -> Option<DateTime<FixedOffset>> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d);
    }
    if let Ok(d) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z") {
        return Some(d);
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%d.%m.%Y %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return tz.from_local_datetime(&n).single();
        }
    }
    for f in ["%Y-%m-%d", "%d.%m.%Y"] {
        if let Ok(d) = NaiveDate::parse_from_str(s, f) {
            return tz.from_local_datetime(&d.and_time(NaiveTime::MIN)).single();
        }
    }
    None
}

/// A filter value converted to the field's type; `None` = SQL NULL.
#[derive(Debug, Clone)]
enum Typed {
    Null,
    Int(i64),
    Str(String),
    Date(DateTime<FixedOffset>),
}

fn convert(field: &FieldVal, v: &P, tz: FixedOffset, name: &str) -> Result<Typed, ApiError> {
    if matches!(v, P::Null) {
        return Ok(Typed::Null);
    }
    let text = v.as_text().unwrap_or_default();
    Ok(match field {
        FieldVal::Int(_) => Typed::Int(v.as_int()),
        FieldVal::Date(_) => {
            if text.trim().is_empty() {
                Typed::Null
            } else {
                Typed::Date(parse_date(&text, tz).ok_or_else(|| {
                    ApiError::new(
                        400,
                        "ERROR_ARGUMENT",
                        &format!("Invalid value of filter field {name}: {text:?}"),
                    )
                    .with_argument("FILTER")
                })?)
            }
        }
        FieldVal::Str(_) | FieldVal::Null => Typed::Str(text),
    })
}

fn compare(field: &FieldVal, v: &Typed) -> Option<Ordering> {
    match (field, v) {
        (FieldVal::Null, _) | (_, Typed::Null) => None,
        (FieldVal::Int(a), Typed::Int(b)) => Some(a.cmp(b)),
        (FieldVal::Int(a), Typed::Str(b)) => Some(a.cmp(&super::params::php_intval(b))),
        (FieldVal::Date(a), Typed::Date(b)) => Some(a.cmp(b)),
        (FieldVal::Str(a), Typed::Str(b)) => Some(a.as_str().cmp(b.as_str())),
        (FieldVal::Str(a), Typed::Int(b)) => Some(a.as_str().cmp(b.to_string().as_str())),
        _ => None,
    }
}

fn equal(field: &FieldVal, v: &Typed) -> bool {
    match (field, v) {
        // `FIELD = ""`/null matches empty and NULL values (the portal's legacy filter semantics).
        (FieldVal::Null, Typed::Null) => true,
        (FieldVal::Null, Typed::Str(s)) => s.is_empty(),
        (FieldVal::Str(a), Typed::Null) => a.is_empty(),
        (FieldVal::Str(a), Typed::Str(b)) => a.eq_ignore_ascii_case(b),
        _ => compare(field, v) == Some(Ordering::Equal),
    }
}

/// Evaluates all conditions (AND) against one row; `get` returns a field by name (`None` = unknown field).
pub fn matches(
    conds: &[Cond],
    tz: FixedOffset,
    get: &dyn Fn(&str) -> Option<FieldVal>,
    strict_fields: bool,
) -> Result<bool, ApiError> {
    for c in conds {
        let Some(field) = get(&c.field) else {
            if strict_fields {
                return Err(ApiError::new(
                    400,
                    "ERROR_CORE",
                    &format!("Unknown field definition `{}`", c.field),
                ));
            }
            continue;
        };
        let typed: Vec<Typed> = c
            .values
            .iter()
            .map(|v| convert(&field, v, tz, &c.field))
            .collect::<Result<_, _>>()?;
        let first = typed.first().cloned().unwrap_or(Typed::Null);
        let ok = match c.op {
            Op::Eq | Op::In => {
                if c.list && typed.is_empty() {
                    false
                } else {
                    typed.iter().any(|v| equal(&field, v))
                }
            }
            Op::Ne | Op::NotIn => !typed.iter().any(|v| equal(&field, v)),
            Op::Gt => typed
                .iter()
                .any(|v| compare(&field, v) == Some(Ordering::Greater)),
            Op::Ge => typed.iter().any(|v| {
                matches!(
                    compare(&field, v),
                    Some(Ordering::Greater | Ordering::Equal)
                )
            }),
            Op::Lt => typed
                .iter()
                .any(|v| compare(&field, v) == Some(Ordering::Less)),
            Op::Le => typed
                .iter()
                .any(|v| matches!(compare(&field, v), Some(Ordering::Less | Ordering::Equal))),
            Op::Between | Op::NotBetween => {
                let lo = first.clone();
                let hi = typed.get(1).cloned().unwrap_or(first);
                let inside =
                    matches!(
                        compare(&field, &lo),
                        Some(Ordering::Greater | Ordering::Equal)
                    ) && matches!(compare(&field, &hi), Some(Ordering::Less | Ordering::Equal));
                (c.op == Op::Between) == inside
            }
            Op::Like | Op::NotLike => {
                let hay = match &field {
                    FieldVal::Str(s) => s.to_lowercase(),
                    FieldVal::Int(n) => n.to_string(),
                    FieldVal::Date(d) => d.to_rfc3339(),
                    FieldVal::Null => String::new(),
                };
                let found = c.values.iter().any(|v| {
                    let needle = v
                        .as_text()
                        .unwrap_or_default()
                        .to_lowercase()
                        .replace('%', "");
                    hay.contains(&needle)
                });
                (c.op == Op::Like) == found
                    && !(c.op == Op::Like && matches!(field, FieldVal::Null))
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sort comparison of two field values (NULLs first, like MySQL ascending).
pub fn order(a: &FieldVal, b: &FieldVal) -> Ordering {
    match (a, b) {
        (FieldVal::Null, FieldVal::Null) => Ordering::Equal,
        (FieldVal::Null, _) => Ordering::Less,
        (_, FieldVal::Null) => Ordering::Greater,
        (FieldVal::Int(x), FieldVal::Int(y)) => x.cmp(y),
        (FieldVal::Date(x), FieldVal::Date(y)) => x.cmp(y),
        (FieldVal::Str(x), FieldVal::Str(y)) => x.cmp(y),
        (FieldVal::Int(x), FieldVal::Str(y)) => x.to_string().cmp(y),
        (FieldVal::Str(x), FieldVal::Int(y)) => x.cmp(&y.to_string()),
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitrix24::params::from_form;

    fn msk() -> FixedOffset {
        FixedOffset::east_opt(3 * 3600).unwrap()
    }

    #[test]
    fn ops_and_types() {
        let p = from_form(
            "F[%3E%3DID]=5&F[!type]=2&F[><DUR][]=10&F[><DUR][]=20&F[%25NAME]=ван&F[U]=&F[%3E%3DD]=2026-03-10",
        );
        let conds = parse(p.get_ci("F"));
        let row = |id: i64, ty: i64, dur: i64, name: &str, d: &str| {
            let name = name.to_string();
            let d = parse_date(d, msk()).unwrap();
            move |f: &str| match f {
                "ID" => Some(FieldVal::Int(id)),
                "TYPE" => Some(FieldVal::Int(ty)),
                "DUR" => Some(FieldVal::Int(dur)),
                "NAME" => Some(FieldVal::Str(name.clone())),
                "U" => Some(FieldVal::Null),
                "D" => Some(FieldVal::Date(d)),
                _ => None,
            }
        };
        // (case, ID, TYPE, DUR, NAME, D, matches)
        let cases = [
            (
                "all conditions hold",
                5,
                1,
                15,
                "Иван",
                "2026-03-10T00:00:00+03:00",
                true,
            ),
            (
                ">= ID fails",
                4,
                1,
                15,
                "Иван",
                "2026-03-10T00:00:00+03:00",
                false,
            ),
            (
                "! TYPE fails",
                5,
                2,
                15,
                "Иван",
                "2026-03-10T00:00:00+03:00",
                false,
            ),
            (
                "between DUR fails",
                5,
                1,
                25,
                "Иван",
                "2026-03-10T00:00:00+03:00",
                false,
            ),
            (
                "% NAME fails",
                5,
                1,
                15,
                "Пётр",
                "2026-03-10T00:00:00+03:00",
                false,
            ),
            // 23:59 UTC on the 9th is 02:59 on the 10th in Moscow.
            (
                "date in UTC, the 10th in Moscow",
                5,
                1,
                15,
                "Иван",
                "2026-03-09T23:59:00+00:00",
                true,
            ),
            (
                "date in UTC, the 9th in Moscow",
                5,
                1,
                15,
                "Иван",
                "2026-03-09T20:59:59+00:00",
                false,
            ),
        ];
        for (case, id, ty, dur, name, d, expected) in cases {
            let got = matches(&conds, msk(), &row(id, ty, dur, name, d), true).unwrap();
            assert_eq!(got, expected, "{case}");
        }
    }
}

//! Lenient readers for Bitrix24's JSON values.
//!
//! The portal sends numbers as strings (`"17"`), sometimes as numbers (`RECORD_FILE_ID`), and says "no value" with
//! `null`, `""`, `"0"`, `0` or `false` depending on field and version. These helpers turn any of those into
//! `Option`s so that one odd value never fails a whole page.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A scalar as text: strings as they are, numbers and booleans rendered, `null` → `None`.
/// Empty strings stay `Some("")` — callers decide whether that means "no value".
pub fn value_to_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "Y".into() } else { "N".into() }),
        // `[]`/`{}` are PHP's empty array: no value.
        Value::Array(a) if a.is_empty() => None,
        Value::Object(o) if o.is_empty() => None,
        other => Some(other.to_string()),
    }
}

/// Non-empty text, or `None` for `null`, `""`, `[]`.
pub fn text(v: &Value) -> Option<String> {
    value_to_text(v).filter(|s| !s.trim().is_empty())
}

/// A non-negative integer where `0` means "no value" (ids, votes).
pub fn id(v: &Value) -> Option<u64> {
    number(v).filter(|n| *n != 0)
}

/// A non-negative integer where `0` is a real value (durations, counters).
pub fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 0.0)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

/// `Y`/`N`, `1`/`0`, `true`/`false` as a boolean; anything else → `None`.
pub fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        Value::String(s) => match s.trim().to_ascii_uppercase().as_str() {
            "Y" | "1" | "TRUE" => Some(true),
            "N" | "0" | "FALSE" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Serde adapter: deserialize any JSON value, then apply one of the readers above.
pub fn de_with<'de, D, T>(d: D, f: fn(&Value) -> Option<T>) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let v = Value::deserialize(d)?;
    Ok(f(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_treat_zero_and_empty_as_absent() {
        for v in [
            json!(null),
            json!(""),
            json!("0"),
            json!(0),
            json!(false),
            json!([]),
        ] {
            assert_eq!(id(&v), None, "{v}");
        }
        assert_eq!(id(&json!("17")), Some(17));
        assert_eq!(id(&json!(9079)), Some(9079));
        assert_eq!(id(&json!(" 42 ")), Some(42));
    }

    #[test]
    fn numbers_keep_zero() {
        assert_eq!(number(&json!("0")), Some(0));
        assert_eq!(number(&json!("95")), Some(95));
        assert_eq!(number(&json!("12.0")), Some(12));
        assert_eq!(number(&json!("abc")), None);
        assert_eq!(number(&json!("-5")), None);
    }

    #[test]
    fn text_drops_empty_values() {
        assert_eq!(text(&json!("")), None);
        assert_eq!(text(&json!([])), None);
        assert_eq!(text(&json!("x")), Some("x".into()));
        assert_eq!(text(&json!(12)), Some("12".into()));
    }

    #[test]
    fn flags() {
        assert_eq!(flag(&json!("Y")), Some(true));
        assert_eq!(flag(&json!("N")), Some(false));
        assert_eq!(flag(&json!(true)), Some(true));
        assert_eq!(flag(&json!("maybe")), None);
    }
}

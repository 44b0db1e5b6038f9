//! Response envelopes (`result`, `time`, `next`, `total`, or `error` with `error_description`), read leniently:
//! numbers as strings, `[]` for empty maps.

use std::collections::BTreeMap;

use b24sense_core::lenient;
use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The `time` block of a response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseTime {
    pub start: Option<f64>,
    pub finish: Option<f64>,
    pub duration: Option<f64>,
    pub processing: Option<f64>,
    pub date_start: Option<DateTime<FixedOffset>>,
    pub date_finish: Option<DateTime<FixedOffset>>,
    /// Unix seconds when the oldest operating-time bucket of this method expires (cloud only).
    pub operating_reset_at: Option<f64>,
    /// Accumulated operating seconds of this method in the 10-minute window (cloud only).
    pub operating: Option<f64>,
}

fn float(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn date(v: Option<&Value>) -> Option<DateTime<FixedOffset>> {
    v.and_then(lenient::text)
        .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
}

impl ResponseTime {
    pub fn from_value(v: &Value) -> Option<ResponseTime> {
        let o = v.as_object()?;
        Some(ResponseTime {
            start: float(o.get("start")),
            finish: float(o.get("finish")),
            duration: float(o.get("duration")),
            processing: float(o.get("processing")),
            date_start: date(o.get("date_start")),
            date_finish: date(o.get("date_finish")),
            operating_reset_at: float(o.get("operating_reset_at")),
            operating: float(o.get("operating")),
        })
    }
}

/// A successful call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub result: Value,
    pub next: Option<u64>,
    pub total: Option<u64>,
    pub time: Option<ResponseTime>,
}

/// What one body turned out to be.
pub(crate) enum Envelope {
    Ok(ApiResponse),
    Err(ApiError, Option<ResponseTime>),
}

/// Reads a JSON body as a success or error envelope; `None` when it is neither (treated as malformed).
pub(crate) fn parse_envelope(body: &Value, status: u16) -> Option<Envelope> {
    let o = body.as_object()?;
    let time = o.get("time").and_then(ResponseTime::from_value);
    if let Some(code) = o.get("error") {
        let code = lenient::value_to_text(code).unwrap_or_default();
        let description = o
            .get("error_description")
            .and_then(lenient::value_to_text)
            .unwrap_or_default();
        return Some(Envelope::Err(
            ApiError::new(code, description, status),
            time,
        ));
    }
    let result = o.get("result")?.clone();
    Some(Envelope::Ok(ApiResponse {
        result,
        next: o.get("next").and_then(lenient::number),
        total: o.get("total").and_then(lenient::number),
        time,
    }))
}

/// The result of a `batch` call. Commands that failed are in `errors`, not in `results`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchResponse {
    pub results: BTreeMap<String, Value>,
    pub errors: BTreeMap<String, ApiError>,
    pub next: BTreeMap<String, u64>,
    pub total: BTreeMap<String, u64>,
    pub time: Option<ResponseTime>,
}

/// PHP's empty array `[]` for an empty map; a list (numeric command names) is keyed by index.
fn as_map(v: Option<&Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.clone()))
            .collect(),
        _ => Map::new(),
    }
}

impl BatchResponse {
    pub(crate) fn from_response(resp: ApiResponse) -> Result<BatchResponse, String> {
        let outer = match &resp.result {
            Value::Object(o) => o,
            Value::Array(a) if a.is_empty() => {
                return Ok(BatchResponse {
                    time: resp.time,
                    ..Default::default()
                })
            }
            _ => return Err("batch result is not an object".into()),
        };
        let mut out = BatchResponse {
            time: resp.time.clone(),
            ..Default::default()
        };
        for (k, v) in as_map(outer.get("result")) {
            out.results.insert(k, v);
        }
        for (k, v) in as_map(outer.get("result_error")) {
            let e = match &v {
                Value::Object(o) => ApiError::new(
                    o.get("error")
                        .and_then(lenient::value_to_text)
                        .unwrap_or_default(),
                    o.get("error_description")
                        .and_then(lenient::value_to_text)
                        .unwrap_or_default(),
                    200,
                ),
                // Older portals put just the message string.
                other => ApiError::new("", lenient::value_to_text(other).unwrap_or_default(), 200),
            };
            out.results.remove(&k);
            out.errors.insert(k, e);
        }
        for (k, v) in as_map(outer.get("result_next")) {
            if let Some(n) = lenient::number(&v) {
                out.next.insert(k, n);
            }
        }
        for (k, v) in as_map(outer.get("result_total")) {
            if let Some(n) = lenient::number(&v) {
                out.total.insert(k, n);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn success_envelope_with_time() {
        let body = json!({"result": [1], "next": "50", "total": 137, "time": {"start": 1773141841.10,
            "finish": 1773141841.69, "duration": 0.59, "processing": "0.41", "date_start": "2026-03-10T14:24:01+03:00",
            "date_finish": "2026-03-10T14:24:01+03:00", "operating_reset_at": 1773142441, "operating": 3.31}});
        let Some(Envelope::Ok(r)) = parse_envelope(&body, 200) else {
            panic!("not ok")
        };
        assert_eq!(r.next, Some(50));
        assert_eq!(r.total, Some(137));
        let t = r.time.unwrap();
        assert_eq!(t.operating, Some(3.31));
        assert_eq!(t.operating_reset_at, Some(1773142441.0));
        assert_eq!(t.processing, Some(0.41));
        assert_eq!(t.date_start.unwrap().offset().local_minus_utc(), 3 * 3600);
    }

    #[test]
    fn error_and_odd_bodies() {
        let Some(Envelope::Err(e, _)) =
            parse_envelope(&json!({"error": "", "error_description": "Not found"}), 400)
        else {
            panic!()
        };
        assert_eq!(e.kind(), crate::ApiErrorKind::NotFound);
        assert!(parse_envelope(&json!({"foo": 1}), 200).is_none());
        assert!(parse_envelope(&json!([1]), 200).is_none());
    }

    #[test]
    fn batch_with_empty_php_maps() {
        let resp = ApiResponse {
            result: json!({"result": {"a": [1], "b": []}, "result_error": [], "result_total": {"a": "3"},
                "result_next": [], "result_time": []}),
            next: None,
            total: None,
            time: None,
        };
        let b = BatchResponse::from_response(resp).unwrap();
        assert_eq!(b.results.len(), 2);
        assert!(b.errors.is_empty());
        assert_eq!(b.total["a"], 3);
    }
}

//! PHP bracket form encoding (nested keys as `A[B][0]=…`), used for `batch` command strings.

use serde_json::Value;

/// Percent-encodes everything outside RFC 3986 unreserved characters (so `+` → `%2B`, `&` → `%26`,
/// `=` → `%3D`, `[`/`]` in names and values).
pub(crate) fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes a JSON object as a PHP query string: `FILTER[%3EID]=5&FILTER[PORTAL_USER_ID][0]=7&SORT=ID`.
///
/// The brackets that give the structure stay literal; names inside them and all values are percent-encoded
/// (a `=` inside a name such as `>=CALL_START_DATE` would otherwise end the name early). Like PHP's
/// `http_build_query`: `true`/`false` → `1`/`0`, `null` and empty arrays/objects are left out.
/// A non-object top level is encoded as the single value of an empty name, which is rarely what you want.
pub fn encode_php_query(params: &Value) -> String {
    let mut pairs = Vec::new();
    match params {
        Value::Object(map) => {
            for (k, v) in map {
                push(&mut pairs, pct(k), v);
            }
        }
        Value::Null => {}
        other => push(&mut pairs, String::new(), other),
    }
    pairs.join("&")
}

fn push(pairs: &mut Vec<String>, name: String, v: &Value) {
    match v {
        Value::Null => {}
        Value::Bool(b) => pairs.push(format!("{name}={}", if *b { 1 } else { 0 })),
        Value::Number(n) => pairs.push(format!("{name}={}", pct(&n.to_string()))),
        Value::String(s) => pairs.push(format!("{name}={}", pct(s))),
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                push(pairs, format!("{name}[{i}]"), item);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                push(pairs, format!("{name}[{}]", pct(k)), item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_lists_and_escapes() {
        let q = encode_php_query(&json!({
            "FILTER": {">=CALL_START_DATE": "2025-01-01T00:00:00+03:00", "PORTAL_USER_ID": [5, 7]},
            "SORT": "ID", "start": -1, "ADMIN_MODE": true, "skip": null, "empty": []
        }));
        assert_eq!(
            q,
            "ADMIN_MODE=1&FILTER[%3E%3DCALL_START_DATE]=2025-01-01T00%3A00%3A00%2B03%3A00\
             &FILTER[PORTAL_USER_ID][0]=5&FILTER[PORTAL_USER_ID][1]=7&SORT=ID&start=-1"
        );
        assert_eq!(
            encode_php_query(&json!({"fields": {"PHONE": [{"VALUE": "a&b=c [x]"}]}})),
            "fields[PHONE][0][VALUE]=a%26b%3Dc%20%5Bx%5D"
        );
        assert_eq!(encode_php_query(&json!({"id": 9079})), "id=9079");
        assert_eq!(encode_php_query(&json!({})), "");
        assert_eq!(encode_php_query(&json!({"x y": "ü"})), "x%20y=%C3%BC");
    }
}

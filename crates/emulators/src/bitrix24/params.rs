//! Request parameters as the portal sees them: an ordered PHP-array-like tree decoded from JSON or from PHP
//! bracket form encoding (`FILTER[>=CALL_START_DATE]=…`, `FILTER[PORTAL_USER_ID][]=5`), query and body merged.
//!
//! Order matters (batch commands run in map order), so this is not `serde_json::Value` (whose map is sorted).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One parameter value. PHP arrays are ordered maps; JSON arrays stay lists.
#[derive(Debug, Clone, PartialEq)]
pub enum P {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    List(Vec<P>),
    Map(Vec<(String, P)>),
}

impl P {
    pub fn empty_map() -> P {
        P::Map(Vec::new())
    }

    /// Case-insensitive lookup of a key in a map (top-level parameter names are case-insensitive on the portal).
    pub fn get_ci(&self, key: &str) -> Option<&P> {
        match self {
            P::Map(m) => m
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a top-level parameter (case-insensitive name); "" when it is missing or not a scalar.
    pub fn text_ci(&self, key: &str) -> String {
        self.get_ci(key).and_then(P::as_text).unwrap_or_default()
    }

    /// Scalars as text, the way PHP would see them (`true` → "1", `false` → "", null → "").
    pub fn as_text(&self) -> Option<String> {
        match self {
            P::Null => Some(String::new()),
            P::Bool(b) => Some(if *b { "1".into() } else { String::new() }),
            P::Num(n) => Some(n.to_string()),
            P::Str(s) => Some(s.clone()),
            P::List(_) | P::Map(_) => None,
        }
    }

    /// PHP `intval`: leading optional sign and digits, anything else → 0.
    pub fn as_int(&self) -> i64 {
        match self {
            P::Num(n) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .unwrap_or(0),
            P::Bool(b) => i64::from(*b),
            P::Str(s) => php_intval(s),
            _ => 0,
        }
    }

    /// Elements of a list, or the values of a map (a PHP array given with bracket keys).
    pub fn elements(&self) -> Option<Vec<&P>> {
        match self {
            P::List(l) => Some(l.iter().collect()),
            P::Map(m) => Some(m.iter().map(|(_, v)| v).collect()),
            _ => None,
        }
    }

    /// Truthiness for flags like `halt`, `ADMIN_MODE`: `1`, `Y`, `true`.
    pub fn truthy(&self) -> bool {
        match self {
            P::Bool(b) => *b,
            P::Num(n) => n.as_f64().is_some_and(|f| f != 0.0),
            P::Str(s) => matches!(s.trim().to_ascii_uppercase().as_str(), "1" | "Y" | "TRUE"),
            _ => false,
        }
    }

    /// Inserts or replaces `key` in a map (body wins over query).
    pub fn set(&mut self, key: String, value: P) {
        if let P::Map(m) = self {
            if let Some(slot) = m.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = value;
            } else {
                m.push((key, value));
            }
        }
    }

    /// Merges another top-level map into this one; `other` wins.
    pub fn merge(&mut self, other: P) {
        if let P::Map(m) = other {
            for (k, v) in m {
                self.set(k, v);
            }
        }
    }

    /// Applies `f` to every string leaf (batch `$result[...]` substitution).
    pub fn map_strings(&mut self, f: &mut dyn FnMut(&str) -> String) {
        match self {
            P::Str(s) => *s = f(s),
            P::List(l) => l.iter_mut().for_each(|v| v.map_strings(f)),
            P::Map(m) => m.iter_mut().for_each(|(_, v)| v.map_strings(f)),
            _ => {}
        }
    }
}

/// PHP `intval` of a string.
pub fn php_intval(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let n: i64 = digits[..end].parse().unwrap_or(0);
    if neg {
        -n
    } else {
        n
    }
}

impl<'de> Deserialize<'de> for P {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<P, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = P;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<P, E> {
                Ok(P::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<P, E> {
                Ok(P::Num(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<P, E> {
                Ok(P::Num(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<P, E> {
                Ok(serde_json::Number::from_f64(n).map_or(P::Null, P::Num))
            }
            fn visit_str<E>(self, s: &str) -> Result<P, E> {
                Ok(P::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<P, E> {
                Ok(P::Str(s))
            }
            fn visit_unit<E>(self) -> Result<P, E> {
                Ok(P::Null)
            }
            fn visit_none<E>(self) -> Result<P, E> {
                Ok(P::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<P, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(P::List(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<P, A::Error> {
                let mut v: Vec<(String, P)> = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, P>()? {
                    if let Some(slot) = v.iter_mut().find(|(kk, _)| *kk == k) {
                        slot.1 = x;
                    } else {
                        v.push((k, x));
                    }
                }
                Ok(P::Map(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a JSON body; anything but an object gives an empty map (the portal ignores such bodies).
pub fn from_json(body: &[u8]) -> Option<P> {
    match serde_json::from_slice::<P>(body) {
        Ok(p @ P::Map(_)) => Some(p),
        Ok(_) => Some(P::empty_map()),
        Err(_) => None,
    }
}

/// PHP `parse_str`: `a[b][c]=v&a[]=w`, with `.`/space in the top-level name turned into `_`.
pub fn from_form(s: &str) -> P {
    let mut root = P::empty_map();
    for (key, value) in form_urlencoded_pairs(s) {
        let (head, path) = split_key(&key);
        if head.is_empty() {
            continue;
        }
        let head: String = head
            .chars()
            .map(|c| if c == '.' || c == ' ' { '_' } else { c })
            .collect();
        let mut segs = vec![Some(head)];
        segs.extend(path);
        insert_path(&mut root, &segs, P::Str(value));
    }
    root
}

fn form_urlencoded_pairs(s: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(s).unwrap_or_else(|_| {
        // Invalid UTF-8 after decoding etc.: decode what we can, pair by pair.
        s.split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let k =
                    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("{k}=")).ok()?;
                let v =
                    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("x={v}")).ok()?;
                Some((k.first()?.0.clone(), v.first()?.1.clone()))
            })
            .collect()
    })
}

/// `a[b][]` → ("a", [Some("b"), None]). Unbalanced brackets: PHP keeps the rest as part of the name.
fn split_key(key: &str) -> (&str, Vec<Option<String>>) {
    let Some(open) = key.find('[') else {
        return (key, Vec::new());
    };
    let head = &key[..open];
    let mut segs = Vec::new();
    let mut rest = &key[open..];
    while let Some(r) = rest.strip_prefix('[') {
        let Some(close) = r.find(']') else { break };
        let seg = &r[..close];
        segs.push(if seg.is_empty() {
            None
        } else {
            Some(seg.to_string())
        });
        rest = &r[close + 1..];
    }
    if segs.is_empty() {
        return (key, Vec::new());
    }
    (head, segs)
}

fn insert_path(node: &mut P, segs: &[Option<String>], value: P) {
    if !matches!(node, P::Map(_)) {
        *node = P::empty_map();
    }
    let P::Map(m) = node else { return };
    let key = match &segs[0] {
        Some(k) => k.clone(),
        None => {
            // `[]`: next integer key, like PHP.
            let next = m
                .iter()
                .filter_map(|(k, _)| k.parse::<i64>().ok())
                .max()
                .map_or(0, |n| n + 1);
            next.to_string()
        }
    };
    if segs.len() == 1 {
        if let Some(slot) = m.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            m.push((key, value));
        }
        return;
    }
    let idx = match m.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            m.push((key, P::empty_map()));
            m.len() - 1
        }
    };
    insert_path(&mut m[idx].1, &segs[1..], value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_brackets() {
        let p = from_form(
            "FILTER%5B%3E%3DCALL_START_DATE%5D=2025-01-01T00%3A00%3A00%2B03%3A00&FILTER[PORTAL_USER_ID][0]=5&FILTER[PORTAL_USER_ID][1]=7&a[]=x&a[]=y&start=-1&x.y=1",
        );
        let f = p.get_ci("filter").unwrap();
        assert_eq!(
            f.get_ci(">=CALL_START_DATE"),
            Some(&P::Str("2025-01-01T00:00:00+03:00".into()))
        );
        let users: Vec<_> = f.get_ci("PORTAL_USER_ID").unwrap().elements().unwrap();
        assert_eq!(users.len(), 2);
        let a = p.get_ci("a").unwrap();
        assert_eq!(
            a,
            &P::Map(vec![
                ("0".into(), P::Str("x".into())),
                ("1".into(), P::Str("y".into()))
            ])
        );
        assert_eq!(p.get_ci("start").unwrap().as_int(), -1);
        assert!(p.get_ci("x_y").is_some());
    }

    #[test]
    fn json_keeps_order() {
        let p = from_json(br#"{"cmd":{"c10":"a","c2":"b","c1":"c"}}"#).unwrap();
        let P::Map(m) = p.get_ci("cmd").unwrap() else {
            panic!()
        };
        let keys: Vec<_> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["c10", "c2", "c1"]);
    }

    #[test]
    fn intval() {
        assert_eq!(php_intval("12abc"), 12);
        assert_eq!(php_intval("$result[x]"), 0);
        assert_eq!(php_intval("-3"), -3);
    }
}

//! `batch`: up to [`BATCH_MAX`] commands in one request, run in order with `$result[...]` (and `$next`, `$total`,
//! `$time`, `$error`) references to earlier answers substituted, answered as PHP arrays; `halt` stops at the
//! first error.

use serde_json::{json, Value};

use super::error::ApiError;
use super::methods::{normalize_method, Ctx, MethodOk};
use super::params::{self, P};
use super::state::PortalState;

/// Commands per batch.
pub const BATCH_MAX: usize = 50;

impl PortalState {
    pub(crate) fn batch(&self, ctx: &Ctx, p: &P) -> MethodOk {
        let halt = p.get_ci("halt").is_some_and(P::truthy);
        let mut acc = BatchAcc::default();
        for (i, (name, cmd)) in commands(p).into_iter().enumerate() {
            if i >= BATCH_MAX {
                acc.error.push((
                    name,
                    json!({"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}),
                ));
                continue;
            }
            let (method, mut sub) = parse_command(&cmd);
            sub.map_strings(&mut |s| acc.substitute(s));
            let outcome = if matches!(method.as_str(), "batch" | "download" | "upload") {
                Err(ApiError::new(
                    405,
                    "ERROR_BATCH_METHOD_NOT_ALLOWED",
                    "Method is not allowed for batch usage",
                ))
            } else {
                self.stats().count_method(&method);
                self.call_method(ctx, &method, &sub)
            };
            match outcome {
                Ok((r, time)) => {
                    acc.result.push((name.clone(), r.result));
                    if let Some(t) = r.total {
                        acc.total.push((name.clone(), json!(t)));
                    }
                    if let Some(n) = r.next {
                        acc.next.push((name.clone(), json!(n)));
                    }
                    acc.time.push((name, time));
                }
                Err(e) => {
                    acc.error.push((name, e.body()));
                    if halt {
                        break;
                    }
                }
            }
        }
        MethodOk {
            result: json!({
                "result": php_array(acc.result),
                "result_error": php_array(acc.error),
                "result_total": php_array(acc.total),
                "result_next": php_array(acc.next),
                "result_time": php_array(acc.time),
            }),
            total: None,
            next: None,
        }
    }
}

/// A PHP array → JSON: `[]` when empty, a list when keys are 0..n, otherwise an object.
pub fn php_array(entries: Vec<(String, Value)>) -> Value {
    if entries.is_empty() {
        return json!([]);
    }
    if entries
        .iter()
        .enumerate()
        .all(|(i, (k, _))| *k == i.to_string())
    {
        return Value::Array(entries.into_iter().map(|(_, v)| v).collect());
    }
    Value::Object(entries.into_iter().collect())
}

/// Results accumulated while a batch runs (what `$result[...]` etc. refer to).
#[derive(Default)]
pub struct BatchAcc {
    pub result: Vec<(String, Value)>,
    pub error: Vec<(String, Value)>,
    pub total: Vec<(String, Value)>,
    pub next: Vec<(String, Value)>,
    pub time: Vec<(String, Value)>,
}

impl BatchAcc {
    fn lookup(&self, kind: &str, path: &[String]) -> Option<String> {
        let list = match kind {
            "result" => &self.result,
            "error" => &self.error,
            "total" => &self.total,
            "next" => &self.next,
            "time" => &self.time,
            _ => return None,
        };
        let (first, rest) = path.split_first()?;
        let mut v = &list.iter().find(|(k, _)| k == first)?.1;
        for seg in rest {
            v = match v {
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                Value::Object(o) => o.get(seg)?,
                _ => return None,
            };
        }
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(if *b { "1".into() } else { String::new() }),
            _ => None,
        }
    }

    /// Replaces `$result[a][b]…` (and `$next`, `$total`, `$time`, `$error`) inside one parameter value.
    /// A reference that does not resolve to a scalar stays as literal text, as on the portal.
    pub fn substitute(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let tail = &rest[pos + 1..];
            let kind = ["result", "next", "total", "error", "time"]
                .into_iter()
                .find(|k| tail.starts_with(k) && tail[k.len()..].starts_with('['));
            let Some(kind) = kind else {
                out.push('$');
                rest = tail;
                continue;
            };
            let mut p = &tail[kind.len()..];
            let mut path = Vec::new();
            while let Some(r) = p.strip_prefix('[') {
                let Some(close) = r.find(']') else { break };
                if close == 0 {
                    break;
                }
                path.push(r[..close].to_string());
                p = &r[close + 1..];
            }
            let consumed = 1 + tail.len() - p.len();
            let literal = &rest[pos..pos + consumed];
            match (!path.is_empty())
                .then(|| self.lookup(kind, &path))
                .flatten()
            {
                Some(v) => out.push_str(&v),
                None => out.push_str(literal),
            }
            rest = &rest[pos + consumed..];
        }
        out.push_str(rest);
        out
    }
}

/// Splits a batch command `method?query` into the lower-cased method and its parameters (PHP form decoding).
pub fn parse_command(cmd: &str) -> (String, P) {
    let (m, q) = cmd.split_once('?').unwrap_or((cmd, ""));
    (normalize_method(m), params::from_form(q))
}

/// The commands of a batch in map order; a list gives keys 0..n.
pub fn commands(p: &P) -> Vec<(String, String)> {
    match p.get_ci("cmd") {
        Some(P::Map(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_text().unwrap_or_default()))
            .collect(),
        Some(P::List(l)) => l
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.as_text().unwrap_or_default()))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let acc = BatchAcc {
            result: vec![("c0".into(), json!([{"ID": "7"}, {"ID": "9"}]))],
            next: vec![("c0".into(), json!(50))],
            ..Default::default()
        };
        assert_eq!(acc.substitute("$result[c0][1][ID]"), "9");
        assert_eq!(acc.substitute("x$next[c0]y"), "x50y");
        assert_eq!(acc.substitute("$result[c0][49][ID]"), "$result[c0][49][ID]");
        assert_eq!(
            acc.substitute("$result[c0]"),
            "$result[c0]",
            "arrays stay literal"
        );
        assert_eq!(acc.substitute("$5 and $resultx"), "$5 and $resultx");
    }

    #[test]
    fn php_arrays() {
        assert_eq!(php_array(vec![]), json!([]));
        assert_eq!(
            php_array(vec![("0".into(), json!(1)), ("1".into(), json!(2))]),
            json!([1, 2])
        );
        assert_eq!(php_array(vec![("a".into(), json!(1))]), json!({"a": 1}));
    }
}

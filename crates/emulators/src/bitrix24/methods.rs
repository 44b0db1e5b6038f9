//! The REST methods of the emulated portal (all but `batch` and the application's own): call history, users,
//! CRM records, Disk files, `profile`, `app.info`, `scope`, `server.time`.

use std::cmp::Ordering;

use serde_json::{json, Map, Value};

use super::clock::{portal_date, portal_now};
use super::data::{CrmKind, FieldVal};
use super::error::ApiError;
use super::filter::{self, Cond};
use super::params::P;
use super::recordings::download_url;
use super::state::PortalState;

/// Rows per list page (fixed on the portal).
pub const PAGE: usize = 50;

/// Who is calling: the operating limiter's key and the download token to embed in `DOWNLOAD_URL`.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub cred: String,
    pub user_id: u64,
    pub webhook: bool,
    /// The `auth` value of `DOWNLOAD_URL` (the caller's token). Never logged.
    pub download_auth: String,
}

/// A successful method result with the list-paging extras.
#[derive(Debug, Clone)]
pub struct MethodOk {
    pub result: Value,
    pub total: Option<u64>,
    pub next: Option<u64>,
}

impl MethodOk {
    pub(crate) fn plain(result: Value) -> MethodOk {
        MethodOk {
            result,
            total: None,
            next: None,
        }
    }
}

/// Runs one (non-batch) method.
pub fn dispatch(inner: &PortalState, ctx: &Ctx, method: &str, p: &P) -> Result<MethodOk, ApiError> {
    match method {
        "voximplant.statistic.get" => statistic_get(inner, p),
        "user.get" => user_get(inner, p),
        "user.current" => user_one(inner, ctx.user_id),
        "user.admin" => Ok(MethodOk::plain(json!(true))),
        "profile" => profile(inner, ctx),
        "app.info" => Ok(MethodOk::plain(app_info(inner, ctx))),
        "scope" => Ok(MethodOk::plain(json!(SCOPES))),
        "disk.file.get" => disk_file_get(inner, ctx, p),
        "server.time" => Ok(MethodOk::plain(json!(portal_date(&portal_now(
            inner.config.utc_offset
        ))))),
        m => {
            if let Some(r) = super::openlines::dispatch(inner, m, p) {
                return r;
            }
            if let Some((kind, op)) = crm_method(m) {
                return match op {
                    "list" => crm_list(inner, kind, p),
                    _ => crm_get(inner, kind, p),
                };
            }
            Err(ApiError::method_not_found())
        }
    }
}

pub const SCOPES: [&str; 6] = ["crm", "disk", "im", "imopenlines", "telephony", "user"];

fn crm_method(m: &str) -> Option<(CrmKind, &'static str)> {
    let rest = m.strip_prefix("crm.")?;
    let (kind, op) = rest.split_once('.')?;
    let kind = CrmKind::parse(kind)?;
    match op {
        "list" => Some((kind, "list")),
        "get" => Some((kind, "get")),
        _ => None,
    }
}

/// `start`: 0, 50, … or −1 (no COUNT, no offset).
fn start_param(p: &P) -> i64 {
    p.get_ci("start").map_or(0, P::as_int)
}

/// Pages already-filtered, already-sorted indices: `(page, total, next)` by the portal's rules.
fn page_of<T: Copy>(all: &[T], start: i64) -> (Vec<T>, Option<u64>, Option<u64>) {
    if start < 0 {
        return (all.iter().take(PAGE).copied().collect(), Some(0), None);
    }
    let start = start as usize;
    let page: Vec<T> = all.iter().skip(start).take(PAGE).copied().collect();
    let total = all.len();
    let next = (start + PAGE < total).then_some((start + PAGE) as u64);
    (page, Some(total as u64), next)
}

fn statistic_get(inner: &PortalState, p: &P) -> Result<MethodOk, ApiError> {
    let tz = inner.config.utc_offset;
    // CALL_RECORD_URL points at the "external" recording host (another port), like Voximplant's storage.
    let base = inner.records_base.as_str();
    let live = inner.live.view();
    let calls = live.visible(&inner.data.calls);
    let conds = filter::parse(p.get_ci("FILTER"));
    let start = start_param(p);
    // SORT and ORDER must both be given, else no ordering is applied (natural order = ID ascending).
    let sort = p
        .get_ci("SORT")
        .and_then(P::as_text)
        .map(|s| s.trim().to_uppercase())
        .filter(|s| !s.is_empty());
    let order = p
        .get_ci("ORDER")
        .and_then(P::as_text)
        .map(|s| s.trim().to_uppercase());
    let sort = match (sort, order) {
        (Some(s), Some(o)) if s != "CALL_TYPE" && (o == "ASC" || o == "DESC") => {
            if calls.first().is_some_and(|c| c.field(&s, base).is_none()) {
                None
            } else {
                Some((s, o == "DESC"))
            }
        }
        _ => None,
    };
    let eval = |i: usize| -> Result<bool, ApiError> {
        let c = live.row(&calls[i]);
        filter::matches(&conds, tz, &|f| c.field(f, base), true)
    };
    // Keyset fast path: `>ID`/`>=ID` bounds let a scan start in the middle.
    let mut lo = 0usize;
    for c in &conds {
        if c.field == "ID" && !c.list {
            let v = c.values.first().map_or(0, P::as_int);
            let bound = match c.op {
                filter::Op::Gt => v.saturating_add(1),
                filter::Op::Ge => v,
                _ => continue,
            };
            let pp = calls.partition_point(|r| (r.id as i64) < bound);
            lo = lo.max(pp);
        }
    }
    let natural_asc = sort.as_ref().is_none_or(|(s, desc)| s == "ID" && !desc);
    let want_all = start >= 0 || !natural_asc;
    let mut idx: Vec<usize> = Vec::new();
    if natural_asc {
        for i in lo..calls.len() {
            if eval(i)? {
                idx.push(i);
                if !want_all && idx.len() >= PAGE {
                    break;
                }
            }
        }
    } else {
        for i in lo..calls.len() {
            if eval(i)? {
                idx.push(i);
            }
        }
        if let Some((s, desc)) = &sort {
            idx.sort_by(|a, b| {
                let o = filter::order(
                    &calls[*a].field(s, base).unwrap_or(FieldVal::Null),
                    &calls[*b].field(s, base).unwrap_or(FieldVal::Null),
                )
                .then(calls[*a].id.cmp(&calls[*b].id));
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            });
        }
    }
    let (page, total, next) = page_of(&idx, start);
    let rows: Vec<Value> = page
        .into_iter()
        .map(|i| live.row(&calls[i]).to_json(base))
        .collect();
    Ok(MethodOk {
        result: Value::Array(rows),
        total,
        next,
    })
}

/// `order` as `{FIELD: ASC|DESC}` (crm, user) or `sort` + `order` strings (user.get).
fn order_spec(p: &P) -> Option<(String, bool)> {
    match p.get_ci("order") {
        Some(P::Map(m)) => m.first().map(|(k, v)| {
            (
                k.to_uppercase(),
                v.as_text()
                    .is_some_and(|d| d.trim().eq_ignore_ascii_case("DESC")),
            )
        }),
        other => {
            let field = p.get_ci("sort").and_then(P::as_text)?;
            let desc = other
                .and_then(P::as_text)
                .is_some_and(|d| d.trim().eq_ignore_ascii_case("DESC"));
            Some((field.trim().to_uppercase(), desc))
        }
    }
}

fn sort_idx(
    idx: &mut [usize],
    spec: &Option<(String, bool)>,
    get: &dyn Fn(usize, &str) -> Option<FieldVal>,
) {
    if let Some((f, desc)) = spec {
        idx.sort_by(|a, b| {
            let o: Ordering = filter::order(
                &get(*a, f).unwrap_or(FieldVal::Null),
                &get(*b, f).unwrap_or(FieldVal::Null),
            )
            .then(a.cmp(b));
            if *desc {
                o.reverse()
            } else {
                o
            }
        });
    }
}

const USER_PARAMS: [&str; 9] = [
    "sort",
    "order",
    "start",
    "admin_mode",
    "select",
    "filter",
    "auth",
    "access_token",
    "ADMIN_MODE",
];

fn user_get(inner: &PortalState, p: &P) -> Result<MethodOk, ApiError> {
    let tz = inner.config.utc_offset;
    // `FILTER` or, in the legacy style (`user.get?ID=5`), the top-level fields themselves.
    let legacy;
    let filter_p = match p.get_ci("FILTER") {
        Some(f) => Some(f),
        None => {
            let P::Map(m) = p else {
                return Err(ApiError::argument("FILTER"));
            };
            legacy = P::Map(
                m.iter()
                    .filter(|(k, _)| !USER_PARAMS.iter().any(|u| u.eq_ignore_ascii_case(k)))
                    .cloned()
                    .collect(),
            );
            Some(&legacy)
        }
    };
    let mut conds: Vec<Cond> = filter::parse(filter_p);
    for c in conds.iter_mut() {
        if c.field == "ACTIVE" {
            c.values = c
                .values
                .iter()
                .map(|v| P::Str(if v.truthy() { "Y".into() } else { "N".into() }))
                .collect();
        }
    }
    let users = &inner.data.users;
    let mut idx = Vec::new();
    for (i, u) in users.iter().enumerate() {
        if filter::matches(&conds, tz, &|f| u.field(f), false)? {
            idx.push(i);
        }
    }
    sort_idx(&mut idx, &order_spec(p), &|i, f| users[i].field(f));
    let (page, total, next) = page_of(&idx, start_param(p));
    Ok(MethodOk {
        result: Value::Array(page.into_iter().map(|i| users[i].to_json()).collect()),
        total,
        next,
    })
}

fn user_one(inner: &PortalState, id: u64) -> Result<MethodOk, ApiError> {
    let u = inner
        .data
        .user_by_id(id)
        .ok_or_else(|| ApiError::new(400, "ERROR_CORE", "User not found"))?;
    Ok(MethodOk::plain(u.to_json()))
}

fn profile(inner: &PortalState, ctx: &Ctx) -> Result<MethodOk, ApiError> {
    let u = inner
        .data
        .user_by_id(ctx.user_id)
        .ok_or_else(|| ApiError::new(400, "ERROR_CORE", "User not found"))?;
    Ok(MethodOk::plain(json!({
        "ID": u.id.to_string(), "ADMIN": true, "NAME": u.name, "LAST_NAME": u.last_name,
        "PERSONAL_GENDER": if u.female { "F" } else { "M" }, "PERSONAL_PHOTO": null, "TIME_ZONE": "",
        "TIME_ZONE_OFFSET": inner.config.utc_offset.local_minus_utc(),
    })))
}

fn app_info(inner: &PortalState, ctx: &Ctx) -> Value {
    let ent = inner.config.rate.0 >= 250;
    let license = if ent { "ru_ent250" } else { "ru_project" };
    if ctx.webhook {
        json!({"SCOPE": SCOPES, "LICENSE": license})
    } else {
        json!({"ID": "1", "CODE": "local.emulator.1", "VERSION": "1", "STATUS": "L", "INSTALLED": true,
            "PAYMENT_EXPIRED": "N", "DAYS": null, "LANGUAGE_ID": "ru", "LICENSE": license,
            "LICENSE_TYPE": if ent { "ent250" } else { "project" }, "LICENSE_FAMILY": if ent { "ent" } else { "project" }})
    }
}

/// Multi-fields `.list` leaves out unless `select` names them.
const MULTI: [&str; 4] = ["PHONE", "EMAIL", "WEB", "IM"];

fn crm_list(inner: &PortalState, kind: CrmKind, p: &P) -> Result<MethodOk, ApiError> {
    let tz = inner.config.utc_offset;
    let recs = inner.data.crm(kind);
    let conds = filter::parse(p.get_ci("filter"));
    let mut idx = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        if filter::matches(&conds, tz, &|f| r.field(f), false)? {
            idx.push(i);
        }
    }
    sort_idx(&mut idx, &order_spec(p), &|i, f| recs[i].field(f));
    let select: Vec<String> = p
        .get_ci("select")
        .and_then(P::elements)
        .map(|els| {
            els.iter()
                .filter_map(|e| e.as_text())
                .map(|s| s.trim().to_uppercase())
                .collect()
        })
        .unwrap_or_default();
    let (page, total, next) = page_of(&idx, start_param(p));
    let rows = page
        .into_iter()
        .map(|i| {
            let Value::Object(all) = recs[i].to_json() else {
                return Value::Null;
            };
            let keep = |k: &str| {
                if k == "ID" {
                    return true;
                }
                let named = select.iter().any(|s| s == k);
                if MULTI.contains(&k) {
                    return named;
                }
                select.is_empty() || named || select.iter().any(|s| s == "*")
            };
            Value::Object(
                all.into_iter()
                    .filter(|(k, _)| keep(k))
                    .collect::<Map<_, _>>(),
            )
        })
        .collect();
    Ok(MethodOk {
        result: Value::Array(rows),
        total,
        next,
    })
}

fn crm_get(inner: &PortalState, kind: CrmKind, p: &P) -> Result<MethodOk, ApiError> {
    let id = p.get_ci("id").map_or(0, P::as_int);
    if id <= 0 {
        return Err(ApiError::new(400, "", "ID is not defined or invalid."));
    }
    let rec = inner
        .data
        .crm_by_id(kind, id as u64)
        .ok_or_else(|| ApiError::new(400, "", "Not found"))?;
    Ok(MethodOk::plain(rec.to_json()))
}

fn disk_file_get(inner: &PortalState, ctx: &Ctx, p: &P) -> Result<MethodOk, ApiError> {
    let raw = p.get_ci("id").map_or(0, P::as_int);
    if raw <= 0 {
        return Err(ApiError::new(
            400,
            "ERROR_ARGUMENT",
            "Could not find value for parameter {id}",
        )
        .with_argument("id"));
    }
    let id = raw as u64;
    let not_found = || {
        ApiError::new(
            404,
            "ERROR_NOT_FOUND",
            &format!("Could not find entity with id '{id}'."),
        )
    };
    let call = inner
        .data
        .files
        .get(&id)
        .filter(|&&i| inner.recording_available(i))
        .map(|i| &inner.data.calls[*i])
        .ok_or_else(not_found)?;
    let rec = call.record.as_ref().ok_or_else(not_found)?;
    let t = portal_date(&call.start);
    let name = call.disk_file_name();
    let user = call.user.unwrap_or(1).to_string();
    Ok(MethodOk::plain(json!({
        "ID": id.to_string(), "NAME": name, "CODE": null, "STORAGE_ID": "1", "TYPE": "file",
        "PARENT_ID": (100 + call.start.format("%m").to_string().parse::<u64>().unwrap_or(0)).to_string(),
        "DELETED_TYPE": "0", "GLOBAL_CONTENT_VERSION": "1", "FILE_ID": (id + 50_000).to_string(),
        "SIZE": rec.bytes.to_string(), "CREATE_TIME": t, "UPDATE_TIME": t, "DELETE_TIME": null,
        "CREATED_BY": user, "UPDATED_BY": user, "DELETED_BY": "0",
        "DOWNLOAD_URL": download_url(inner, &ctx.download_auth, id),
        "DETAIL_URL": format!("{}docs/file/VI_CALLS/{}/{}", inner.base, call.start.format("%Y-%m"), id),
    })))
}

/// Method names are case-insensitive; `.json` is the default suffix.
pub(crate) fn normalize_method(m: &str) -> String {
    let m = m.trim().trim_matches('/').to_ascii_lowercase();
    m.strip_suffix(".json")
        .or_else(|| m.strip_suffix(".xml"))
        .unwrap_or(&m)
        .to_string()
}

//! Open Lines (chats) on the emulated portal: lines and connectors, sessions with their CRM activities
//! (`crm.activity.list`/`get`, provider `IMOPENLINES_SESSION`) and histories (`imopenlines.session.history.get`,
//! `imopenlines.dialog.get`), through the same routes, bucket, operating limiter and faults as every REST method.
//!
//! - `gen`: the sessions, deterministic from the seed ([`OpenLinesConfig`] says how many and what shapes);
//! - `script`: each session's messages, generated when asked;
//! - `render`: the wire shapes; `hooks`: what tests steer and read ([`ChatSessionInfo`], closing a session).
//!
//! Sessions still open are `COMPLETED=N` and their history lacks the closing notice until a test closes them
//! ([`Bitrix24Emulator::close_chat_session`](super::Bitrix24Emulator::close_chat_session)). Some sessions are
//! owned by a CRM record that was deleted since: its lookups find nothing.

mod gen;
mod hooks;
mod render;
mod script;

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration as ChronoDuration, FixedOffset};
use serde_json::Value;

pub use hooks::ChatSessionInfo;

use super::clock::portal_now;
use super::config::PortalConfig;
use super::data::{FieldVal, UserRec};
use super::error::ApiError;
use super::filter;
use super::methods::{MethodOk, PAGE};
use super::params::P;
use super::state::PortalState;
use gen::SessionRec;
use render::Status;

/// How many sessions to generate and how they look.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenLinesConfig {
    /// Sessions over the portal's window (the first eight show every case: bot and transfer with an attachment,
    /// a very long text, an open session, no client message, a deleted CRM owner, a long history, a bot alone,
    /// two transfers).
    pub sessions: usize,
    /// Sessions still open (`COMPLETED=N`) beyond the catalogue's one.
    pub open_share: f64,
    /// Messages of the long-history session.
    pub long_history_messages: usize,
    /// Bytes of the very long client message.
    pub long_text_bytes: usize,
    /// Client–operator exchanges of an ordinary session, drawn from `[min, max)` (each adds two messages to
    /// the notices and greetings: the default gives 9 to 23 messages).
    pub exchanges: (u32, u32),
}

impl Default for OpenLinesConfig {
    fn default() -> Self {
        OpenLinesConfig {
            sessions: 24,
            open_share: 0.1,
            long_history_messages: 400,
            long_text_bytes: 12_000,
            exchanges: (2, 9),
        }
    }
}

/// The generated sessions and which of them were closed since.
#[derive(Debug, Default)]
pub struct OpenLinesData {
    /// Ascending by activity ID (and start time).
    sessions: Vec<SessionRec>,
    config: OpenLinesConfig,
    /// Session index → when a test closed it.
    closed: Mutex<HashMap<usize, DateTime<FixedOffset>>>,
}

/// Generates the portal's Open Lines (from a generator of their own: the calls do not change).
pub fn generate(cfg: &PortalConfig, users: &[UserRec], crm_counts: [usize; 4]) -> OpenLinesData {
    OpenLinesData {
        sessions: gen::generate(cfg, users, crm_counts),
        config: cfg.open_lines.clone(),
        closed: Mutex::new(HashMap::new()),
    }
}

impl OpenLinesData {
    /// Which sessions were closed since, taken once per request.
    fn closed_now(&self) -> HashMap<usize, DateTime<FixedOffset>> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn status(&self, idx: usize) -> Status {
        self.status_in(idx, &self.closed_now())
    }

    fn status_in(&self, idx: usize, closed: &HashMap<usize, DateTime<FixedOffset>>) -> Status {
        let r = &self.sessions[idx];
        match (r.open, closed.get(&idx).copied()) {
            (true, Some(t)) => Status {
                completed: true,
                end: t,
                last_updated: t,
            },
            (true, None) => Status {
                completed: false,
                end: r.start + ChronoDuration::days(1),
                last_updated: r.end,
            },
            (false, _) => Status {
                completed: true,
                end: r.end,
                last_updated: r.end + ChronoDuration::seconds(5),
            },
        }
    }

    fn by_session(&self, session_id: u64) -> Option<usize> {
        // Session IDs grow with the index.
        self.sessions
            .binary_search_by_key(&session_id, |s| s.session_id)
            .ok()
    }

    /// Closes an open session now; false when it is unknown or already closed.
    fn close(&self, session_id: u64, now: DateTime<FixedOffset>) -> bool {
        let Some(idx) = self
            .by_session(session_id)
            .filter(|i| self.sessions[*i].open)
        else {
            return false;
        };
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if closed.contains_key(&idx) {
            return false;
        }
        closed.insert(idx, now);
        true
    }
}

/// Runs an Open Lines method; `None` when `method` is not one.
pub(crate) fn dispatch(
    inner: &PortalState,
    method: &str,
    p: &P,
) -> Option<Result<MethodOk, ApiError>> {
    Some(match method {
        "crm.activity.list" => activity_list(inner, p),
        "crm.activity.get" => activity_get(inner, p),
        "imopenlines.session.history.get" => history_get(inner, p),
        "imopenlines.dialog.get" => dialog_get(inner, p),
        _ => return None,
    })
}

fn ol(inner: &PortalState) -> &OpenLinesData {
    &inner.data.open_lines
}

fn select_of(p: &P) -> Vec<String> {
    p.get_ci("select")
        .and_then(P::elements)
        .map(|els| {
            els.iter()
                .filter_map(|e| e.as_text())
                .map(|s| s.trim().to_uppercase())
                .collect()
        })
        .unwrap_or_default()
}

/// `crm.activity.list`: `filter` (the portal's operators), `order` by one field, `select`, `start` (−1 for
/// keyset paging). Only Open Lines activities exist on this portal.
fn activity_list(inner: &PortalState, p: &P) -> Result<MethodOk, ApiError> {
    let data = ol(inner);
    let tz = inner.config.utc_offset;
    let conds = filter::parse(p.get_ci("filter"));
    let start = p.get_ci("start").map_or(0, P::as_int);
    let order = match p.get_ci("order") {
        Some(P::Map(m)) => m.first().map(|(k, v)| {
            let desc = v
                .as_text()
                .is_some_and(|d| d.trim().eq_ignore_ascii_case("DESC"));
            (k.trim().to_uppercase(), desc)
        }),
        _ => None,
    };
    let closed = data.closed_now();
    let get = |i: usize, f: &str| render::field(&data.sessions[i], &data.status_in(i, &closed), f);
    // Keyset fast path: a `>ID` bound starts the scan in the middle.
    let mut lo = 0usize;
    for c in conds.iter().filter(|c| c.field == "ID" && !c.list) {
        let v = c.values.first().map_or(0, P::as_int);
        let bound = match c.op {
            filter::Op::Gt => v.saturating_add(1),
            filter::Op::Ge => v,
            _ => continue,
        };
        lo = lo.max(
            data.sessions
                .partition_point(|r| (r.activity_id as i64) < bound),
        );
    }
    let id_asc = order.as_ref().is_none_or(|(f, desc)| f == "ID" && !desc);
    let mut idx = Vec::new();
    for i in lo..data.sessions.len() {
        if filter::matches(&conds, tz, &|f| get(i, f), false)? {
            idx.push(i);
            if id_asc && start < 0 && idx.len() >= PAGE {
                break;
            }
        }
    }
    if let Some((f, desc)) = order.filter(|_| !id_asc) {
        idx.sort_by(|a, b| {
            let o = filter::order(
                &get(*a, &f).unwrap_or(FieldVal::Null),
                &get(*b, &f).unwrap_or(FieldVal::Null),
            )
            .then(a.cmp(b));
            if desc {
                o.reverse()
            } else {
                o
            }
        });
    }
    let (page, total, next): (Vec<usize>, u64, Option<u64>) = if start < 0 {
        (idx.into_iter().take(PAGE).collect(), 0, None)
    } else {
        let s = start as usize;
        let next = (s + PAGE < idx.len()).then_some((s + PAGE) as u64);
        let total = idx.len() as u64;
        (idx.into_iter().skip(s).take(PAGE).collect(), total, next)
    };
    let select = select_of(p);
    let rows = page
        .into_iter()
        .map(|i| render::activity(&data.sessions[i], &data.status_in(i, &closed), &select))
        .collect();
    Ok(MethodOk {
        result: Value::Array(rows),
        total: Some(total),
        next,
    })
}

fn activity_get(inner: &PortalState, p: &P) -> Result<MethodOk, ApiError> {
    let data = ol(inner);
    let id = p.get_ci("id").map_or(0, P::as_int);
    if id <= 0 {
        return Err(ApiError::new(400, "", "ID is not defined or invalid."));
    }
    let i = data
        .sessions
        .binary_search_by_key(&(id as u64), |s| s.activity_id)
        .map_err(|_| ApiError::new(400, "", "Not found"))?;
    Ok(MethodOk::plain(render::activity(
        &data.sessions[i],
        &data.status(i),
        &["*".into(), "COMMUNICATIONS".into()],
    )))
}

/// The session named by `SESSION_ID`, else the latest session of `CHAT_ID`.
fn find_session(data: &OpenLinesData, p: &P) -> Result<usize, ApiError> {
    let denied = || {
        ApiError::new(
            400,
            "ACCESS_ERROR",
            "You do not have access to the specified dialog",
        )
    };
    let session = p.get_ci("SESSION_ID").map_or(0, P::as_int);
    if session > 0 {
        return data.by_session(session as u64).ok_or_else(denied);
    }
    let chat = p.get_ci("CHAT_ID").map_or(0, P::as_int);
    if chat > 0 {
        return data
            .sessions
            .iter()
            .rposition(|s| s.chat_id == chat as u64)
            .ok_or_else(denied);
    }
    Err(
        ApiError::new(400, "SESSION_ID_EMPTY", "Session ID can't be empty")
            .with_argument("SESSION_ID"),
    )
}

fn history_get(inner: &PortalState, p: &P) -> Result<MethodOk, ApiError> {
    let data = ol(inner);
    let i = find_session(data, p)?;
    let r = &data.sessions[i];
    let messages = script::script(r, &data.config, &inner.data.users);
    Ok(MethodOk::plain(render::history(
        r,
        &data.status(i),
        &messages,
        &inner.data.users,
    )))
}

/// `imopenlines.dialog.get`: the chat card (snake_case, as that method writes it).
fn dialog_get(inner: &PortalState, p: &P) -> Result<MethodOk, ApiError> {
    let data = ol(inner);
    let i = find_session(data, p)?;
    let r = &data.sessions[i];
    let st = data.status(i);
    let messages = script::script(r, &data.config, &inner.data.users);
    let h = render::history(r, &st, &messages, &inner.data.users);
    let card = &h["chat"][r.chat_id.to_string()];
    Ok(MethodOk::plain(serde_json::json!({
        "id": r.chat_id, "dialog_id": format!("chat{}", r.chat_id), "name": card["name"], "owner": r.responsible(),
        "entity_type": "LINES", "entity_id": r.user_code, "entity_data_1": card["entityData1"],
        "entity_data_2": card["entityData2"], "entity_data_3": "", "date_create": card["dateCreate"],
        "manager_list": r.operators, "message_count": card["messageCount"],
        "last_message_id": h["usersMessage"][format!("chat{}", r.chat_id)].as_array().and_then(|a| a.last()).cloned(),
        "type": "lines",
    })))
}

/// Now in the portal's zone (for closing sessions).
pub(crate) fn now(inner: &PortalState) -> DateTime<FixedOffset> {
    portal_now(inner.config.utc_offset)
}

//! Open Lines chats: finished sessions from their CRM activities and each session's history.
//!
//! No REST method lists Open Lines sessions; every session has a CRM activity of provider `IMOPENLINES_SESSION`
//! (`ASSOCIATED_ENTITY_ID` = the session, `COMPLETED` = `Y` once it closed). So:
//! - [`Bitrix24Client::list_chat_sessions`]: one `batch` of up to 50 chained keyset pages of `crm.activity.list`
//!   (2,500 sessions per request), like the call listing;
//! - [`Bitrix24Client::chat_sessions`]: `imopenlines.session.history.get` for up to 50 sessions per `batch`
//!   request — messages ordered by ID with their BB-code turned into plain text, who wrote each, the users and
//!   the chat's CRM binding ([`b24sense_core::chat`]);
//! - [`Bitrix24Client::chat_activities_by_id`]: activities read again by ID (an `ONCRMACTIVITYUPDATE` event, an
//!   open session re-checked).

use std::collections::{BTreeMap, BTreeSet};

use b24sense_core::chat::{ChatActivity, ChatFilter, ChatHistory, ChatSession};
use b24sense_core::lenient;
use chrono::FixedOffset;
use serde_json::{json, Value};

use crate::client::Bitrix24Client;
use crate::error::{ApiError, Error};
use crate::methods::{rows, ChainedListing, ChainedRows};
use crate::php::encode_php_query;

/// Rows per list page (fixed by Bitrix24), commands per batch, sessions per history request.
const PAGE: usize = 50;

/// The activity fields a session needs (narrow select: less for the portal to read and send).
pub const ACTIVITY_SELECT: [&str; 13] = [
    "ID",
    "ASSOCIATED_ENTITY_ID",
    "ORIGIN_ID",
    "START_TIME",
    "END_TIME",
    "COMPLETED",
    "RESPONSIBLE_ID",
    "PROVIDER_PARAMS",
    "PROVIDER_TYPE_ID",
    "RESULT_SOURCE_ID",
    "OWNER_TYPE_ID",
    "OWNER_ID",
    "LAST_UPDATED",
];

/// One request's worth of session activities.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionPage {
    /// Ascending activity ID.
    pub sessions: Vec<ChatActivity>,
    /// The highest activity `ID` read (also of rows that failed to parse): the next `after_id`.
    pub last_id: Option<u64>,
    /// A page came back short: there is nothing after `last_id` right now.
    pub exhausted: bool,
    /// Rows that could not be read, with the reason.
    pub bad_rows: Vec<String>,
}

impl ChainedRows for SessionPage {
    fn read_rows(&mut self, rows: &[&Value], offset: FixedOffset) {
        self.read(rows, offset);
    }
    fn last_id(&self) -> Option<u64> {
        self.last_id
    }
    fn set_exhausted(&mut self) {
        self.exhausted = true;
    }
}

impl SessionPage {
    fn read(&mut self, page: &[&Value], offset: FixedOffset) {
        for row in page {
            let raw_id = row.get("ID").and_then(lenient::id);
            if let Some(id) = raw_id {
                self.last_id = Some(self.last_id.map_or(id, |l| l.max(id)));
            }
            match ChatActivity::from_bitrix(row, offset) {
                Ok(a) => self.sessions.push(a),
                Err(e) => self.bad_rows.push(e.to_string()),
            }
        }
    }
}

/// What one session's history read gave.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionRead {
    Read(Box<ChatSession>),
    /// The portal refused this session (`ACCESS_ERROR`, …); the others are unaffected.
    Failed(ApiError),
}

fn list_query(filter: &serde_json::Map<String, Value>) -> String {
    encode_php_query(&json!({
        "filter": filter, "order": {"ID": "ASC"}, "select": ACTIVITY_SELECT, "start": -1,
    }))
}

impl Bitrix24Client {
    fn offset_or_utc(&self) -> FixedOffset {
        self.portal_offset()
            .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"))
    }

    /// One HTTP request: a `batch` of up to 50 chained keyset pages of `crm.activity.list` (`order[ID]=ASC`,
    /// `start=-1`, `filter` = `filter.to_bitrix_filter(after_id)` for page 0 and
    /// `filter[>ID]=$result[p{i-1}][49][ID]` after). Stops at the first page with < 50 rows.
    pub async fn list_chat_sessions(
        &self,
        filter: &ChatFilter,
        after_id: u64,
    ) -> Result<SessionPage, Error> {
        self.list_chat_sessions_pages(filter, after_id, PAGE).await
    }

    /// [`list_chat_sessions`](Self::list_chat_sessions) with fewer chained pages per request (1..=50).
    pub async fn list_chat_sessions_pages(
        &self,
        filter: &ChatFilter,
        after_id: u64,
        pages: usize,
    ) -> Result<SessionPage, Error> {
        let first = filter.to_bitrix_filter(after_id);
        let mut rest = first.clone();
        rest.remove(">ID");
        let listing = ChainedListing {
            method: "crm.activity.list",
            first_query: list_query(&first),
            rest_query: list_query(&rest),
            filter_key: "filter",
            what: "session",
        };
        self.list_chained(&listing, after_id, pages).await
    }

    /// Session activities read again by activity ID, open or closed (no other filter): `crm.activity.list` with
    /// `filter[ID]` = up to 50 IDs per command, 50 commands per request. Activities of other providers and IDs
    /// the portal does not return are absent. A failed command fails the read, so that absent means gone.
    pub async fn chat_activities_by_id(&self, ids: &[u64]) -> Result<SessionPage, Error> {
        let ids: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| *id > 0)
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        let filter = ChatFilter {
            include_open: true,
            ..ChatFilter::default()
        };
        let cmds: Vec<(String, String)> = ids
            .chunks(PAGE)
            .enumerate()
            .map(|(i, chunk)| {
                let mut f = filter.to_bitrix_filter(0);
                f.remove(">ID");
                f.insert("ID".into(), json!(chunk));
                (
                    format!("a{i:03}"),
                    format!("crm.activity.list?{}", list_query(&f)),
                )
            })
            .collect();
        let mut out = SessionPage {
            exhausted: true,
            ..SessionPage::default()
        };
        let offset = self.offset_or_utc();
        for part in cmds.chunks(PAGE) {
            let resp = self.batch(part, false).await?;
            if let Some(e) = resp.errors.values().next() {
                return Err(Error::Api(e.clone()));
            }
            for v in resp.results.values() {
                out.read(&rows(Some(v)), offset);
            }
        }
        out.sessions.sort_by_key(|a| a.activity_id);
        Ok(out)
    }

    /// Each session's history (`imopenlines.session.history.get?SESSION_ID=…`), 50 sessions per `batch` request,
    /// the requests one after another under the client's limiter. The answer is keyed by session ID; a session
    /// the portal refused is [`SessionRead::Failed`]. A whole request failing fails the call.
    pub async fn chat_sessions(
        &self,
        activities: &[ChatActivity],
    ) -> Result<BTreeMap<u64, SessionRead>, Error> {
        let mut by_session: BTreeMap<u64, &ChatActivity> = BTreeMap::new();
        for a in activities {
            by_session.entry(a.session_id).or_insert(a);
        }
        let list: Vec<&ChatActivity> = by_session.into_values().collect();
        let offset = self.offset_or_utc();
        let mut out = BTreeMap::new();
        for part in list.chunks(PAGE) {
            let cmds: Vec<(String, String)> = part
                .iter()
                .map(|a| {
                    (
                        format!("h{}", a.session_id),
                        format!(
                            "imopenlines.session.history.get?SESSION_ID={}",
                            a.session_id
                        ),
                    )
                })
                .collect();
            let resp = self.batch(&cmds, false).await?;
            for a in part {
                let n = format!("h{}", a.session_id);
                let read = if let Some(e) = resp.errors.get(&n) {
                    SessionRead::Failed(e.clone())
                } else if let Some(v) = resp.results.get(&n) {
                    match ChatHistory::from_bitrix(v, offset) {
                        Ok(history) => SessionRead::Read(Box::new(ChatSession {
                            activity: (*a).clone(),
                            history,
                        })),
                        Err(e) => SessionRead::Failed(ApiError::new(
                            "ERROR_UNEXPECTED_ANSWER",
                            format!("history of session {}: {e}", a.session_id),
                            200,
                        )),
                    }
                } else {
                    SessionRead::Failed(ApiError::new(
                        "ERROR_UNEXPECTED_ANSWER",
                        format!(
                            "the portal returned no history for session {}",
                            a.session_id
                        ),
                        200,
                    ))
                };
                out.insert(a.session_id, read);
            }
        }
        Ok(out)
    }
}

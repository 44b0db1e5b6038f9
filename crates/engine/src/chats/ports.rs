//! The two small traits through which the chat export reaches the outside world, beside the calls'
//! [`crate::ports`]: a [`ChatSource`] (a Bitrix24 portal's Open Lines) and a [`TextSink`] (a SpeechSense chat
//! connection). Implemented for the real clients in [`super::adapters`]; the logic is tested against fakes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use b24sense_core::chat::{ChatActivity, ChatFilter, ChatMessage, ChatSession};
use b24sense_core::{CrmInfo, CrmRef, TalkFields};

use crate::ports::Classified;

/// A run of session activities from the listing, ascending by activity `ID`.
#[derive(Debug, Clone, Default)]
pub struct SessionPage {
    pub sessions: Vec<ChatActivity>,
    /// No more sessions after this page.
    pub exhausted: bool,
    /// The highest activity `ID` the portal returned (unreadable rows included), for the next page.
    pub last_id: Option<u64>,
    /// Rows that could not be read, with the reason (reported, never silently dropped).
    pub bad_rows: Vec<String>,
}

/// Where Open Lines sessions come from (a Bitrix24 portal).
pub trait ChatSource: Send + Sync + 'static {
    type Error: Classified;

    /// The next page(s) of session activities with activity `ID > after_id` qualifying under `filter` (which may
    /// include sessions still open: the export records them as waiting without reading their history).
    fn list_sessions(
        &self,
        filter: &ChatFilter,
        after_id: u64,
    ) -> impl Future<Output = Result<SessionPage, Self::Error>> + Send;

    /// These activities as the portal shows them now, open or closed, whatever the filter; IDs the portal no longer
    /// returns are absent. For sessions the ledger holds unfinished (open ones, a stopped run's).
    fn sessions_by_id(
        &self,
        activity_ids: &[u64],
    ) -> impl Future<Output = Result<SessionPage, Self::Error>> + Send;

    /// The histories of these sessions (at most 50: one request), keyed by session ID; a session the portal
    /// refused is `Err(reason)` and does not affect the others.
    fn histories(
        &self,
        sessions: &[ChatActivity],
    ) -> impl Future<Output = Result<BTreeMap<u64, Result<ChatSession, String>>, Self::Error>> + Send;

    /// Display names of the CRM records the sessions are bound to; missing entries mean "could not be read".
    fn crm_names(
        &self,
        crm: &[CrmRef],
    ) -> impl Future<Output = Result<HashMap<CrmRef, CrmInfo>, Self::Error>> + Send;
}

/// Where chat talks go (a SpeechSense chat connection).
pub trait TextSink: Send + Sync + 'static {
    type Error: Classified;

    /// One `UploadText`; returns the new talk's ID.
    fn upload_text(
        &self,
        connection_id: &str,
        fields: &TalkFields,
        messages: &[ChatMessage],
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;

    /// Talks already stored for part `part` (1-based) of this session — searched by its `id` and `part` keys —, or
    /// `None` when searching is not configured (no organization, space and project IDs).
    fn find_talks(
        &self,
        connection_id: &str,
        session_id: u64,
        part: u32,
    ) -> impl Future<Output = Result<Option<Vec<String>>, Self::Error>> + Send;
}

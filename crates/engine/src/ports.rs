//! The two small traits through which the engine reaches the outside world.
//!
//! The engine knows a *source* of calls (Bitrix24) and a *sink* of talks (SpeechSense) only through these traits, so
//! its logic is tested against in-memory fakes while the real adapters ([`crate::adapters`]) are tested over sockets
//! against the emulators. The ledger is the concrete [`b24sense_store::Store`]: it already hides SQLite vs PostgreSQL.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use b24sense_core::{
    Call, CallFilter, Container, CrmInfo, CrmRef, ErrorClass, TalkFields, UserInfo,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use url::Url;

/// Every adapter error says what it means for the work; the engine's retry policy decides when to try again.
pub trait Classified: std::error::Error + Send + Sync + 'static {
    fn class(&self) -> ErrorClass;
}

/// A run of calls from the listing, ascending by `ID`.
#[derive(Debug, Clone, Default)]
pub struct CallPage {
    pub calls: Vec<Call>,
    /// No more calls after this page.
    pub exhausted: bool,
    /// The highest `ID` the portal returned (rows that failed to parse included), for the next page.
    pub last_id: Option<u64>,
    /// Rows the portal returned that could not be read, with the reason (reported, never silently dropped).
    pub bad_rows: Vec<String>,
}

/// Names looked up for the mapping. Missing entries mean "could not be read".
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub users: HashMap<u64, UserInfo>,
    pub crm: HashMap<CrmRef, CrmInfo>,
}

/// An open recording download: its announced size and its bytes as they arrive.
pub struct Recording {
    pub content_length: Option<u64>,
    pub bytes: BoxStream<'static, Result<Bytes, String>>,
    /// Time the source queued the request locally (rate-limit token, slot) before sending it: not load.
    pub queued: Duration,
}

/// Where calls and their recordings come from (a Bitrix24 portal).
pub trait CallSource: Send + Sync + 'static {
    type Error: Classified;

    /// The next page(s) of qualifying calls with `ID > after_id`, filtered by the portal.
    fn list_calls(
        &self,
        filter: &CallFilter,
        after_id: u64,
    ) -> impl Future<Output = Result<CallPage, Self::Error>> + Send;

    /// These calls (by statistic `ID`) as the portal shows them now, whatever the filter; IDs the portal no longer
    /// returns are absent. Only for calls the ledger already holds (recordings attached late, unfinished runs).
    fn calls_by_id(
        &self,
        ids: &[u64],
    ) -> impl Future<Output = Result<CallPage, Self::Error>> + Send;

    /// Operator and client names for these users and CRM records.
    fn lookup(
        &self,
        users: &[u64],
        crm: &[CrmRef],
    ) -> impl Future<Output = Result<Names, Self::Error>> + Send;

    /// Download addresses of Disk files; a per-file failure is `Err(reason)` in the map.
    fn resolve_files(
        &self,
        file_ids: &[u64],
    ) -> impl Future<Output = Result<HashMap<u64, Result<Url, String>>, Self::Error>> + Send;

    /// Starts downloading a recording.
    fn download(&self, url: &Url) -> impl Future<Output = Result<Recording, Self::Error>> + Send;

    /// Whether recording downloads from the portal's own host count against its request bucket now; `None` when
    /// the source has no such notion.
    fn downloads_counted(&self) -> Option<bool> {
        None
    }

    /// Counts downloads from the portal's own host from now on (the ledger remembers that the portal does).
    fn count_downloads(&self) {}

    /// Resolves once downloads from the portal's own host are counted (the source switched by itself after a
    /// rate-limit refusal); never for a source without the notion.
    fn downloads_now_counted(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Where talks go (a SpeechSense connection).
pub trait TalkSink: Send + Sync + 'static {
    type Error: Classified;

    /// Streams one recording with its metadata; returns the new talk's ID. If `audio` yields an error the upload
    /// must be abandoned so that nothing is stored.
    fn upload_audio(
        &self,
        connection_id: &str,
        fields: &TalkFields,
        container: Container,
        audio: BoxStream<'static, Result<Bytes, String>>,
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;

    /// Talks already stored for this Bitrix24 call (searched by `userMeta.id`), or `None` when searching is not
    /// configured for this sink (no organization/space/project IDs).
    fn find_talks(
        &self,
        connection_id: &str,
        call_id: u64,
    ) -> impl Future<Output = Result<Option<Vec<String>>, Self::Error>> + Send;
}

//! The portal as the bench's export sees it: [`CountingSource`] passes every call through to the real
//! [`Bitrix24Source`] and counts what the engine asked for (listing, look-ups, Disk batches, downloads by host), so
//! that the row can split the portal's requests by kind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use b24sense_core::{CallFilter, CrmRef};
use b24sense_engine::adapters::Bitrix24Source;
use b24sense_engine::ports::{CallPage, CallSource, Names, Recording};
use url::Url;

/// What the engine asked of the portal, counted at the port (the real adapter does the work).
#[derive(Debug, Default)]
pub(crate) struct SourceCounters {
    pub(crate) list_calls: AtomicU64,
    pub(crate) lookups: AtomicU64,
    pub(crate) looked_up: AtomicU64,
    pub(crate) disk_requests: AtomicU64,
    pub(crate) disk_resolved: AtomicU64,
    pub(crate) portal_downloads: AtomicU64,
    pub(crate) external_downloads: AtomicU64,
}

/// [`Bitrix24Source`] with counters: the engine passes at most 50 file IDs per `resolve_files`, so each call is
/// one `disk.file.get` batch, which splits the portal's `batch` count into Disk and listing/lookup requests.
pub(crate) struct CountingSource {
    pub(crate) inner: Bitrix24Source,
    pub(crate) portal_origin: url::Origin,
    pub(crate) counters: Arc<SourceCounters>,
}

impl CallSource for CountingSource {
    type Error = b24sense_bitrix24::Error;

    async fn list_calls(
        &self,
        filter: &CallFilter,
        after_id: u64,
    ) -> Result<CallPage, Self::Error> {
        self.counters.list_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.list_calls(filter, after_id).await
    }

    async fn calls_by_id(&self, ids: &[u64]) -> Result<CallPage, Self::Error> {
        self.counters.list_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.calls_by_id(ids).await
    }

    async fn lookup(&self, users: &[u64], crm: &[CrmRef]) -> Result<Names, Self::Error> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        self.counters
            .looked_up
            .fetch_add((users.len() + crm.len()) as u64, Ordering::Relaxed);
        self.inner.lookup(users, crm).await
    }

    async fn resolve_files(
        &self,
        file_ids: &[u64],
    ) -> Result<HashMap<u64, Result<Url, String>>, Self::Error> {
        self.counters.disk_requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .disk_resolved
            .fetch_add(file_ids.len() as u64, Ordering::Relaxed);
        self.inner.resolve_files(file_ids).await
    }

    async fn download(&self, url: &Url) -> Result<Recording, Self::Error> {
        let counter = if url.origin() == self.portal_origin {
            &self.counters.portal_downloads
        } else {
            &self.counters.external_downloads
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.download(url).await
    }

    fn downloads_counted(&self) -> Option<bool> {
        self.inner.downloads_counted()
    }

    fn count_downloads(&self) {
        self.inner.count_downloads()
    }

    async fn downloads_now_counted(&self) {
        self.inner.downloads_now_counted().await
    }
}

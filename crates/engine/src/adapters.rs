//! The real clients behind the engine's ports: a Bitrix24 portal as the [`CallSource`], a SpeechSense connection
//! as the [`TalkSink`].

use std::collections::HashMap;

use b24sense_bitrix24::{Bitrix24Client, CallChunk};
use b24sense_core::{CallFilter, Container, CrmRef, ErrorClass, TalkFields};
use b24sense_speechsense::{SearchScope, SourceError, SpeechSenseClient};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use url::Url;

use crate::ports::{CallPage, CallSource, Classified, Names, Recording, TalkSink};

impl Classified for b24sense_bitrix24::Error {
    fn class(&self) -> ErrorClass {
        b24sense_bitrix24::Error::class(self)
    }
}

impl Classified for b24sense_speechsense::Error {
    fn class(&self) -> ErrorClass {
        b24sense_speechsense::Error::class(self)
    }
}

/// A Bitrix24 portal reached through the REST client (webhook or OAuth).
#[derive(Clone)]
pub struct Bitrix24Source {
    client: Bitrix24Client,
}

impl Bitrix24Source {
    pub fn new(client: Bitrix24Client) -> Self {
        Bitrix24Source { client }
    }

    pub fn client(&self) -> &Bitrix24Client {
        &self.client
    }
}

impl From<CallChunk> for CallPage {
    fn from(chunk: CallChunk) -> CallPage {
        CallPage {
            calls: chunk.calls,
            exhausted: chunk.exhausted,
            last_id: chunk.last_id,
            bad_rows: chunk.bad_rows,
        }
    }
}

impl CallSource for Bitrix24Source {
    type Error = b24sense_bitrix24::Error;

    async fn list_calls(
        &self,
        filter: &CallFilter,
        after_id: u64,
    ) -> Result<CallPage, Self::Error> {
        Ok(self.client.list_calls(filter, after_id).await?.into())
    }

    async fn calls_by_id(&self, ids: &[u64]) -> Result<CallPage, Self::Error> {
        Ok(self.client.calls_by_id(ids).await?.into())
    }

    async fn lookup(&self, users: &[u64], crm: &[CrmRef]) -> Result<Names, Self::Error> {
        let found = self.client.lookup(users, crm).await?;
        Ok(Names {
            users: found.users,
            crm: found.crm,
        })
    }

    async fn resolve_files(
        &self,
        file_ids: &[u64],
    ) -> Result<HashMap<u64, Result<Url, String>>, Self::Error> {
        let resolved = self.client.disk_download_urls(file_ids).await?;
        Ok(resolved
            .into_iter()
            .map(|(id, r)| (id, r.map_err(|e| e.to_string())))
            .collect())
    }

    async fn download(&self, url: &Url) -> Result<Recording, Self::Error> {
        let d = self.client.download(url).await?;
        Ok(Recording {
            content_length: d.content_length,
            bytes: d.stream.map_err(|e| e.to_string()).boxed(),
            queued: d.queued,
        })
    }

    fn downloads_counted(&self) -> Option<bool> {
        Some(self.client.counts_portal_downloads())
    }

    fn count_downloads(&self) {
        self.client.count_portal_downloads();
    }

    async fn downloads_now_counted(&self) {
        self.client.portal_downloads_now_counted().await
    }
}

/// A SpeechSense connection reached through the gRPC client. With a search scope (organization, space and project
/// IDs) it can find talks already uploaded for a call, which resolves in-doubt uploads without duplicates.
#[derive(Clone)]
pub struct SpeechSenseSink {
    client: SpeechSenseClient,
    search: Option<SearchScope>,
}

impl SpeechSenseSink {
    pub fn new(client: SpeechSenseClient, search: Option<SearchScope>) -> Self {
        SpeechSenseSink { client, search }
    }
}

/// The metadata key holding the Bitrix24 call's statistic `ID` (one of the 28 call-history keys).
pub const CALL_ID_SEARCH_KEY: &str = "userMeta.id";

impl TalkSink for SpeechSenseSink {
    type Error = b24sense_speechsense::Error;

    async fn upload_audio(
        &self,
        connection_id: &str,
        fields: &TalkFields,
        container: Container,
        audio: BoxStream<'static, Result<Bytes, String>>,
    ) -> Result<String, Self::Error> {
        let audio = audio.map_err(SourceError).boxed();
        self.client
            .upload_audio(connection_id, fields, container, audio)
            .await
    }

    async fn find_talks(
        &self,
        connection_id: &str,
        call_id: u64,
    ) -> Result<Option<Vec<String>>, Self::Error> {
        let Some(scope) = &self.search else {
            return Ok(None);
        };
        let scope = SearchScope {
            connection_id: connection_id.to_string(),
            ..scope.clone()
        };
        let ids = self
            .client
            .search(
                &scope,
                &[(CALL_ID_SEARCH_KEY.to_string(), vec![call_id.to_string()])],
            )
            .await?;
        Ok(Some(ids))
    }
}

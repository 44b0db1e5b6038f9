//! The real clients behind the chat ports: the calls' [`Bitrix24Source`] (the same client, so the same request
//! bucket) as the [`ChatSource`], and a SpeechSense chat connection as the [`TextSink`].

use std::collections::{BTreeMap, HashMap};

use b24sense_bitrix24::SessionRead;
use b24sense_core::chat::{ChatActivity, ChatFilter, ChatMessage, ChatSession};
use b24sense_core::{CrmInfo, CrmRef, TalkFields};
use b24sense_speechsense::{SearchScope, SpeechSenseClient};

use super::ports::{ChatSource, SessionPage, TextSink};
use crate::adapters::{Bitrix24Source, CALL_ID_SEARCH_KEY};

/// The metadata key holding a chat part's number (1-based), searched with the session's `id`.
pub const PART_SEARCH_KEY: &str = "userMeta.part";

impl From<b24sense_bitrix24::SessionPage> for SessionPage {
    fn from(p: b24sense_bitrix24::SessionPage) -> SessionPage {
        SessionPage {
            sessions: p.sessions,
            exhausted: p.exhausted,
            last_id: p.last_id,
            bad_rows: p.bad_rows,
        }
    }
}

impl ChatSource for Bitrix24Source {
    type Error = b24sense_bitrix24::Error;

    async fn list_sessions(
        &self,
        filter: &ChatFilter,
        after_id: u64,
    ) -> Result<SessionPage, Self::Error> {
        Ok(self
            .client()
            .list_chat_sessions(filter, after_id)
            .await?
            .into())
    }

    async fn sessions_by_id(&self, activity_ids: &[u64]) -> Result<SessionPage, Self::Error> {
        Ok(self
            .client()
            .chat_activities_by_id(activity_ids)
            .await?
            .into())
    }

    async fn histories(
        &self,
        sessions: &[ChatActivity],
    ) -> Result<BTreeMap<u64, Result<ChatSession, String>>, Self::Error> {
        let read = self.client().chat_sessions(sessions).await?;
        Ok(read
            .into_iter()
            .map(|(id, r)| {
                let r = match r {
                    SessionRead::Read(s) => Ok(*s),
                    SessionRead::Failed(e) => Err(e.to_string()),
                };
                (id, r)
            })
            .collect())
    }

    async fn crm_names(&self, crm: &[CrmRef]) -> Result<HashMap<CrmRef, CrmInfo>, Self::Error> {
        Ok(self.client().lookup(&[], crm).await?.crm)
    }
}

/// A SpeechSense chat connection reached through the gRPC client. With a search scope (organization, space and
/// project IDs) it finds parts already stored, which resolves in-doubt uploads without duplicates.
#[derive(Clone)]
pub struct SpeechSenseTextSink {
    client: SpeechSenseClient,
    search: Option<SearchScope>,
}

impl SpeechSenseTextSink {
    pub fn new(client: SpeechSenseClient, search: Option<SearchScope>) -> Self {
        SpeechSenseTextSink { client, search }
    }
}

impl TextSink for SpeechSenseTextSink {
    type Error = b24sense_speechsense::Error;

    async fn upload_text(
        &self,
        connection_id: &str,
        fields: &TalkFields,
        messages: &[ChatMessage],
    ) -> Result<String, Self::Error> {
        let messages: Vec<b24sense_speechsense::ChatMessage> = messages
            .iter()
            .map(|m| b24sense_speechsense::ChatMessage {
                user_id: m.user_id.clone(),
                timestamp: m.timestamp,
                text: m.text.clone(),
            })
            .collect();
        self.client
            .upload_text(connection_id, fields, &messages)
            .await
    }

    async fn find_talks(
        &self,
        connection_id: &str,
        session_id: u64,
        part: u32,
    ) -> Result<Option<Vec<String>>, Self::Error> {
        let Some(scope) = &self.search else {
            return Ok(None);
        };
        let scope = SearchScope {
            connection_id: connection_id.to_string(),
            ..scope.clone()
        };
        let filters = [
            (CALL_ID_SEARCH_KEY.to_string(), vec![session_id.to_string()]),
            (PART_SEARCH_KEY.to_string(), vec![part.to_string()]),
        ];
        Ok(Some(self.client.search(&scope, &filters).await?))
    }
}

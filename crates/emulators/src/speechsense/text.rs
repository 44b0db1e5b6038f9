//! `UploadText`: a chat dialog, accepted only on a chat connection, checked as the service's documented rules say
//! before anything is stored — every message's `user_id` is the `operator_id`, `client_id` or `bot_id` of the
//! talk's fields, and every message has a timestamp and a text payload.

use b24sense_speechsense::proto::{message, Message, UploadTextRequest};
use tonic::Request;

use super::service::{from_timestamp, TalkServiceImpl};
use super::talks::Payload;
use super::upload::{invalid, noted, Failure};
use super::StoredMessage;

/// The metadata keys whose values are the dialog's participants.
pub const PARTICIPANT_KEYS: [&str; 3] = ["operator_id", "client_id", "bot_id"];

/// One message as stored, or why it is refused (`index` counts from 0).
fn checked(index: usize, m: Message, participants: &[&str]) -> Result<StoredMessage, Failure> {
    if !participants.contains(&m.user_id.as_str()) {
        return Err(invalid(format!(
            "message {index}: user_id {:?} is none of the operator_id, client_id and bot_id of the metadata",
            m.user_id
        )));
    }
    let Some(timestamp) = m.timestamp.as_ref().and_then(from_timestamp) else {
        return Err(invalid(format!("message {index}: timestamp is required")));
    };
    let Some(message::Payload::Text(text)) = m.payload else {
        return Err(invalid(format!(
            "message {index}: a text payload is required"
        )));
    };
    Ok(StoredMessage {
        user_id: m.user_id,
        timestamp,
        text: text.text,
    })
}

impl TalkServiceImpl {
    pub(super) async fn text_upload(
        &self,
        request: Request<UploadTextRequest>,
        crid: Option<String>,
    ) -> Result<String, Failure> {
        let principal = self.auth_and_fault(request.metadata())?;
        let req = request.into_inner();
        let (metadata, conn) = self.unary_talk(&principal, req.metadata, false)?;
        let note = noted(conn);
        if !req.talk_id.is_empty() {
            if req.text_content.is_some_and(|c| !c.messages.is_empty()) {
                return Err(note(invalid("a metadata update must not carry messages")));
            }
            return self.update(&conn.id, &req.talk_id, metadata.fields);
        }
        let messages = req.text_content.map(|c| c.messages).unwrap_or_default();
        if messages.is_empty() {
            return Err(note(invalid("no messages")));
        }
        let participants: Vec<&str> = PARTICIPANT_KEYS
            .iter()
            .filter_map(|k| metadata.fields.get(*k).map(String::as_str))
            .filter(|v| !v.is_empty())
            .collect();
        let stored = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| checked(i, m, &participants))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&note)?;
        self.store(
            "txt",
            &conn.id,
            metadata.fields,
            Payload::text(stored),
            crid,
        )
        .await
    }
}

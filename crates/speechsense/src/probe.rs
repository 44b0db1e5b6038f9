//! The connection check: is the API key accepted, does the connection exist, and is it of the type needed?
//!
//! # The probe
//!
//! One `UploadAsStream` call carrying a single message, `{metadata: {connection_id, fields: {}}}`, then
//! half-closed: no audio metadata, no audio chunk, no `talk_id`. It is the same probe whatever type is needed.
//!
//! **Why it cannot store a talk.** The stream breaks the upload protocol ([fact]: talk metadata, then audio
//! metadata, then chunks) right after its first message and carries neither a format nor a byte of audio, and no
//! metadata key is filled, so there is nothing a talk could be made of. The emulator refuses it before its store
//! step (every upload check runs first). Should a server ever answer OK anyway, the id it returns is logged as a
//! warning so the empty talk can be found and deleted.
//!
//! **How its answer is read.**
//! - UNAUTHENTICATED → [`ConnectionCheck::BadKey`]; PERMISSION_DENIED → [`ConnectionCheck::NoAccess`];
//!   NOT_FOUND → [`ConnectionCheck::UnknownConnection`] — the service checks credentials, then the connection,
//!   then the payload (the order the emulator implements; for the real service it is [inferred]).
//! - INVALID_ARGUMENT / FAILED_PRECONDITION → the key and the connection were accepted and only the payload was
//!   refused. If the refusal names the connection's type (`connection <id> is a chat connection`, see
//!   [`ConnectionKind::refusal_note`]) and it is not the type needed → [`ConnectionCheck::WrongKind`]; otherwise
//!   [`ConnectionCheck::Ok`].
//! - anything else, or no answer within `check_timeout` → `Err` (retryable, never a verdict).
//!
//! **Evidence level.** SpeechSense v1 has no RPC that reads a connection (no "get connection"; `Search`/`Get`
//! need organization, space and project ids and name no type), and how the real service reacts to a payload on a
//! connection of the wrong type, and in what words, is not documented: that audio goes only to audio connections
//! and chats only to chat connections is our [proposal] of the service's rule, which the emulator implements.
//! The emulator names the connection's type in every refusal it gives once the connection is known, so against
//! it the check tells a two-channel audio connection from a one-channel or chat one deterministically. Against
//! the real service a refusal that names no type leaves the type unconfirmed: the check then says OK (as before
//! this check knew types) and logs at debug level that the type was not confirmed; a wrong type then shows on
//! the first upload.

use std::collections::BTreeMap;

use tonic::Code;
use tracing::{debug, warn};

use crate::check::{ConnectionCheck, ConnectionKind};
use crate::client::{log_ids, metadata_message, SpeechSenseClient};
use crate::error::{scrub, Error};
use crate::tracking::SendProgress;

impl SpeechSenseClient {
    /// Checks API key + connection id for a two-channel audio connection (where calls go) without creating a
    /// talk. See [`SpeechSenseClient::check_connection_as`].
    pub async fn check_connection(&self, connection_id: &str) -> Result<ConnectionCheck, Error> {
        self.check_connection_as(connection_id, ConnectionKind::TwoChannelAudio)
            .await
    }

    /// Checks API key + connection id without creating a talk, and that the connection is of type `needed`:
    /// the metadata-only probe described in this module's documentation. Network problems and server faults are
    /// `Err` (retryable), never a verdict about key or connection.
    pub async fn check_connection_as(
        &self,
        connection_id: &str,
        needed: ConnectionKind,
    ) -> Result<ConnectionCheck, Error> {
        // An empty id would be refused as INVALID_ARGUMENT and so look like success.
        if connection_id.trim().is_empty() {
            return Ok(ConnectionCheck::UnknownConnection(
                "the connection id is empty".into(),
            ));
        }
        if self.secret().trim().is_empty() {
            return Ok(ConnectionCheck::BadKey("the API key is empty".into()));
        }
        let fields = BTreeMap::new();
        let progress = SendProgress::default();
        let msgs = futures::stream::iter([metadata_message(connection_id, &fields)]);
        let req = self.request(msgs, &progress)?;
        let timeout = self.config().check_timeout;
        let mut grpc = self.grpc();
        let status = match tokio::time::timeout(timeout, grpc.upload_as_stream(req)).await {
            Err(_) => {
                return Err(Error::timeout(
                    "the connection check",
                    timeout,
                    false,
                    false,
                ))
            }
            Ok(Ok(resp)) => {
                log_ids(resp.metadata(), "check");
                warn!(talk_id = %resp.get_ref().talk_id, connection_id,
                    "connection check unexpectedly created an empty talk: delete it in SpeechSense");
                return Ok(ConnectionCheck::Ok);
            }
            Ok(Err(status)) => status,
        };
        log_ids(status.metadata(), "check");
        let message = scrub(status.message(), self.secret());
        Ok(match status.code() {
            Code::Unauthenticated => ConnectionCheck::BadKey(message),
            Code::PermissionDenied => ConnectionCheck::NoAccess(message),
            Code::NotFound => ConnectionCheck::UnknownConnection(message),
            Code::InvalidArgument | Code::FailedPrecondition => {
                match ConnectionKind::named_in(&message) {
                    Some(found) if found != needed => ConnectionCheck::WrongKind {
                        connection_id: connection_id.trim().to_string(),
                        found,
                        needed,
                    },
                    Some(_) => ConnectionCheck::Ok,
                    None => {
                        debug!(connection_id, ?needed, answer = %message,
                            "connection check: key and connection accepted, the answer names no connection type");
                        ConnectionCheck::Ok
                    }
                }
            }
            // The probe carries no audio, so nothing can be in doubt.
            _ => return Err(Error::from_status(&status, false, false, self.secret())),
        })
    }
}

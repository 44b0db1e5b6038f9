//! The crate's one error type and how gRPC statuses map onto it (SpeechSense's status codes; the retry and
//! in-doubt rules are in docs/mapping.md, "Once and only once").

use std::time::Duration;

use b24sense_core::ErrorClass;
use tonic::{Code, Status};

use crate::check::ConnectionKind;

/// What went wrong talking to SpeechSense. `Display` never contains the API key or IAM token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// UNAUTHENTICATED: the key/token is missing, wrong, revoked or expired. Nothing can succeed in this run.
    #[error("SpeechSense rejected the API key or IAM token (UNAUTHENTICATED): {0}")]
    BadKey(String),
    /// PERMISSION_DENIED: valid key, but no access to the connection/space.
    #[error("SpeechSense denied access to the connection (PERMISSION_DENIED): {0}")]
    NoAccess(String),
    /// NOT_FOUND: the connection id does not exist.
    #[error("SpeechSense connection not found (NOT_FOUND): {0}")]
    UnknownConnection(String),
    /// INVALID_ARGUMENT / FAILED_PRECONDITION / OUT_OF_RANGE: this talk's data was refused; nothing was stored.
    #[error("SpeechSense refused the talk data ({code:?}): {message}")]
    InvalidData { code: Code, message: String },
    /// INVALID_ARGUMENT naming the connection as one of a type this upload cannot go to (audio to a chat
    /// connection, a chat to an audio connection): every upload of the run would fail the same way, so it is fatal.
    #[error("SpeechSense refused the upload: the connection is a {} connection ({message})", found.phrase())]
    WrongConnectionKind {
        found: ConnectionKind,
        message: String,
    },
    /// Nothing was stored; the same request may succeed later. `after` is the server's hint, if any.
    #[error("SpeechSense request failed before anything was stored ({}): {message}", code_name(*code))]
    Retryable {
        code: Option<Code>,
        message: String,
        after: Option<Duration>,
    },
    /// The request was fully sent and the answer was lost or was a server fault: the talk may exist.
    #[error("SpeechSense upload outcome unknown, the talk may have been stored ({}): {message}", code_name(*code))]
    InDoubt { code: Option<Code>, message: String },
    /// The audio source yielded an error mid-upload; the RPC was cancelled (RST_STREAM), nothing was stored.
    #[error("audio source failed, upload cancelled and nothing stored: {0}")]
    SourceFailed(String),
    /// The configured endpoint is not an `http(s)://host[:port]` URL.
    #[error("invalid SpeechSense endpoint {0:?}: expected https://host:port (or http:// for a local emulator)")]
    InvalidEndpoint(String),
    /// Any other refusal (UNIMPLEMENTED, ALREADY_EXISTS, ...): retrying will not help.
    #[error("SpeechSense refused the request ({code:?}): {message}")]
    Rejected { code: Code, message: String },
}

fn code_name(code: Option<Code>) -> String {
    code.map_or_else(|| "transport".to_string(), |c| format!("{c:?}"))
}

impl Error {
    /// The retry class the engine acts on.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::BadKey(_)
            | Error::NoAccess(_)
            | Error::UnknownConnection(_)
            | Error::WrongConnectionKind { .. }
            | Error::InvalidEndpoint(_) => ErrorClass::Fatal,
            Error::InvalidData { .. } | Error::Rejected { .. } => ErrorClass::Permanent,
            Error::Retryable { after, .. } => ErrorClass::Retryable { after: *after },
            Error::InDoubt { .. } => ErrorClass::InDoubt,
            // Nothing reached SpeechSense's storage; whether the *source* is worth retrying is the caller's call.
            Error::SourceFailed(_) => ErrorClass::Retryable { after: None },
        }
    }

    /// The gRPC status code behind this error, when there was one.
    pub fn grpc_code(&self) -> Option<Code> {
        match self {
            Error::BadKey(_) => Some(Code::Unauthenticated),
            Error::NoAccess(_) => Some(Code::PermissionDenied),
            Error::UnknownConnection(_) => Some(Code::NotFound),
            Error::WrongConnectionKind { .. } => Some(Code::InvalidArgument),
            Error::InvalidData { code, .. } | Error::Rejected { code, .. } => Some(*code),
            Error::Retryable { code, .. } | Error::InDoubt { code, .. } => *code,
            Error::SourceFailed(_) | Error::InvalidEndpoint(_) => None,
        }
    }

    /// Classifies a gRPC status.
    ///
    /// `creates`: the call could create a talk (uploads). `fully_sent`: the request body had been handed to the
    /// connection completely (stream half-closed) before the error — then a lost answer may hide a stored talk.
    /// `secret` is scrubbed from the message in case a server ever echoes it.
    pub(crate) fn from_status(
        status: &Status,
        creates: bool,
        fully_sent: bool,
        secret: &str,
    ) -> Error {
        let message = scrub(status.message(), secret);
        let code = status.code();
        let in_doubt = creates && fully_sent;
        match code {
            Code::Unauthenticated => Error::BadKey(message),
            Code::PermissionDenied => Error::NoAccess(message),
            Code::NotFound => Error::UnknownConnection(message),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                Error::InvalidData { code, message }
            }
            // The server refused to do the work at all: quota, conflict.
            Code::ResourceExhausted | Code::Aborted => Error::Retryable {
                code: Some(code),
                message,
                after: retry_after(status),
            },
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
            | Code::DataLoss => {
                if in_doubt {
                    Error::InDoubt {
                        code: Some(code),
                        message,
                    }
                } else {
                    Error::Retryable {
                        code: Some(code),
                        message,
                        after: retry_after(status),
                    }
                }
            }
            Code::Ok | Code::Unimplemented | Code::AlreadyExists => {
                Error::Rejected { code, message }
            }
        }
    }

    /// An upload's refusal that names the connection's type (see [`ConnectionKind::named_in`]) as one the upload
    /// cannot go to — a chat connection for audio (`audio` true), an audio connection for a chat — becomes
    /// [`Error::WrongConnectionKind`]; anything else is returned as it is.
    pub(crate) fn for_upload(self, audio: bool) -> Error {
        match self {
            Error::InvalidData {
                code: Code::InvalidArgument,
                message,
            } => match ConnectionKind::named_in(&message) {
                Some(found) if found.is_audio() != audio => {
                    Error::WrongConnectionKind { found, message }
                }
                _ => Error::InvalidData {
                    code: Code::InvalidArgument,
                    message,
                },
            },
            other => other,
        }
    }

    /// Our own deadline expired.
    pub(crate) fn timeout(what: &str, after: Duration, creates: bool, fully_sent: bool) -> Error {
        let message = format!("no answer to {what} within {after:?}");
        if creates && fully_sent {
            Error::InDoubt {
                code: Some(Code::DeadlineExceeded),
                message,
            }
        } else {
            Error::Retryable {
                code: Some(Code::DeadlineExceeded),
                message,
                after: None,
            }
        }
    }
}

/// `retry-after: <seconds>` response metadata, if a proxy sent one.
fn retry_after(status: &Status) -> Option<Duration> {
    let value = status.metadata().get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(crate) fn scrub(message: &str, secret: &str) -> String {
    if secret.len() >= 4 && message.contains(secret) {
        message.replace(secret, "[REDACTED]")
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_spec() {
        let s = |c| Status::new(c, "m");
        assert_eq!(
            Error::from_status(&s(Code::Unauthenticated), true, false, "").class(),
            ErrorClass::Fatal
        );
        assert_eq!(
            Error::from_status(&s(Code::PermissionDenied), true, true, "").class(),
            ErrorClass::Fatal
        );
        assert_eq!(
            Error::from_status(&s(Code::NotFound), true, true, "").class(),
            ErrorClass::Fatal
        );
        assert_eq!(
            Error::from_status(&s(Code::InvalidArgument), true, true, "").class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            Error::from_status(&s(Code::FailedPrecondition), true, false, "").class(),
            ErrorClass::Permanent
        );
        assert!(
            Error::from_status(&s(Code::ResourceExhausted), true, true, "")
                .class()
                .is_retryable()
        );
        assert!(Error::from_status(&s(Code::Aborted), true, true, "")
            .class()
            .is_retryable());
        assert!(Error::from_status(&s(Code::Unavailable), true, false, "")
            .class()
            .is_retryable());
        assert_eq!(
            Error::from_status(&s(Code::Unavailable), true, true, "").class(),
            ErrorClass::InDoubt
        );
        assert_eq!(
            Error::from_status(&s(Code::DeadlineExceeded), true, true, "").class(),
            ErrorClass::InDoubt
        );
        assert_eq!(
            Error::from_status(&s(Code::Internal), true, true, "").class(),
            ErrorClass::InDoubt
        );
        assert_eq!(
            Error::from_status(&s(Code::Unknown), true, true, "").class(),
            ErrorClass::InDoubt
        );
        assert!(Error::from_status(&s(Code::Internal), true, false, "")
            .class()
            .is_retryable());
        // Searches never create anything, so they are never in doubt.
        assert!(Error::from_status(&s(Code::Internal), false, true, "")
            .class()
            .is_retryable());
        assert_eq!(
            Error::from_status(&s(Code::Unimplemented), true, true, "").class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn an_upload_to_the_wrong_connection_type_is_fatal() {
        let refused = |message: &str| Error::InvalidData {
            code: Code::InvalidArgument,
            message: message.into(),
        };
        let chat = "no audio; connection c is a chat connection";
        let mono = "no messages; connection m is a one-channel audio connection";
        let wrong = refused(chat).for_upload(true);
        assert!(
            matches!(
                wrong,
                Error::WrongConnectionKind {
                    found: ConnectionKind::Chat,
                    ..
                }
            ),
            "{wrong:?}"
        );
        assert_eq!(wrong.class(), ErrorClass::Fatal);
        assert!(matches!(
            refused(mono).for_upload(false),
            Error::WrongConnectionKind {
                found: ConnectionKind::OneChannelAudio,
                ..
            }
        ));
        // The right type, or no type named: the talk's own data was refused.
        for (message, audio) in [(mono, true), (chat, false), ("no audio data", true)] {
            assert_eq!(
                refused(message).for_upload(audio).class(),
                ErrorClass::Permanent,
                "{message}"
            );
        }
    }

    #[test]
    fn retry_after_and_scrub() {
        let mut st = Status::new(Code::ResourceExhausted, "quota for AQVNsecretsecret");
        st.metadata_mut()
            .insert("retry-after", "7".parse().unwrap());
        let e = Error::from_status(&st, true, false, "AQVNsecretsecret");
        assert_eq!(
            e.class(),
            ErrorClass::Retryable {
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(!e.to_string().contains("AQVNsecretsecret"));
        assert_eq!(e.grpc_code(), Some(Code::ResourceExhausted));
    }
}

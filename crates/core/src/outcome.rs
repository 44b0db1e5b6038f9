//! Ledger states and per-call outcomes (`docs/mapping.md`, "The ledger: states of a call").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a call stands in the ledger: `pending` → `uploading` → `uploaded` | `skipped` | `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    Pending,
    /// Written right before the upload's half-close; found with nobody holding it, it means "in doubt".
    Uploading,
    Uploaded,
    Skipped,
    Failed,
}

/// Why a call was not uploaded although nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The portal has no recording for the call (yet); a later run checks again.
    NoRecording,
    /// Longer than SpeechSense's 4-hour limit.
    TooLong,
    /// One channel, and the portal's mono policy is `skip`.
    MonoRecording,
    /// Uploaded by an earlier run (report only; the ledger keeps `uploaded`).
    AlreadyUploaded,
}

/// Why a call could not be uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// Not WAV/MP3/Ogg-Opus, judged from the first bytes.
    UnsupportedAudio,
    /// The recording is gone (404, deleted from Drive, access denied).
    RecordingUnavailable,
    /// Downloading the recording kept failing.
    DownloadFailed,
    /// SpeechSense refused the talk's data (INVALID_ARGUMENT, FAILED_PRECONDITION).
    InvalidData,
    /// SpeechSense kept failing with retryable errors.
    UploadFailed,
    /// Bitrix24 kept failing while the call was being prepared.
    PortalError,
    /// The upload may have been stored, and no duplicate check was possible.
    InDoubt,
    /// The run stopped (fatal error or shutdown) before this call was done.
    Interrupted,
}

macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $name),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim() {
                    $($name => Ok(<$ty>::$variant),)+
                    other => Err(format!(
                        "unknown value {other:?}; expected one of: {}",
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
    };
}

names!(LedgerState {
    Pending => "pending",
    Uploading => "uploading",
    Uploaded => "uploaded",
    Skipped => "skipped",
    Failed => "failed",
});

names!(SkipReason {
    NoRecording => "no_recording",
    TooLong => "too_long",
    MonoRecording => "mono_recording",
    AlreadyUploaded => "already_uploaded",
});

names!(FailReason {
    UnsupportedAudio => "unsupported_audio",
    RecordingUnavailable => "recording_unavailable",
    DownloadFailed => "download_failed",
    InvalidData => "invalid_data",
    UploadFailed => "upload_failed",
    PortalError => "portal_error",
    InDoubt => "in_doubt",
    Interrupted => "interrupted",
});

/// The result of one call in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Uploaded {
        talk_id: String,
        /// One-channel recording uploaded under the `upload` mono policy.
        mono: bool,
        /// Uploaded again after a crash left it in doubt, with no duplicate check available.
        reuploaded_after_crash: bool,
    },
    Skipped {
        reason: SkipReason,
    },
    Failed {
        reason: FailReason,
        /// Human-readable detail, free of secrets.
        detail: String,
    },
}

impl Outcome {
    /// The ledger state this outcome is stored as.
    pub fn state(&self) -> LedgerState {
        match self {
            Outcome::Uploaded { .. }
            | Outcome::Skipped {
                reason: SkipReason::AlreadyUploaded,
            } => LedgerState::Uploaded,
            Outcome::Skipped { .. } => LedgerState::Skipped,
            Outcome::Failed { .. } => LedgerState::Failed,
        }
    }

    /// The reason code (`no_recording`, `download_failed`, …), if any.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Uploaded { .. } => None,
            Outcome::Skipped { reason } => Some(reason.as_str()),
            Outcome::Failed { reason, .. } => Some(reason.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in FailReason::ALL {
            assert_eq!(r.as_str().parse::<FailReason>().unwrap(), *r);
        }
        for r in SkipReason::ALL {
            assert_eq!(r.to_string().parse::<SkipReason>().unwrap(), *r);
        }
        let err = "nope".parse::<LedgerState>().unwrap_err();
        assert!(err.contains("pending"), "{err}");
    }

    #[test]
    fn outcome_states() {
        let up = Outcome::Uploaded {
            talk_id: "a".into(),
            mono: false,
            reuploaded_after_crash: false,
        };
        assert_eq!(up.state(), LedgerState::Uploaded);
        assert_eq!(
            Outcome::Skipped {
                reason: SkipReason::TooLong
            }
            .state(),
            LedgerState::Skipped
        );
        let f = Outcome::Failed {
            reason: FailReason::InvalidData,
            detail: "x".into(),
        };
        assert_eq!(
            (f.state(), f.reason()),
            (LedgerState::Failed, Some("invalid_data"))
        );
    }
}

//! b24sense-speechsense — the Yandex SpeechSense gRPC client (`yandex.cloud.speechsense.v1.TalkService`).
//!
//! It owns:
//! - [`proto`]: the wire types and the tonic client stub, generated at build time from hand-written `.proto`
//!   files (`proto/`, a wire-compatible subset of Yandex Cloud's public `speechsense/v1` API; client only — the
//!   emulator crate generates its own server stub over these types);
//! - [`SpeechSenseClient`]: streaming audio upload in exact 1 MiB chunks, chat upload, search by `userMeta.*`, and
//!   the connection check (a metadata-only `UploadAsStream` that creates no talk and tells the connection's type
//!   apart where the answer names it: `probe`);
//! - [`Error`]: every failure classified onto [`b24sense_core::ErrorClass`], telling apart "nothing was stored"
//!   (retryable) from "the talk may exist" (in doubt) by whether the request had been fully sent.
//!
//! Secrets (API key, IAM token) are [`secrecy::SecretString`] and never appear in `Debug`, `Display` or logs.

mod check;
mod client;
mod config;
mod error;
mod probe;
mod tracking;
mod upload;

/// Generated protobuf types and the tonic client stub of `yandex.cloud.speechsense.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_includes.rs"));
    pub use self::yandex::cloud::speechsense::v1::*;
}

pub use b24sense_core::Container;
pub use check::{ConnectionCheck, ConnectionKind, Lang};
pub use client::{ChatMessage, SearchScope, SpeechSenseClient, SEARCH_MAX_PAGES, SEARCH_PAGE_SIZE};
pub use config::{ClientConfig, Credentials, DEFAULT_ENDPOINT};
pub use error::Error;
pub use upload::{SourceError, CHUNK_SIZE, MAX_MESSAGE_SIZE};

/// Maps the core container onto the wire enum.
pub fn container_to_proto(container: Container) -> proto::container_audio::ContainerAudioType {
    use proto::container_audio::ContainerAudioType as T;
    match container {
        Container::Wav => T::Wav,
        Container::Mp3 => T::Mp3,
        Container::OggOpus => T::OggOpus,
    }
}

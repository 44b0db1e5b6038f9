//! Open Lines chats: finished sessions of a Bitrix24 portal exported to a SpeechSense chat connection
//! (`UploadText`), each once, with the same guarantees as calls ([`run_chat_export`]).
//!
//! The journey of a session: listed from its CRM activity (`IMOPENLINES_SESSION`, 2,500 per request, open ones
//! too) → registered in the chat ledger (a table of its own: a session and a call with the same number never share
//! a row) → an open session is recorded as waiting (`session_open`, no history read) and taken up by a later run
//! once it closes → the CRM names of a page's finished sessions read in one request (their activities name their
//! owners), their histories 50 per request → mapped ([`b24sense_core::chat::chat_talks`]; sessions without a client
//! message, or with too few, skipped with the reason) → queued for the upload stage, which takes them under the
//! adaptive limit on uploads in flight ([`crate::concurrency`]) → claimed (lease, fence) → each part marked
//! `uploading`, sent, its talk ID recorded → the verdict committed, fenced. About one portal request per 50 sessions.
//!
//! One run can export calls and chats together: call [`crate::run_export`] and [`run_chat_export`] side by side
//! (or one after the other) with sources built on the same [`b24sense_bitrix24::Bitrix24Client`], so that both
//! draw from its one request bucket. A chat run takes a portal lease of its own ([`ChatExportConfig::lane`]), so
//! it never takes the call run's over.
//!
//! The parts: [`ports`] (the traits), [`config`] (settings and reports), `run` (the run, its two stages, the upload
//! stage), `reader` (listing, names, histories, mapping), `session` (one session under its lease, the in-doubt
//! rule), `ledger` (a ledger that fails: operations retried, claims under owners of their own), [`adapters`] (the
//! real clients).

pub mod adapters;
pub mod config;
mod ledger;
pub mod ports;
mod reader;
mod run;
mod session;

pub use config::{ChatExportConfig, ChatOutcome, ChatProgressFn, ChatReport, ChatSummary};
pub use ports::{ChatSource, SessionPage, TextSink};
pub use run::run_chat_export;

//! What one chat export run is asked to do, and what it reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use b24sense_core::chat::{ChatFilter, ChatOptions};

use crate::concurrency::{Concurrency, LimitTrace};
use crate::holder::Holder;
use crate::retry::Backoff;

/// Settings of one chat export run (CLI flags or a portal's saved settings).
#[derive(Debug, Clone)]
pub struct ChatExportConfig {
    /// Ledger key of the portal, as for calls (the chat rows live in a table of their own).
    pub portal: String,
    /// The SpeechSense **chat** connection.
    pub connection_id: String,
    /// The period and operators (`include_open` is ignored: open sessions are always listed, and recorded as
    /// waiting until they close).
    pub filter: ChatFilter,
    /// Language, minimum client messages, request size.
    pub options: ChatOptions,
    /// Continuous sync: first read again the sessions the ledger holds unfinished (open ones, those a stopped or
    /// crashed run left), then list only the sessions after the high-water mark. `false`: list every qualifying
    /// session from the start.
    pub incremental: bool,
    /// List, read and map only; upload nothing and write nothing (the ledger is read, so that sessions uploaded
    /// already are reported as such; each session that would go out is reported [`ChatOutcome::WouldUpload`]).
    pub dry_run: bool,
    /// Sessions uploaded at once (each a unary `UploadText`): adaptive by default, as calls
    /// ([`crate::concurrency`]), or pinned (`--concurrency N`).
    pub concurrency: Concurrency,
    /// Attempts per session for retryable failures, the first included.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// How long a claim on a session lasts before another worker may take it over (renewed before each part).
    pub lease: Duration,
    /// How long this run's hold on the portal's chat lane lasts without renewal (renewed every sixth of it).
    pub portal_lease: Duration,
    /// How often a run waiting for the lane, or for a session another worker holds, looks again.
    pub poll: Duration,
    /// How long a talk may take to become searchable (an in-doubt part not found is searched again over this).
    pub search_settle: Duration,
    /// Identifies this run in leases.
    pub worker_id: String,
    /// How long the run rides out a ledger that refuses writes (each operation retried with backoff) before it
    /// ends ([`super::ledger`]).
    pub ledger_give_up: Duration,
    /// This process, recorded with the lane's lease (a run that finds it dead on this machine takes over at once).
    pub holder: Option<Holder>,
}

impl ChatExportConfig {
    pub fn new(portal: impl Into<String>, connection_id: impl Into<String>) -> Self {
        ChatExportConfig {
            portal: portal.into(),
            connection_id: connection_id.into(),
            filter: ChatFilter::default(),
            options: ChatOptions::default(),
            incremental: false,
            dry_run: false,
            concurrency: Concurrency::default(),
            max_attempts: 5,
            backoff: Backoff::default(),
            lease: Duration::from_secs(60),
            portal_lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            search_settle: Duration::from_secs(2),
            worker_id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            ledger_give_up: Duration::from_secs(600),
            holder: Holder::this_process(),
        }
    }

    /// The key of the portal lease chat runs take: a lane of its own, so that a chat run beside a call run of the
    /// same portal (one process, one Bitrix24 client, one request bucket) does not take the calls' lease over.
    pub fn lane(&self) -> String {
        format!("{}#chats", self.portal)
    }

    /// The listing cursor's key (per filter, as for calls).
    pub(super) fn cursor_key(&self) -> String {
        let f = &self.filter;
        format!("chats|{:?}|{:?}|{:?}", f.since, f.until, f.operators)
    }
}

/// How one session ended in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatOutcome {
    /// Stored now (all its parts).
    Uploaded {
        talk_ids: Vec<String>,
        /// Some part may be stored twice: it was in doubt, no search was possible, and it was sent again.
        reuploaded_after_crash: bool,
    },
    /// The ledger says it was uploaded by an earlier run.
    AlreadyUploaded,
    /// Not uploaded, by rule (`no_client_message`, `too_few_client_messages`).
    Skipped { reason: String },
    /// Not uploadable yet (`session_open`); a later run takes it up.
    Waiting { reason: String },
    /// Given up on in this run (`upload_failed`, `invalid_data`, `in_doubt`, `portal_error`, `interrupted`).
    Failed { reason: String, detail: String },
    /// A dry run: would be uploaded, in `parts` talks (the report's `messages` says how many messages).
    WouldUpload { parts: u32 },
}

/// One session's result, as progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatReport {
    pub session_id: u64,
    pub outcome: ChatOutcome,
    /// Messages sent (0 unless uploaded now; in a dry run, those that would be).
    pub messages: u64,
}

/// Called with each session's result as it settles.
pub type ChatProgressFn = Arc<dyn Fn(&ChatReport) + Send + Sync>;

/// What a chat run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatSummary {
    /// Session activities listed or read again.
    pub listed: u64,
    pub uploaded: u64,
    /// Talks stored (a long session is several).
    pub talks: u64,
    pub messages: u64,
    pub already_uploaded: u64,
    pub reuploaded_after_crash: u64,
    /// In-doubt parts a search found stored (not sent again).
    pub found_by_search: u64,
    /// By reason.
    pub skipped: BTreeMap<String, u64>,
    /// Open sessions (by reason): recorded, uploaded by a later run once closed.
    pub waiting: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    /// Sessions another worker held throughout (left to it).
    pub unsettled: u64,
    /// Listing rows that could not be read.
    pub bad_rows: Vec<String>,
    /// A dry run: sessions that would be uploaded.
    pub would_upload: u64,
    /// Times the ledger refused an operation that was then tried again ([`super::ledger`]).
    pub ledger_retries: u64,
    /// Spells of ledger trouble the run rode out (or ended in).
    pub ledger_outages: u64,
    /// How the limit on uploads in flight moved.
    pub concurrency: LimitTrace,
    pub wall_time: Duration,
    /// Why the run stopped early: a fatal error (wrong key or connection, the portal refusing the listing), or a
    /// shutdown. `None`: it ran to the end.
    pub stopped: Option<String>,
    /// The run stopped on a fatal error (not a shutdown): the caller exits with failure.
    pub fatal: bool,
}

impl ChatSummary {
    pub(super) fn record(&mut self, r: &ChatReport) {
        let bump =
            |m: &mut BTreeMap<String, u64>, k: &str| *m.entry(k.to_string()).or_default() += 1;
        match &r.outcome {
            ChatOutcome::Uploaded {
                talk_ids,
                reuploaded_after_crash,
            } => {
                self.uploaded += 1;
                self.talks += talk_ids.len() as u64;
                self.messages += r.messages;
                self.reuploaded_after_crash += u64::from(*reuploaded_after_crash);
            }
            ChatOutcome::AlreadyUploaded => self.already_uploaded += 1,
            ChatOutcome::Skipped { reason } => bump(&mut self.skipped, reason),
            ChatOutcome::Waiting { reason } => bump(&mut self.waiting, reason),
            ChatOutcome::Failed { reason, .. } => bump(&mut self.failed, reason),
            ChatOutcome::WouldUpload { .. } => {
                self.would_upload += 1;
                self.messages += r.messages;
            }
        }
    }

    /// Sessions failed in all.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

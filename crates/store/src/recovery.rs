//! The recovery journal: outcomes the ledger could not take (a full disk, a read-only file, a lock held elsewhere,
//! an unreachable server), kept in a small append-only file of JSON lines so that a process that must end before
//! the ledger recovers loses none of them. Each append is fsynced (and the directory, when the file is new). The
//! next start imports the file into the ledger before anything else, then removes it: no call whose talk ID
//! SpeechSense returned is uploaded again.
//!
//! Where: beside a SQLite ledger (`ledger.db` → `ledger.db.recovery.jsonl`); for PostgreSQL, a local file in the
//! directory the front end names ([`Store::with_recovery_dir`]), one per database and schema.
//!
//! Importing is idempotent and never goes back: an `uploaded` row is never changed, a skip or failure only
//! replaces an unfinished (`pending`/`uploading`) row. A line is the same JSON the engine prints on stderr when
//! even this file cannot be written, so such lines can be appended to the file by hand.

use std::io::Write;
use std::path::{Path, PathBuf};

use b24sense_core::{Outcome, SkipReason};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sql::to_i64;
use crate::{Error, Store};

/// One outcome the ledger could not take, as a line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryEntry {
    /// Marks the line as b24sense's (format version 1), so lines copied from a log are recognised.
    pub b24sense_recovery: u8,
    pub portal: String,
    pub call_id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub at: DateTime<Utc>,
}

impl RecoveryEntry {
    pub fn new(portal: &str, call_id: u64, outcome: Outcome) -> RecoveryEntry {
        RecoveryEntry {
            b24sense_recovery: 1,
            portal: portal.to_owned(),
            call_id,
            outcome,
            at: Utc::now(),
        }
    }

    /// The entry as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The talk ID this entry keeps, if it is an upload.
    pub fn talk_id(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Uploaded { talk_id, .. } => Some(talk_id),
            _ => None,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryImport {
    pub path: PathBuf,
    /// Lines read.
    pub entries: u64,
    /// Rows changed (the others were in the ledger already, or had moved on).
    pub applied: u64,
}

/// The journal of a SQLite ledger at `file`.
pub(crate) fn beside(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".recovery.jsonl");
    file.with_file_name(name)
}

/// Reads a journal: every line that holds an entry (text before its first `{` is ignored, so lines copied from
/// a log with a prefix still count; blank lines are skipped). A last line cut short (the process died while
/// appending) is ignored; any other unreadable line is an error, so that no talk ID is silently dropped.
pub fn read_recovery_journal(path: &Path) -> Result<Vec<RecoveryEntry>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| journal_error(path, e))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut entries = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(start) = line.find('{') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(unreadable(path, i, "no JSON object"));
        };
        match serde_json::from_str::<RecoveryEntry>(&line[start..]) {
            Ok(e) => entries.push(e),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!(path = %path.display(), "ignoring the journal's last line, cut short");
            }
            Err(e) => return Err(unreadable(path, i, &e.to_string())),
        }
    }
    Ok(entries)
}

fn unreadable(path: &Path, line: usize, why: &str) -> Error {
    Error::RecoveryJournal {
        path: path.to_path_buf(),
        reason: format!(
            "line {} is not a recovery entry ({why}); fix or remove that line",
            line + 1
        ),
    }
}

fn journal_error(path: &Path, e: std::io::Error) -> Error {
    Error::RecoveryJournal {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Store {
    /// Keeps a PostgreSQL ledger's recovery journal in `dir` (a local directory: the journal must not depend on the
    /// server it stands in for). A SQLite ledger's journal is beside its file whatever `dir` is.
    pub fn with_recovery_dir(mut self, dir: &Path) -> Store {
        if self.place.recovery.is_none() && !self.place.key.is_empty() {
            let hash = hex(&Sha256::digest(self.place.key.as_bytes())[..8]);
            self.place = std::sync::Arc::new(crate::Place {
                shown: self.place.shown.clone(),
                recovery: Some(dir.join(format!("recovery-{hash}.jsonl"))),
                key: self.place.key.clone(),
                faults: self.place.faults.clone(),
                answer_timeout: self.place.answer_timeout,
            });
        }
        self
    }

    /// Where this ledger's recovery journal is (whether or not it exists); `None` for an in-memory SQLite ledger
    /// and for PostgreSQL until [`Store::with_recovery_dir`].
    pub fn recovery_path(&self) -> Option<&Path> {
        self.place.recovery.as_deref()
    }

    /// Appends `entries` to the recovery journal and fsyncs it (and its directory when the file is new).
    pub fn append_recovery(&self, entries: &[RecoveryEntry]) -> Result<PathBuf, Error> {
        let path = self
            .recovery_path()
            .ok_or_else(|| Error::RecoveryJournal {
                path: PathBuf::new(),
                reason: "this ledger has no place for a recovery journal".into(),
            })?
            .to_path_buf();
        let new = !path.exists();
        let mut text = String::new();
        for e in entries {
            text.push_str(&e.to_line());
            text.push('\n');
        }
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            if new {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            Ok(())
        };
        write().map_err(|e| journal_error(&path, e))?;
        Ok(path)
    }

    /// The journal's entries when one is waiting to be imported.
    pub fn pending_recovery(&self) -> Result<Option<(PathBuf, Vec<RecoveryEntry>)>, Error> {
        match self.recovery_path() {
            Some(path) if path.exists() => {
                Ok(Some((path.to_path_buf(), read_recovery_journal(path)?)))
            }
            _ => Ok(None),
        }
    }

    /// Writes a waiting journal's outcomes into the ledger, then removes the file. `None`: no journal waiting.
    /// Fails (and keeps the file) when the ledger cannot take them yet.
    pub async fn import_recovery(&self) -> Result<Option<RecoveryImport>, Error> {
        let Some((path, entries)) = self.pending_recovery()? else {
            return Ok(None);
        };
        let mut applied = 0;
        for e in &entries {
            applied += u64::from(self.record_recovered(e).await?);
        }
        std::fs::remove_file(&path).map_err(|e| journal_error(&path, e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        tracing::info!(path = %path.display(), entries = entries.len(), applied, "imported the recovery journal");
        Ok(Some(RecoveryImport {
            path,
            entries: entries.len() as u64,
            applied,
        }))
    }

    /// One entry into the ledger, unfenced (its run is gone, or its lease lapsed while the ledger was down; the
    /// fence moves on so no older claim commits after it): an upload over any row not `uploaded` (a talk ID is a
    /// fact), a skip or failure over an unfinished row only. True when it changed the row.
    pub async fn record_recovered(&self, e: &RecoveryEntry) -> Result<bool, Error> {
        let id = to_i64(e.call_id)?;
        let (talk_id, detail, mono, reuploaded, only) = match &e.outcome {
            Outcome::Uploaded {
                talk_id,
                mono,
                reuploaded_after_crash,
            } => (
                Some(talk_id.as_str()),
                None,
                *mono,
                *reuploaded_after_crash,
                "state <> 'uploaded'",
            ),
            Outcome::Skipped {
                reason: SkipReason::AlreadyUploaded,
            } => return Ok(false),
            Outcome::Skipped { .. } => (None, None, false, false, UNFINISHED),
            Outcome::Failed { detail, .. } => {
                (None, Some(detail.as_str()), false, false, UNFINISHED)
            }
        };
        on_db!(self, |conn, d| {
            let sql = d.sql(&format!(
                "UPDATE ledger SET state = $3, reason = $4, detail = $5, talk_id = COALESCE($6, talk_id), \
                 mono = $7, reuploaded_after_crash = $8, attempts = attempts + 1, fence = fence + 1, \
                 lease_owner = NULL, lease_until = NULL, retry_at = NULL, updated_at = {{now}} \
                 WHERE portal = $1 AND call_id = $2 AND {only}"
            ));
            let done = sqlx::query(&sql)
                .bind(&e.portal)
                .bind(id)
                .bind(e.outcome.state().as_str())
                .bind(e.outcome.reason())
                .bind(detail)
                .bind(talk_id)
                .bind(mono)
                .bind(reuploaded)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

/// Rows a skip or failure may replace.
const UNFINISHED: &str = "state IN ('pending', 'uploading')";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! One session under its lease: the mapping's verdict, or its parts uploaded one after another, each behind a
//! fenced `uploading` mark and followed by its talk ID; then the fenced verdict.
//!
//! The in-doubt rule, as for calls: `UploadText` is one request, so a part is in doubt when its request was sent
//! whole and no answer came (or a run died after its mark). Such a part is searched for by the session's `id` and
//! the part's `part` key when a search scope is given — found: its talk is recorded and nothing is sent again; not
//! found (after the search settles): sent again. Without a search it is sent again and the session reported
//! `reuploaded_after_crash`: a duplicate is never silent, a loss never happens.

use std::time::Instant;

use b24sense_core::chat::ChatTalk;
use b24sense_core::ErrorClass;
use b24sense_store::{ChatClaim, ChatVerdict};

use super::config::ChatOutcome;
use super::ledger::Until;
use super::ports::{ChatSource, TextSink};
use super::run::{skip_outcome, ChatRun, Mapped};
use crate::concurrency::{Load, Sample};
use crate::ports::Classified;
use crate::EngineError;

/// What a search for an in-doubt part said.
enum Found {
    Talk(String),
    NotStored,
    /// No search configured, or it failed.
    Unknown,
}

impl<S: ChatSource, K: TextSink> ChatRun<S, K> {
    /// Claims a session, waiting while another worker holds it (with the lane held, that worker is dead or paused
    /// and its lease runs out). `None`: uploaded already (reported here), unknown, or still held after the wait.
    pub(super) async fn claim_or_wait(
        &self,
        session_id: u64,
    ) -> Result<Option<ChatClaim>, EngineError> {
        let c = &self.config;
        let deadline = std::time::Instant::now() + c.lease * 2 + c.portal_lease;
        loop {
            // One owner for the claim and its retries: a claim that took effect though its answer was lost is
            // taken back by the retry rather than waited for as another worker's.
            let owner = self.claim_owner();
            let claim = self
                .ledger(Until::Stop, || {
                    self.store
                        .claim_chat(&c.portal, session_id, &owner, c.lease)
                })
                .await?;
            if let Some(claim) = claim {
                return Ok(Some(claim));
            }
            let entry = self
                .ledger(Until::Stop, || self.store.chat_entry(&c.portal, session_id))
                .await?;
            match entry {
                Some(e) if e.state == b24sense_core::LedgerState::Uploaded => {
                    self.report(session_id, ChatOutcome::AlreadyUploaded, 0);
                    return Ok(None);
                }
                None => return Ok(None),
                Some(_) => {}
            }
            if std::time::Instant::now() >= deadline || self.stop.is_cancelled() {
                tracing::warn!(
                    session = session_id,
                    "another worker still holds this session; leaving it to that worker"
                );
                self.count_unsettled();
                return Ok(None);
            }
            tokio::select! {
                _ = tokio::time::sleep(c.poll.min(c.lease / 4)) => {}
                _ = self.stop.cancelled() => {}
            }
        }
    }

    /// Drives a claimed session to its verdict and records it, fenced.
    pub(super) async fn drive(&self, claim: ChatClaim, mapped: Mapped) -> Result<(), EngineError> {
        let talks = match mapped {
            Ok(Ok(talks)) => talks,
            Ok(Err(skip)) => {
                let outcome = skip_outcome(skip.reason.as_str());
                return self.settle(&claim, outcome, 0).await;
            }
            Err(detail) => {
                let outcome = ChatOutcome::Failed {
                    reason: "portal_error".into(),
                    detail,
                };
                return self.settle(&claim, outcome, 0).await;
            }
        };
        let messages: u64 = talks.iter().map(|t| t.messages.len() as u64).sum();
        let outcome = self.upload_parts(&claim, &talks).await?;
        match outcome {
            Some(outcome) => self.settle(&claim, outcome, messages).await,
            None => {
                // Taken over (the other worker reports it), or given back for the next run.
                self.count_unsettled();
                Ok(())
            }
        }
    }

    /// Uploads the parts not known to be stored. `None` when the lease was taken over or given back (shutdown).
    async fn upload_parts(
        &self,
        claim: &ChatClaim,
        talks: &[ChatTalk],
    ) -> Result<Option<ChatOutcome>, EngineError> {
        let c = &self.config;
        let parts = talks.len() as u32;
        let mut ids = claim.talk_ids.clone();
        if !ids.is_empty() && claim.parts != parts {
            // Parts were stored under another cut (the history or the request size changed since): resuming would
            // mix two cuts. Reported, never guessed at.
            return Ok(Some(ChatOutcome::Failed {
                reason: "invalid_data".into(),
                detail: format!(
                    "{} of {} parts were stored before, the session now maps to {parts} parts",
                    ids.len(),
                    claim.parts
                ),
            }));
        }
        let mut reupload = false;
        if claim.in_doubt && ids.len() < talks.len() {
            match self
                .find_settled(claim.session_id, ids.len() as u32 + 1)
                .await
            {
                Found::Talk(id) => {
                    self.count_found();
                    ids.push(id);
                    if !self.record_parts(claim, &ids).await? {
                        return Ok(None);
                    }
                }
                Found::NotStored => {}
                Found::Unknown => reupload = true,
            }
        }
        let mut attempt = 1;
        while ids.len() < talks.len() {
            if self.stop.is_cancelled() {
                // Shutdown: given back (a part in doubt stays so), taken up by the next run.
                self.ledger(Until::GiveUp, || self.store.release_chat(claim))
                    .await?;
                return Ok(None);
            }
            let part = ids.len() as u32 + 1;
            let talk = &talks[ids.len()];
            let marked = self
                .ledger(Until::GiveUp, || {
                    self.store.mark_chat_uploading(claim, parts, c.lease)
                })
                .await?;
            if !marked {
                return Ok(None);
            }
            let started = Instant::now();
            let sent = self
                .sink
                .upload_text(&c.connection_id, &talk.fields, &talk.messages)
                .await;
            // Each `UploadText` is a sample for the limit on uploads in flight, as each try at a call is; a
            // refusal (permanent or fatal) says nothing about load and is none.
            let load = match &sent {
                Ok(_) => Some(Load::Done {
                    bytes: talk.messages.iter().map(|m| m.text.len() as u64).sum(),
                }),
                Err(e) => match e.class() {
                    ErrorClass::Retryable { .. } | ErrorClass::InDoubt => Some(Load::Overloaded),
                    ErrorClass::Permanent | ErrorClass::Fatal => None,
                },
            };
            if let Some(load) = load {
                self.limit.record(Sample {
                    started,
                    elapsed: started.elapsed(),
                    load,
                });
            }
            let error = match sent {
                Ok(id) => {
                    ids.push(id);
                    if !self.record_parts(claim, &ids).await? {
                        return Ok(None);
                    }
                    attempt = 1;
                    continue;
                }
                Err(e) => e,
            };
            let detail = error.to_string();
            let reason = match error.class() {
                ErrorClass::Fatal => {
                    self.fail_run(format!("SpeechSense: {detail}"));
                    return Ok(Some(interrupted(&detail)));
                }
                ErrorClass::Permanent => {
                    return Ok(Some(ChatOutcome::Failed {
                        reason: "invalid_data".into(),
                        detail,
                    }))
                }
                ErrorClass::Retryable { .. } => "upload_failed",
                ErrorClass::InDoubt => {
                    tracing::warn!(session = claim.session_id, part, %detail, "upload in doubt");
                    match self.find_settled(claim.session_id, part).await {
                        Found::Talk(id) => {
                            self.count_found();
                            ids.push(id);
                            if !self.record_parts(claim, &ids).await? {
                                return Ok(None);
                            }
                            attempt = 1;
                            continue;
                        }
                        Found::NotStored => {}
                        Found::Unknown => reupload = true,
                    }
                    "in_doubt"
                }
            };
            if attempt >= c.max_attempts || self.stop.is_cancelled() {
                return Ok(Some(ChatOutcome::Failed {
                    reason: reason.into(),
                    detail,
                }));
            }
            let hint = match error.class() {
                ErrorClass::Retryable { after } => after,
                _ => None,
            };
            self.pause(attempt, hint).await;
            attempt += 1;
        }
        Ok(Some(ChatOutcome::Uploaded {
            talk_ids: ids,
            reuploaded_after_crash: reupload,
        }))
    }

    /// Records the talk IDs of the parts stored so far (fenced), riding out a ledger that refuses the write: the
    /// IDs SpeechSense returned are kept here until the ledger takes them. False when the claim is stale.
    async fn record_parts(&self, claim: &ChatClaim, ids: &[String]) -> Result<bool, EngineError> {
        self.ledger(Until::GiveUp, || self.store.record_chat_parts(claim, ids))
            .await
    }

    /// Searches for a part that may have been stored; "not stored" is asked again over `search_settle` (a talk
    /// stored a moment ago may not be searchable yet) before it is believed.
    async fn find_settled(&self, session_id: u64, part: u32) -> Found {
        const TRIES: u32 = 3;
        for i in 0..TRIES {
            if i > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.search_settle / (TRIES - 1)) => {}
                    _ = self.stop.cancelled() => return Found::Unknown,
                }
            }
            let found = self
                .sink
                .find_talks(&self.config.connection_id, session_id, part)
                .await;
            match found {
                Ok(Some(ids)) => {
                    if let Some(id) = ids.into_iter().next() {
                        return Found::Talk(id);
                    }
                }
                Ok(None) => return Found::Unknown,
                Err(e) => {
                    tracing::warn!(session = session_id, error = %e, "duplicate check failed");
                    return Found::Unknown;
                }
            }
        }
        Found::NotStored
    }

    /// Records the verdict (fenced) and reports it; a claim taken over meanwhile is left to its new holder.
    async fn settle(
        &self,
        claim: &ChatClaim,
        outcome: ChatOutcome,
        messages: u64,
    ) -> Result<(), EngineError> {
        let verdict = match &outcome {
            ChatOutcome::Uploaded {
                reuploaded_after_crash,
                ..
            } => ChatVerdict::Uploaded {
                reuploaded_after_crash: *reuploaded_after_crash,
            },
            ChatOutcome::Skipped { reason } => ChatVerdict::Skipped { reason },
            ChatOutcome::Waiting { reason } => ChatVerdict::Waiting { reason },
            ChatOutcome::Failed { reason, detail } => ChatVerdict::Failed { reason, detail },
            ChatOutcome::AlreadyUploaded => ChatVerdict::Uploaded {
                reuploaded_after_crash: false,
            },
            ChatOutcome::WouldUpload { .. } => unreachable!("a dry run claims no session"),
        };
        let done = self
            .ledger(Until::GiveUp, || self.store.finish_chat(claim, verdict))
            .await?;
        if !done {
            tracing::warn!(
                session = claim.session_id,
                "lease was taken over before the commit; the other worker reports this session"
            );
            self.count_unsettled();
            return Ok(());
        }
        let messages = match outcome {
            ChatOutcome::Uploaded { .. } => messages,
            _ => 0,
        };
        self.report(claim.session_id, outcome, messages);
        Ok(())
    }
}

fn interrupted(detail: &str) -> ChatOutcome {
    ChatOutcome::Failed {
        reason: "interrupted".into(),
        detail: detail.into(),
    }
}

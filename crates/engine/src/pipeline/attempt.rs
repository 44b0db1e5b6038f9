//! One try at a call: download and probe the recording, choose the connection, stream it into SpeechSense behind
//! the fence gate, and classify what happened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24sense_core::audio::{self, AudioProbe, ProbeError, MAX_PROBE_BYTES};
use b24sense_core::mapping::talk_fields;
use b24sense_core::{ErrorClass, FailReason, MonoPolicy, Outcome, SkipReason};
use b24sense_store::Claim;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{stream, StreamExt};

use super::{AttemptError, Run, Sent, WorkItem, MAX_DISK_LINKS};
use crate::ports::{CallSource, Classified, TalkSink};

impl<S: CallSource, K: TalkSink> Run<S, K> {
    /// One try: download, probe, upload. `queued` receives the time the download waited locally before it went
    /// out (a rate-limit token or slot), which the concurrency control leaves out of the attempt's latency.
    pub(super) async fn attempt(
        &self,
        item: &WorkItem,
        claim: &Claim,
        reupload: bool,
        queued: &mut Duration,
    ) -> Result<(Outcome, Sent), AttemptError> {
        let opened = self.open_and_probe(item, queued).await?;
        let connection_id = self.choose_connection(item, &opened)?;
        self.upload_and_classify(item, claim, reupload, opened, connection_id)
            .await
    }

    /// Starts the download and reads just enough of its head to know the container and channels.
    async fn open_and_probe(
        &self,
        item: &WorkItem,
        queued: &mut Duration,
    ) -> Result<Opened, AttemptError> {
        let call = &item.call;
        let url = item
            .url
            .as_ref()
            .ok_or(AttemptError::Final(Outcome::Skipped {
                reason: SkipReason::NoRecording,
            }))?;
        let recording = self
            .source
            .download(url)
            .await
            .map_err(|e| match e.class() {
                ErrorClass::Permanent
                    if call.record_file_id.is_some() && item.disk_links < MAX_DISK_LINKS =>
                {
                    AttemptError::Fallback
                }
                ErrorClass::Permanent => AttemptError::Final(Outcome::Failed {
                    reason: FailReason::RecordingUnavailable,
                    detail: e.to_string(),
                }),
                ErrorClass::Fatal => AttemptError::Fatal(format!("Bitrix24: {e}")),
                ErrorClass::Retryable { after } => AttemptError::Retry {
                    reason: FailReason::DownloadFailed,
                    after,
                    detail: e.to_string(),
                },
                ErrorClass::InDoubt => AttemptError::Retry {
                    reason: FailReason::DownloadFailed,
                    after: None,
                    detail: e.to_string(),
                },
            })?;
        *queued = recording.queued;
        let content_length = recording.content_length;
        let mut body = recording.bytes;

        // Read just enough of the head to know the container and channels. The first piece nearly always holds the
        // whole header: it is kept as it is, and copied only if more must be appended.
        let mut head = Bytes::new();
        let probe = loop {
            match audio::probe(&head) {
                Ok(p) => break p,
                Err(ProbeError::NeedMore(_)) if head.len() < MAX_PROBE_BYTES => {
                    match body.next().await {
                        Some(Ok(chunk)) if head.is_empty() => head = chunk,
                        Some(Ok(chunk)) => {
                            // Takes the buffer back without a copy once it is this head's alone (from the
                            // second join on), so that many small pieces still cost one copy each.
                            let mut joined = BytesMut::from(std::mem::take(&mut head));
                            joined.extend_from_slice(&chunk);
                            head = joined.freeze();
                        }
                        Some(Err(e)) => {
                            return Err(AttemptError::Retry {
                                reason: FailReason::DownloadFailed,
                                after: None,
                                detail: e,
                            })
                        }
                        None => {
                            let detail = format!(
                                "recording ends after {} bytes, before a complete header",
                                head.len()
                            );
                            return Err(unsupported(detail));
                        }
                    }
                }
                Err(ProbeError::NeedMore(_)) => {
                    return Err(unsupported("no audio header in the first 512 KiB".into()))
                }
                Err(ProbeError::Unsupported(why)) => return Err(unsupported(why)),
            }
        };
        Ok(Opened {
            probe,
            content_length,
            head,
            body,
        })
    }

    /// The connection this recording goes to; a final skip when it is too long, or mono under [`MonoPolicy::Skip`].
    fn choose_connection(&self, item: &WorkItem, opened: &Opened) -> Result<String, AttemptError> {
        let seconds = opened
            .probe
            .estimate_seconds(opened.content_length)
            .unwrap_or(0)
            .max(item.call.recording_seconds());
        if seconds > self.config.max_recording.as_secs() {
            return Err(AttemptError::Final(Outcome::Skipped {
                reason: SkipReason::TooLong,
            }));
        }
        match (&self.config.mono_policy, opened.probe.is_mono()) {
            (MonoPolicy::Skip, true) => Err(AttemptError::Final(Outcome::Skipped {
                reason: SkipReason::MonoRecording,
            })),
            (MonoPolicy::Route(id), true) => Ok(id.clone()),
            _ => Ok(self.config.connection_id.clone()),
        }
    }

    /// Streams the probed head and the rest of the download into SpeechSense, ending behind the fence gate, and
    /// classifies the result: uploaded, or why not (and whether it may have been stored).
    async fn upload_and_classify(
        &self,
        item: &WorkItem,
        claim: &Claim,
        reupload: bool,
        opened: Opened,
        connection_id: String,
    ) -> Result<(Outcome, Sent), AttemptError> {
        let Opened {
            probe, head, body, ..
        } = opened;
        let mono = probe.is_mono();
        let fields = talk_fields(
            &item.call,
            item.operator.as_ref(),
            item.client.as_ref(),
            &self.config.language,
        );

        let sent = Arc::new(AtomicU64::new(0));
        let source_broke = Arc::new(AtomicBool::new(false));
        let gate_closed = Arc::new(Mutex::new(None::<GateClosed>));
        let audio = {
            let sent = sent.clone();
            let broke = source_broke.clone();
            stream::once(async move { Ok::<Bytes, String>(head) })
                .chain(body)
                .inspect(move |r| match r {
                    Ok(b) => {
                        sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => broke.store(true, Ordering::Relaxed),
                })
                .chain(self.fence_gate(claim, gate_closed.clone()))
                .boxed()
        };
        let container = probe.container;
        let upload_started = Instant::now();
        let upload = self
            .sink
            .upload_audio(&connection_id, &fields, container, audio);
        let uploaded = upload.await;
        let gate = gate_closed.lock().unwrap().take();
        match uploaded {
            Ok(talk_id) => Ok((
                // `mono` marks a one-channel recording in a two-channel connection (not one routed elsewhere).
                Outcome::Uploaded {
                    talk_id,
                    mono: mono && connection_id == self.config.connection_id,
                    reuploaded_after_crash: reupload,
                },
                Sent {
                    bytes: sent.load(Ordering::Relaxed),
                    took: Some(upload_started.elapsed()),
                },
            )),
            Err(e) => {
                let detail = e.to_string();
                match gate {
                    // Taken over: the stream was abandoned before its end, so nothing was stored.
                    Some(GateClosed::TakenOver) => return Err(AttemptError::LostLease),
                    Some(GateClosed::Ledger(e)) => return Err(AttemptError::Ledger(e)),
                    None => {}
                }
                if source_broke.load(Ordering::Relaxed) {
                    // The download broke mid-way and the upload was abandoned: nothing was stored.
                    return Err(AttemptError::Retry {
                        reason: FailReason::DownloadFailed,
                        after: None,
                        detail,
                    });
                }
                Err(match e.class() {
                    ErrorClass::Retryable { after } => AttemptError::Retry {
                        reason: FailReason::UploadFailed,
                        after,
                        detail,
                    },
                    ErrorClass::Permanent => AttemptError::Final(Outcome::Failed {
                        reason: FailReason::InvalidData,
                        detail,
                    }),
                    ErrorClass::InDoubt => AttemptError::InDoubt { detail },
                    ErrorClass::Fatal => AttemptError::Fatal(format!("SpeechSense: {detail}")),
                })
            }
        }
    }

    /// The end of an upload's audio: marks the call `uploading` (fenced, renewing its lease) right before the stream
    /// ends. The half-close is what makes SpeechSense store the talk, so this is the one moment the ledger must be
    /// written before: a crash earlier leaves nothing stored and nothing in doubt. If the lease was taken over, or
    /// the ledger cannot say, the stream ends in an error instead, which abandons the upload so that nothing is
    /// stored; `closed` tells why.
    fn fence_gate(
        &self,
        claim: &Claim,
        closed: Arc<Mutex<Option<GateClosed>>>,
    ) -> impl futures::Stream<Item = Result<Bytes, String>> + Send + 'static {
        let store = self.store.clone();
        let claim = claim.clone();
        let lease = self.config.lease;
        stream::once(async move {
            let why = match store.mark_uploading(&claim, lease).await {
                Ok(true) => return None,
                Ok(false) => {
                    *closed.lock().unwrap() = Some(GateClosed::TakenOver);
                    "another worker took this call over".to_string()
                }
                Err(e) => {
                    let why = format!("ledger error before the upload's end: {e}");
                    *closed.lock().unwrap() = Some(GateClosed::Ledger(e));
                    why
                }
            };
            tracing::warn!(call = claim.call_id, %why, "abandoning the upload");
            Some(Err(why))
        })
        .filter_map(|item| async move { item })
    }
}

/// Why the fence gate ended an upload's stream in an error instead of letting it end.
enum GateClosed {
    /// Another worker took the call over.
    TakenOver,
    /// The ledger could not write the `uploading` mark.
    Ledger(b24sense_store::Error),
}

/// A download whose head was probed: the audio's format, and the stream from its first piece on.
struct Opened {
    probe: AudioProbe,
    content_length: Option<u64>,
    /// The pieces read to probe the format, joined.
    head: Bytes,
    /// The rest of the download.
    body: BoxStream<'static, Result<Bytes, String>>,
}

fn unsupported(detail: String) -> AttemptError {
    AttemptError::Final(Outcome::Failed {
        reason: FailReason::UnsupportedAudio,
        detail,
    })
}

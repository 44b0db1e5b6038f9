//! Streaming recording downloads (`CALL_RECORD_URL` or a Disk `DOWNLOAD_URL`), retried like REST calls; requests
//! to the portal's own host take a limiter token while the portal is known to count them (`accounting`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::{ACCEPT, REFERER};
use serde_json::Value;
use url::Url;

use super::{bump, content_type_has, lock_read, Bitrix24Client};
use crate::auth::Origin;
use crate::envelope::{parse_envelope, Envelope};
use crate::error::{ApiErrorKind, Error};

/// A streaming recording download.
pub struct Download {
    pub content_length: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, Error>>,
    /// Time spent waiting here for a limiter token or an over-budget slot before the request went out: local
    /// queueing, not the portal's latency (the engine's concurrency control must not read it as load).
    pub queued: Duration,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_length", &self.content_length)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl Bitrix24Client {
    /// Streaming GET of a recording (`CALL_RECORD_URL` or `DOWNLOAD_URL`). The URL's query is never logged.
    pub async fn download(&self, url: &Url) -> Result<Download, Error> {
        let inner = &self.inner;
        let cfg = &inner.config;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(Error::InvalidArgument(format!(
                "recording URL scheme {:?} is not http(s)",
                url.scheme()
            )));
        }
        self.check_destination(url)?;
        let origin = lock_read(&inner.origin);
        let on_portal = origin
            .as_ref()
            .is_some_and(|o| Origin::of(url).is_some_and(|u| u.host == o.host && u.port == o.port));
        let referer = origin.as_ref().map(|o| format!("{}/", o.base()));
        let host = url.host_str().unwrap_or_default().to_string();
        let mut attempt = 0u32;
        let mut queued = Duration::ZERO;
        loop {
            let waiting = Instant::now();
            let mut over_budget = None;
            if on_portal && !self.counts_portal_downloads() {
                over_budget = self.uncounted_download_slot().await;
            }
            // Counted from the start, or the portal was found to count while this one waited for a slot.
            if on_portal && self.counts_portal_downloads() {
                over_budget = None;
                inner.limiter.acquire().await;
                bump(&inner.counters.portal_downloads);
            } else if on_portal {
                bump(&inner.counters.uncounted_portal_downloads);
            }
            queued += waiting.elapsed();
            bump(&inner.counters.requests);
            let mut req = inner.download_http.get(url.clone()).header(ACCEPT, "*/*");
            if let Some(r) = &referer {
                req = req.header(REFERER, r.as_str());
            }
            let sent = req.send().await;
            // The portal has answered (or the request failed): the slot's refusal risk is over.
            drop(over_budget);
            let err = match sent {
                Err(e) => Error::transport(e),
                Ok(resp) => {
                    let status = resp.status();
                    let json = content_type_has(&resp, "json");
                    if status.is_success() && !json {
                        bump(&inner.counters.downloads);
                        let me = self.inner.clone();
                        let content_length = resp.content_length();
                        let stream = resp
                            .bytes_stream()
                            .map(move |r| match r {
                                Ok(b) => {
                                    me.counters
                                        .download_bytes
                                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                                    Ok(b)
                                }
                                Err(e) => Err(Error::transport(e)),
                            })
                            .boxed();
                        return Ok(Download {
                            content_length,
                            stream,
                            queued,
                        });
                    }
                    let code = status.as_u16();
                    // The portal's download.json reports errors (dead token, deleted file) as a JSON envelope.
                    let body = resp.bytes().await.unwrap_or_default();
                    let envelope = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| parse_envelope(&v, code));
                    let refused = code == 429
                        || matches!(&envelope, Some(Envelope::Err(e, _)) if e.kind() == ApiErrorKind::QueryLimitExceeded);
                    if refused && on_portal {
                        self.note_rate_limited();
                    }
                    match envelope {
                        Some(Envelope::Err(e, _)) if !e.kind().is_transient() && code != 429 => {
                            return Err(Error::DownloadLink(e))
                        }
                        Some(Envelope::Err(e, _)) => Error::Api(e),
                        Some(Envelope::Ok(_)) | None if status.is_success() => {
                            // A JSON recording is nonsense but not ours to judge: hand the bytes over.
                            bump(&inner.counters.downloads);
                            inner
                                .counters
                                .download_bytes
                                .fetch_add(body.len() as u64, Ordering::Relaxed);
                            let len = body.len() as u64;
                            return Ok(Download {
                                content_length: Some(len),
                                stream: futures::stream::once(async move { Ok(body) }).boxed(),
                                queued,
                            });
                        }
                        _ if code == 429 || status.is_server_error() => {
                            Error::Download { status: code }
                        }
                        _ => return Err(Error::Download { status: code }),
                    }
                }
            };
            attempt += 1;
            if attempt >= cfg.max_attempts {
                tracing::warn!(host = %host, attempts = attempt, error = %err, "recording download failed");
                return Err(err);
            }
            bump(&inner.counters.retries);
            let wait = self.backoff(attempt);
            tracing::debug!(host = %host, attempt, error = %err, "retrying recording download");
            tokio::time::sleep(wait).await;
        }
    }
}

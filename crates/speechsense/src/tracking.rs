//! Knowing whether a request body was fully handed to the connection.
//!
//! Why: SpeechSense has no idempotency key, so after a failure the client must tell "nothing can have been stored"
//! (retry freely) from "the server had the whole talk" (in doubt). A tower wrapper around the channel swaps the
//! request body for one that flags [`SendProgress`] when the body ends (the HTTP/2 stream is half-closed).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tonic::codegen::Service;
use tonic::Status;

/// Shared per-call flag: set once the request body has ended. Travels in the request extensions.
#[derive(Clone, Default)]
pub(crate) struct SendProgress(Arc<Inner>);

#[derive(Default)]
struct Inner {
    sent: AtomicBool,
    aborted: AtomicBool,
    notify: Notify,
}

impl SendProgress {
    /// The body must not end: its next poll fails, so hyper resets the stream with INTERNAL_ERROR.
    ///
    /// Why not just drop the call: hyper then resets with CANCEL, and tonic servers read a CANCEL at a message
    /// boundary as a clean end of the request stream — the server would store a truncated talk.
    pub(crate) fn abort(&self) {
        self.0.aborted.store(true, Ordering::SeqCst);
    }

    fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }

    fn mark_sent(&self) {
        if !self.0.sent.swap(true, Ordering::SeqCst) {
            // notify_one keeps a permit if nobody waits yet, so `sent()` cannot miss it.
            self.0.notify.notify_one();
        }
    }

    pub(crate) fn is_sent(&self) -> bool {
        self.0.sent.load(Ordering::SeqCst)
    }

    /// Resolves once the body has ended.
    pub(crate) async fn sent(&self) {
        while !self.is_sent() {
            self.0.notify.notified().await;
        }
    }
}

/// Wraps a gRPC transport; bodies of requests carrying a [`SendProgress`] extension report their end.
#[derive(Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S) -> Self {
        Tracked { inner }
    }
}

impl<S> Service<http::Request<tonic::body::Body>> for Tracked<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let req = match req.extensions().get::<SendProgress>().cloned() {
            Some(progress) => {
                req.map(|inner| tonic::body::Body::new(TrackedBody { inner, progress }))
            }
            None => req,
        };
        self.inner.call(req)
    }
}

struct TrackedBody {
    inner: tonic::body::Body,
    progress: SendProgress,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.progress.is_aborted() {
            return Poll::Ready(Some(Err(Status::cancelled(
                "the audio source failed; upload aborted",
            ))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => self.progress.mark_sent(),
            // The source failed during this very poll (the stream stalls instead of ending).
            Poll::Pending if self.progress.is_aborted() => {
                return Poll::Ready(Some(Err(Status::cancelled(
                    "the audio source failed; upload aborted",
                ))));
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if self.progress.is_aborted() {
            return false;
        }
        // hyper asks this right after a data frame to send it with END_STREAM.
        let end = self.inner.is_end_stream();
        if end {
            self.progress.mark_sent();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

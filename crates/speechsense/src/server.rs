//! Helpers for serving this proto with tonic (used by the emulator).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Code, Status};

/// Wraps a tonic service so that a client's `RST_STREAM(CANCEL)` on the request stream is an error.
///
/// Why: tonic's decoder reads a request-side `Cancelled` as a clean end of stream, so a client that gives up at
/// a message boundary would look like one that half-closed, and an upload server would store a truncated talk.
/// Real gRPC servers treat any reset as a cancelled call.
#[derive(Debug, Clone)]
pub struct ResetAware<S> {
    inner: S,
}

impl<S> ResetAware<S> {
    pub fn new(inner: S) -> Self {
        ResetAware { inner }
    }
}

impl<S: NamedService> NamedService for ResetAware<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<tonic::body::Body>> for ResetAware<S>
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
        self.inner
            .call(req.map(|inner| tonic::body::Body::new(ResetBody { inner })))
    }
}

struct ResetBody {
    inner: tonic::body::Body,
}

impl Body for ResetBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(status))) if status.code() == Code::Cancelled => {
                Poll::Ready(Some(Err(Status::new(
                    Code::Aborted,
                    format!("the client reset the request stream: {}", status.message()),
                ))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

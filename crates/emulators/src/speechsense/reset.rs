//! Stream resets across the emulator's edge, both ways.
//!
//! - [`ResetAware`]: a client's `RST_STREAM(CANCEL)` on the request stream becomes an error, so an upload cut at a
//!   message boundary is not stored as if the client had half-closed.
//! - [`ServerReset`]: an answer a handler marks with [`RESET_MARKER`] becomes a real `RST_STREAM(INTERNAL_ERROR)`
//!   (the `reset_after_bytes` fault).

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
pub(crate) struct ResetAware<S> {
    inner: S,
}

impl<S> ResetAware<S> {
    pub(crate) fn new(inner: S) -> Self {
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

/// Response metadata a handler sets to have its stream reset instead of answered (never sent to the client).
pub(crate) const RESET_MARKER: &str = "x-emulator-reset-stream";

/// Turns an answer marked with [`RESET_MARKER`] into a real `RST_STREAM(INTERNAL_ERROR)`: response headers without
/// a gRPC status, then a body that fails, which makes hyper reset the stream.
#[derive(Debug, Clone)]
pub(crate) struct ServerReset<S> {
    inner: S,
}

impl<S> ServerReset<S> {
    pub(crate) fn new(inner: S) -> Self {
        ServerReset { inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for ServerReset<S> {
    const NAME: &'static str = S::NAME;
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<http::Request<tonic::body::Body>> for ServerReset<S>
where
    S: tonic::codegen::Service<http::Request<tonic::body::Body>, Response = HttpResponse>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if !resp.headers().contains_key(RESET_MARKER) {
                return Ok(resp);
            }
            let (mut parts, _) = resp.into_parts();
            for h in [
                RESET_MARKER,
                "grpc-status",
                "grpc-message",
                "grpc-status-details-bin",
            ] {
                parts.headers.remove(h);
            }
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(FailingBody),
            ))
        })
    }
}

/// A response body that fails at once (hyper answers with `RST_STREAM(INTERNAL_ERROR)`).
struct FailingBody;

impl http_body::Body for FailingBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        std::task::Poll::Ready(Some(Err(tonic::Status::internal(
            "injected fault: stream reset by the server",
        ))))
    }
}

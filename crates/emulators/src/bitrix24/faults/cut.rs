//! Cut bodies: an answer that announces its full `Content-Length`, sends half and then fails, so hyper closes
//! the connection mid-body (the `cut_rest_next` and `cut_download_next` faults).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Response};
use http_body::{Frame, SizeHint};

/// Announces the full length, sends half, then fails: hyper closes the connection mid-body.
pub(crate) fn cut_half(response: Response<Body>) -> Response<Body> {
    let Some(len) = body_len(&response) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Response::from_parts(
        parts,
        Body::new(CutBody {
            inner: body,
            remaining: len / 2,
            len,
            flush: None,
        }),
    )
}

/// The exact length of an answer, when it is known before sending.
pub(crate) fn body_len(response: &Response<Body>) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| http_body::Body::size_hint(response.body()).exact())
}

struct CutBody {
    inner: Body,
    remaining: u64,
    len: u64,
    flush: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            // Give hyper a moment to flush what was sent: it drops its write buffer when the body fails.
            let flush = this
                .flush
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
            if flush.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "injected fault: body cut short",
            ))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let n = (data.len() as u64).min(this.remaining);
                    data.truncate(n as usize);
                    this.remaining -= n;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(other) => Poll::Ready(Some(Ok(other))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            // The inner body ended early (should not happen): fail anyway, the client was promised more.
            Poll::Ready(None) => {
                this.remaining = 0;
                self.poll_frame(cx)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

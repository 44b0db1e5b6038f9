//! The outgoing `UploadAsStream` message stream: metadata, audio metadata, then the audio re-cut into chunks of
//! exactly [`CHUNK_SIZE`] bytes (the last may be shorter), whatever sizes the source yields.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::oneshot;

use crate::proto::{
    audio_streaming_request, stream_talk_request, AudioChunk, AudioStreamingRequest,
    StreamTalkRequest,
};
use crate::tracking::SendProgress;

/// Audio chunk size on the wire: 1 MiB, as the official uploader.
pub const CHUNK_SIZE: usize = 1 << 20;

/// The first chunk buffer's size when the source has yielded less so far.
const MIN_BUFFER: usize = 64 * 1024;

/// gRPC message size limit used on both sides (a single `Upload` carries < 128 MB of audio).
pub const MAX_MESSAGE_SIZE: usize = 130 * 1024 * 1024;

/// An error reported by the audio source (e.g. the recording download broke). Shown as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

pub(crate) struct AudioStream {
    head: VecDeque<StreamTalkRequest>,
    source: Option<BoxStream<'static, Result<Bytes, SourceError>>>,
    /// Rest of the last source item not yet cut into chunks.
    pending: Bytes,
    /// A chunk being assembled from small source items (never more than CHUNK_SIZE).
    buf: BytesMut,
    /// Source bytes so far: sizes the next chunk's buffer, so that a short recording does not take a whole MiB
    /// (freshly mapped pages on every upload cost more CPU than the copy) and a long one is not regrown per chunk.
    seen: usize,
    on_failure: Option<oneshot::Sender<String>>,
    progress: SendProgress,
    failed: bool,
}

impl AudioStream {
    /// `on_failure` receives the source's error; from then on the stream never ends (ending it would half-close
    /// and let the server store a truncated talk) and `progress` is aborted, so the request body fails and hyper
    /// resets the HTTP/2 stream.
    pub(crate) fn new(
        head: Vec<StreamTalkRequest>,
        source: BoxStream<'static, Result<Bytes, SourceError>>,
        on_failure: oneshot::Sender<String>,
        progress: SendProgress,
    ) -> Self {
        AudioStream {
            head: head.into(),
            source: Some(source),
            pending: Bytes::new(),
            buf: BytesMut::new(),
            seen: 0,
            on_failure: Some(on_failure),
            progress,
            failed: false,
        }
    }
}

fn chunk(data: Bytes) -> StreamTalkRequest {
    StreamTalkRequest {
        event: Some(stream_talk_request::Event::Audio(AudioStreamingRequest {
            audio_event: Some(audio_streaming_request::AudioEvent::Chunk(AudioChunk {
                data,
            })),
        })),
    }
}

impl Stream for AudioStream {
    type Item = StreamTalkRequest;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamTalkRequest>> {
        let this = self.get_mut();
        if let Some(msg) = this.head.pop_front() {
            return Poll::Ready(Some(msg));
        }
        if this.failed {
            return Poll::Pending;
        }
        loop {
            if !this.pending.is_empty() {
                if this.buf.is_empty() && this.pending.len() >= CHUNK_SIZE {
                    // Large source items are cut without copying.
                    return Poll::Ready(Some(chunk(this.pending.split_to(CHUNK_SIZE))));
                }
                if this.buf.capacity() == 0 {
                    this.buf.reserve(CHUNK_SIZE.min(this.seen.max(MIN_BUFFER)));
                }
                let take = (CHUNK_SIZE - this.buf.len()).min(this.pending.len());
                this.buf.extend_from_slice(&this.pending.split_to(take));
                if this.buf.len() == CHUNK_SIZE {
                    return Poll::Ready(Some(chunk(this.buf.split().freeze())));
                }
                continue;
            }
            let Some(source) = this.source.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(source.poll_next_unpin(cx)) {
                Some(Ok(bytes)) => {
                    this.seen += bytes.len();
                    this.pending = bytes;
                }
                Some(Err(e)) => {
                    this.failed = true;
                    this.source = None;
                    this.progress.abort();
                    if let Some(tx) = this.on_failure.take() {
                        let _ = tx.send(e.0);
                    }
                    return Poll::Pending;
                }
                None => {
                    this.source = None;
                    if !this.buf.is_empty() {
                        return Poll::Ready(Some(chunk(this.buf.split().freeze())));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn sizes(inputs: Vec<usize>) -> Vec<usize> {
        let items: Vec<Result<Bytes, SourceError>> = inputs
            .into_iter()
            .map(|n| Ok(Bytes::from(vec![7u8; n])))
            .collect();
        let (tx, _rx) = oneshot::channel();
        let s = AudioStream::new(
            vec![],
            stream::iter(items).boxed(),
            tx,
            SendProgress::default(),
        );
        futures::executor::block_on(s.collect::<Vec<_>>())
            .into_iter()
            .map(|m| match m.event {
                Some(stream_talk_request::Event::Audio(AudioStreamingRequest {
                    audio_event: Some(audio_streaming_request::AudioEvent::Chunk(c)),
                })) => c.data.len(),
                _ => panic!("not a chunk"),
            })
            .collect()
    }

    #[test]
    fn rechunks_to_exact_mebibytes() {
        const M: usize = CHUNK_SIZE;
        assert_eq!(sizes(vec![]), Vec::<usize>::new());
        assert_eq!(sizes(vec![10, 0, 20]), vec![30]);
        assert_eq!(sizes(vec![M]), vec![M]);
        assert_eq!(sizes(vec![3 * M + 5]), vec![M, M, M, 5]);
        assert_eq!(sizes(vec![M - 1, 2, M - 1]), vec![M, M]);
        assert_eq!(sizes(vec![700_000; 5]), vec![M, M, M, 3_500_000 - 3 * M]);
    }
}

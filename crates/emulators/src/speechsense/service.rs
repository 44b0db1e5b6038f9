//! The `TalkService` handlers: each RPC records its call (method, client request id, code) and answers with the
//! ids Yandex Cloud adds; the work is in `upload` and `search`.

use std::sync::Arc;

use b24sense_speechsense::proto::{
    GetTalkRequest, GetTalkResponse, SearchTalkRequest, SearchTalkResponse, StreamTalkRequest,
    UploadTalkRequest, UploadTalkResponse, UploadTextRequest, UploadTextResponse,
};
use chrono::{DateTime, Utc};
use rand::Rng;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use super::reset::RESET_MARKER;
use super::stub::talk_service_server::TalkService;
use super::upload::{AbortWatch, Failure, OpenStream};
use super::{RecordedCall, State};

pub(crate) struct TalkServiceImpl {
    pub(super) state: Arc<State>,
}

impl TalkServiceImpl {
    pub(crate) fn new(state: Arc<State>) -> Self {
        TalkServiceImpl { state }
    }
}

fn client_request_id(md: &MetadataMap) -> Option<String> {
    md.get("x-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Yandex Cloud answers carry these; the client logs them.
fn add_ids(md: &mut MetadataMap) {
    if let Ok(v) = random_hex(32).parse() {
        md.insert("x-request-id", v);
    }
    if let Ok(v) = random_hex(16).parse() {
        md.insert("x-server-trace-id", v);
    }
}

pub(super) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(super) fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

impl TalkServiceImpl {
    /// The configured delay before a successful upload's answer.
    async fn latency(&self, result: &Result<String, Failure>) {
        let latency = self.state.config.upload_latency;
        if result.is_ok() && !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Counts the upload's outcome, then answers it like any call (an error carries the request ids too).
    fn finish_upload(
        &self,
        method: &'static str,
        crid: Option<String>,
        result: Result<String, Failure>,
    ) -> Result<Response<UploadTalkResponse>, Status> {
        let result = {
            let mut inner = self.state.lock();
            match result {
                Ok(talk_id) => {
                    inner.stats.uploads_ok += 1;
                    Ok(UploadTalkResponse { talk_id })
                }
                Err(failure) => {
                    let mut status = match failure {
                        Failure::Refused(s) => {
                            *inner
                                .stats
                                .uploads_rejected
                                .entry(format!("{:?}", s.code()))
                                .or_default() += 1;
                            s
                        }
                        // Counted by the `AbortWatch`.
                        Failure::Aborted(s) => s,
                        Failure::Reset => {
                            inner.stats.streams_reset += 1;
                            let mut s =
                                Status::internal("injected fault: stream reset by the server");
                            s.metadata_mut()
                                .insert(RESET_MARKER, MetadataValue::from_static("1"));
                            s
                        }
                    };
                    add_ids(status.metadata_mut());
                    Err(status)
                }
            }
        };
        self.answer(method, crid, result)
    }

    /// Records the call and turns the result into the gRPC answer.
    fn answer<T>(
        &self,
        method: &'static str,
        crid: Option<String>,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        self.state.lock().calls.push(RecordedCall {
            method,
            client_request_id: crid,
            code: result.as_ref().map_or_else(Status::code, |_| Code::Ok),
        });
        let mut resp = Response::new(result?);
        add_ids(resp.metadata_mut());
        Ok(resp)
    }
}

#[tonic::async_trait]
impl TalkService for TalkServiceImpl {
    async fn upload_as_stream(
        &self,
        request: Request<Streaming<StreamTalkRequest>>,
    ) -> Result<Response<UploadTalkResponse>, Status> {
        let _open = OpenStream::new(&self.state);
        let crid = client_request_id(request.metadata());
        let mut watch = AbortWatch {
            state: &self.state,
            done: false,
        };
        let result = self.stream_upload(request, crid.clone()).await;
        watch.done = !matches!(result, Err(Failure::Aborted(_)));
        drop(watch);
        self.latency(&result).await;
        self.finish_upload("UploadAsStream", crid, result)
    }

    async fn upload(
        &self,
        request: Request<UploadTalkRequest>,
    ) -> Result<Response<UploadTalkResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let result = self.unary_upload(request, crid.clone()).await;
        self.latency(&result).await;
        self.finish_upload("Upload", crid, result)
    }

    async fn upload_text(
        &self,
        request: Request<UploadTextRequest>,
    ) -> Result<Response<UploadTextResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let result = self.text_upload(request, crid.clone()).await;
        self.latency(&result).await;
        self.finish_upload("UploadText", crid, result).map(|resp| {
            let (md, body, ext) = resp.into_parts();
            Response::from_parts(
                md,
                UploadTextResponse {
                    talk_id: body.talk_id,
                },
                ext,
            )
        })
    }

    async fn search(
        &self,
        request: Request<SearchTalkRequest>,
    ) -> Result<Response<SearchTalkResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let result = self.search_inner(request);
        self.answer("Search", crid, result)
    }

    async fn get(
        &self,
        request: Request<GetTalkRequest>,
    ) -> Result<Response<GetTalkResponse>, Status> {
        let crid = client_request_id(request.metadata());
        let result = self.get_inner(request);
        self.answer("Get", crid, result)
    }
}

//! Entry points for the fuzz targets in `fuzz/` (hidden from the docs, not part of the client's API): a response
//! body from a portal, read the way the client reads it — the envelope, a `batch` answer inside it, and every
//! command's result as call-history rows and as a `disk.file.get` file. They must never panic, whatever the body.

use chrono::FixedOffset;
use serde_json::Value;

use crate::envelope::{parse_envelope, BatchResponse, Envelope};
use crate::methods::{file_url, rows, CallChunk};

/// One HTTP answer's body (`status` as the portal sent it) through every reader of a response.
pub fn response_body(status: u16, body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    match parse_envelope(&value, status) {
        None => {}
        Some(Envelope::Err(e, _)) => {
            let _ = (e.kind(), e.class(), e.to_string());
        }
        Some(Envelope::Ok(resp)) => {
            // The same answer read as a single method's result, then as a batch.
            command_result(Some(&resp.result));
            if let Ok(batch) = BatchResponse::from_response(resp) {
                for e in batch.errors.values() {
                    let _ = (e.kind(), e.class());
                }
                for v in batch.results.values() {
                    command_result(Some(v));
                }
            }
        }
    }
}

/// One command's result as call-history rows (the portal's offset east and west) and as a Disk file.
fn command_result(v: Option<&Value>) {
    for hours in [3, -5] {
        let offset = FixedOffset::east_opt(hours * 3600).expect("offset within a day");
        let mut chunk = CallChunk::default();
        chunk.read(&rows(v), offset);
    }
    if let Some(v) = v {
        let _ = file_url(1, v);
    }
}

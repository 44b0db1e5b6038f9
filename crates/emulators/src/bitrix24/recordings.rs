//! Recordings as the portal serves them: what a test may know about one ([`RecordingInfo`]), the signed Disk
//! download links of `disk.file.get`, and the two download routes — `/rest/download.json` (Disk, through the
//! bucket when so configured) and `/records/{CALL_ID}.{ext}` (the external recording host, never rate-limited).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Response, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::app;
use super::audio::{Generator, RecordingBody};
use super::config::PortalConfig;
use super::error::ApiError;
use super::params::{self, P};
use super::reply::error_response;
use super::state::PortalState;

/// A call's recording as the emulator will serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingInfo {
    /// "mp3" or "wav".
    pub container: String,
    pub channels: u16,
    pub bytes: u64,
    /// SHA-256 of the exact bytes served, lower-case hex.
    pub sha256: String,
    /// `CALL_RECORD_URL` is "" — only `RECORD_FILE_ID` → `disk.file.get` leads to it.
    pub via_disk_only: bool,
    /// `RECORD_FILE_ID`.
    pub file_id: u64,
    /// `CALL_RECORD_URL` when it is set.
    pub record_url: Option<String>,
}

impl PortalState {
    fn recording_generator(&self, idx: usize) -> Option<Arc<Generator>> {
        let spec = self.data.calls.get(idx)?.record.as_ref()?;
        Some(Arc::new(Generator::new(spec)))
    }

    /// What the recording of the call at `idx` is (its SHA-256 computed once, then cached).
    pub(crate) fn recording_info(&self, idx: usize) -> Option<RecordingInfo> {
        let call = self.data.calls.get(idx)?;
        let spec = call.record.as_ref()?;
        let mut cache = self.sha_cache.lock().unwrap_or_else(|e| e.into_inner());
        let sha = cache
            .entry(call.id)
            .or_insert_with(|| Generator::new(spec).sha256_hex())
            .clone();
        drop(cache);
        Some(RecordingInfo {
            container: spec.container.ext().into(),
            channels: spec.channels,
            bytes: spec.bytes,
            sha256: sha,
            via_disk_only: spec.disk_only,
            file_id: spec.file_id,
            record_url: call
                .record_url(&self.records_base)
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from),
        })
    }
}

/// The webhook's download token (the "auth" of its `DOWNLOAD_URL`): stable, derived from the secret.
pub(crate) fn webhook_download_auth(cfg: &PortalConfig) -> String {
    let h = Sha256::digest(format!(
        "download-auth:{}:{}",
        cfg.webhook_user, cfg.webhook_secret
    ));
    hex::encode(&h[..16])
}

fn file_sig(cfg: &PortalConfig, file_id: u64) -> String {
    let h = Sha256::digest(format!("disk-sig:{}:{file_id}", cfg.webhook_secret));
    hex::encode(&h[..12])
}

/// `DOWNLOAD_URL` of a Disk file for the caller whose token is `auth`.
pub(crate) fn download_url(inner: &PortalState, auth: &str, file_id: u64) -> String {
    format!(
        "{}rest/download.json?auth={auth}&token=disk%7C{file_id}%7C{}",
        inner.base,
        file_sig(&inner.config, file_id)
    )
}

/// Streams the recording of the call at `idx` (generated while sent, slowed by the `slow_download` fault).
fn recording_response(inner: &PortalState, idx: usize, filename: &str) -> Response<Body> {
    let Some(gen) = inner.recording_generator(idx) else {
        return error_response(inner, &ApiError::file_not_found());
    };
    let mime = inner.data.calls[idx]
        .record
        .as_ref()
        .map_or("audio/mpeg", |r| r.container.mime());
    inner.stats().downloads += 1;
    let delay = inner.faults.slow_download();
    let len = gen.len();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, mime)
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        )
        .body(Body::new(RecordingBody::new(
            gen,
            delay,
            inner.bytes_sent.clone(),
        )))
        .unwrap_or_default()
}

/// The configured download latency (a download's time to its first byte), before anything is answered.
async fn wait_download_latency(inner: &PortalState) {
    if !inner.config.download_latency.is_zero() {
        tokio::time::sleep(inner.config.download_latency).await;
    }
}

/// `GET /rest/download.json?auth=…&token=disk|{id}|{sig}`
pub(crate) async fn download(
    State(inner): State<Arc<PortalState>>,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    wait_download_latency(&inner).await;
    if inner.config.count_downloads && !inner.admit() {
        return error_response(&inner, &ApiError::query_limit());
    }
    let p = query
        .as_deref()
        .map_or_else(P::empty_map, params::from_form);
    let auth = p.text_ci("auth");
    let auth_ok = !auth.is_empty()
        && (auth == webhook_download_auth(&inner.config)
            || inner.config.access_tokens.contains(&auth)
            || app::download_auth_ok(&inner, &auth));
    if !auth_ok {
        return error_response(&inner, &ApiError::no_auth());
    }
    let token = p.text_ci("token");
    let mut parts = token.split('|');
    let file = match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u64>().ok()),
        parts.next(),
    ) {
        (Some("disk"), Some(id), Some(sig)) if sig == file_sig(&inner.config, id) => {
            inner.data.files.get(&id).copied()
        }
        _ => None,
    };
    let Some(idx) = file.filter(|&i| inner.recording_available(i)) else {
        return error_response(&inner, &ApiError::file_not_found());
    };
    recording_response(&inner, idx, &inner.data.calls[idx].disk_file_name())
}

/// `GET /records/{CALL_ID}.{ext}`: the external host's plain 404 page for anything it does not have.
pub(crate) async fn record_file(
    State(inner): State<Arc<PortalState>>,
    Path(file): Path<String>,
) -> Response<Body> {
    wait_download_latency(&inner).await;
    let not_found = || (StatusCode::NOT_FOUND, "Not Found").into_response();
    let Some((call_id, ext)) = file.rsplit_once('.') else {
        return not_found();
    };
    let Some(&idx) = inner.data.by_call_id.get(call_id) else {
        return not_found();
    };
    if !inner.recording_available(idx) {
        return not_found();
    }
    match &inner.data.calls[idx].record {
        Some(r) if !r.disk_only && r.container.ext() == ext => {
            recording_response(&inner, idx, &file)
        }
        _ => not_found(),
    }
}

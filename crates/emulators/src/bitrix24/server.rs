//! The HTTP server: the routes, raw hyper connections (so that a fault can drop or reset one without an answer),
//! the fault layer in front of every route but `/_emulator/*`, and `GET /_emulator/stats`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;

use super::app;
use super::faults::{self, ResetOnDrop, Verdict};
use super::recordings::{download, record_file};
use super::rest::{rest_token, rest_webhook};
use super::state::PortalState;

/// Raw hyper connections so that a "dropped connection" fault can close the socket without any response.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    inner: Arc<PortalState>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut stop_accept = stop.clone();
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop_accept.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let (stream, reset) = ResetOnDrop::new(stream);
        let app = app.clone();
        let inner = inner.clone();
        let mut stop_conn = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let app = app.clone();
                let inner = inner.clone();
                let reset = reset.clone();
                async move { handle(inner, app, req, reset).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop_conn.changed() => {}
            }
        });
    }
}

/// Error type whose only purpose is to make hyper drop the connection.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault: connection dropped")
    }
}

impl std::error::Error for DropConnection {}

/// One request: counted, through the fault layer, then to the routes (and maybe cut on the way out).
async fn handle(
    inner: Arc<PortalState>,
    app: Router,
    req: Request<hyper::body::Incoming>,
    reset: Arc<AtomicBool>,
) -> Result<Response<Body>, DropConnection> {
    let verdict = if req.uri().path().starts_with("/_emulator/") {
        Verdict::Pass
    } else {
        inner.stats().http_requests += 1;
        inner.faults.decide(&req)
    };
    let injected = |kind: &str| inner.stats().count_fault(kind);
    let cut = match verdict {
        Verdict::Pass => None,
        Verdict::Cut(kind) => Some(kind),
        Verdict::Answer(kind, response) => {
            injected(kind);
            return Ok(response);
        }
        Verdict::Drop(kind) => {
            injected(kind);
            return Err(DropConnection);
        }
        Verdict::Reset(kind) => {
            injected(kind);
            reset.store(true, Ordering::Relaxed);
            return Err(DropConnection);
        }
    };
    let req = req.map(Body::new);
    let response = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let Some(kind) = cut else {
        return Ok(response);
    };
    let cuttable = faults::body_len(&response).is_some_and(|n| n > 1);
    let applies = match kind {
        faults::kind::CUT_DOWNLOAD => {
            response.status() == StatusCode::OK && cuttable && inner.faults.take_download_cut()
        }
        _ => cuttable,
    };
    if !applies {
        return Ok(response);
    }
    injected(kind);
    Ok(faults::cut_half(response))
}

pub(crate) fn router(inner: Arc<PortalState>) -> Router {
    Router::new()
        .route("/rest/download.json", get(download))
        .route(
            "/rest/{uid}/{secret}/{method}",
            get(rest_webhook).post(rest_webhook),
        )
        .route("/rest/{method}", get(rest_token).post(rest_token))
        .route("/oauth/token/", get(app::oauth_token))
        .route("/oauth/token", get(app::oauth_token))
        .route("/records/{file}", get(record_file))
        .route("/_emulator/stats", get(stats_route))
        .route("/_emulator/app_frame", get(app::app_frame))
        .route("/_emulator/bx24.js", get(app::sdk_stub))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") })
        .with_state(inner)
}

async fn stats_route(State(inner): State<Arc<PortalState>>) -> Response<Body> {
    let body = serde_json::to_vec(&inner.stats_snapshot()).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

//! Opening and installing the application: the iframe POST Bitrix24 sends to the application's handler
//! ([`FrameRequest`]: fresh tokens of the user), the portal page that opens it (`GET /_emulator/app_frame`),
//! and the install POST ([`AppInstall`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::Response;
use serde_json::json;

use super::state::{domain, random_token, server_endpoint, SCOPE};
use crate::bitrix24::emulator::Bitrix24Emulator;
use crate::bitrix24::params;
use crate::bitrix24::reply::json_response;
use crate::bitrix24::state::PortalState;

/// `GET /_emulator/app_frame?handler=URL&lang=ru`: the portal's page that opens the application — a header
/// like the portal's and an iframe that receives the placement POST (fresh tokens of user 1), exactly as
/// Bitrix24 opens an application. For browser tests; the iframe's parent is the portal's origin.
pub(crate) async fn app_frame(
    State(inner): State<Arc<PortalState>>,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    let p = params::from_form(query.as_deref().unwrap_or(""));
    let handler = p.text_ci("handler");
    let lang = match p.text_ci("lang").as_str() {
        "" => "ru".to_string(),
        l => l.to_string(),
    };
    if url::Url::parse(&handler).is_err() {
        return json_response(&inner, 400, &json!({"error": "handler must be a URL"}));
    }
    let req = frame_request(&inner, inner.config.webhook_user, &lang);
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let inputs: String = req
        .form
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            )
        })
        .collect();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Bitrix24 emulator</title></head>\
         <body style=\"margin:0;background:#eef2f4;font:14px Arial,sans-serif\">\
         <div style=\"height:48px;background:#2fc6f6;color:#fff;display:flex;align-items:center;padding:0 20px;font-size:18px\">\
         Bitrix24 · {domain} · b24sense</div>\
         <iframe name=\"app\" id=\"app\" style=\"width:100%;height:600px;border:0;display:block\"></iframe>\
         <form id=\"open\" method=\"POST\" target=\"app\" action=\"{action}\">{inputs}</form>\
         <script>{FRAME_HOST}document.getElementById('open').submit();</script></body></html>",
        domain = esc(&domain(&inner)),
        action = esc(&req.url(&handler)),
    );
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .body(Body::from(html))
        .unwrap_or_default()
}

/// The portal page's side of the SDK stand-in ([`SDK_STUB`]): the frame's messages are recorded in
/// `window.bx24Calls` (for browser tests) and `resizeWindow` sets the frame's height, as Bitrix24 does.
const FRAME_HOST: &str = "window.bx24Calls=[];window.addEventListener('message',function(e){\
var f=document.getElementById('app');if(e.source!==f.contentWindow||!e.data||!e.data.bx24){return;}\
window.bx24Calls.push(e.data);if(e.data.bx24==='resizeWindow'&&e.data.height>0){f.style.height=e.data.height+'px';}});";

/// A stand-in for the Bitrix24 JS SDK (`//api.bitrix24.com/api/v1/`), served at `/_emulator/bx24.js`: `init`,
/// `installFinish`, `resizeWindow`, `fitWindow` and `getScrollSize` post to the portal page that framed the
/// application ([`FRAME_HOST`] acts on them), so nothing is loaded from outside the machine.
const SDK_STUB: &str = r#"(function () {
  "use strict";
  function send(cmd, params) { if (window.parent !== window) { window.parent.postMessage({ bx24: cmd, params: params || {}, height: params && params.height }, "*"); } }
  function scrollSize() { return { scrollWidth: document.documentElement.scrollWidth, scrollHeight: document.documentElement.scrollHeight }; }
  window.BX24 = {
    init: function (cb) { setTimeout(function () { if (cb) { cb(); } }, 0); },
    installFinish: function () { send("installFinish"); },
    getScrollSize: scrollSize,
    resizeWindow: function (width, height, cb) { send("resizeWindow", { width: width, height: height }); if (cb) { cb({ width: width, height: height }); } },
    fitWindow: function (cb) { var s = scrollSize(); window.BX24.resizeWindow(s.scrollWidth, s.scrollHeight, cb); }
  };
})();
"#;

/// `GET /_emulator/bx24.js`: [`SDK_STUB`].
pub(crate) async fn sdk_stub() -> Response<Body> {
    Response::builder()
        .header("content-type", "text/javascript; charset=utf-8")
        .body(Body::from(SDK_STUB))
        .unwrap_or_default()
}

fn frame_request(inner: &PortalState, user_id: u64, lang: &str) -> FrameRequest {
    let (access, refresh) = inner.app.issue(user_id);
    let ttl = inner.app.ttl().as_secs();
    let s = |v: &str| v.to_string();
    // The fields Bitrix24 documents for the frame; the application token comes with `ONAPPINSTALL`.
    let mut form = vec![
        (s("AUTH_ID"), access),
        (s("AUTH_EXPIRES"), ttl.to_string()),
        (s("REFRESH_ID"), refresh),
        (s("member_id"), inner.app.member_id.clone()),
        (s("status"), s("L")),
        (s("PLACEMENT"), s("DEFAULT")),
        (s("PLACEMENT_OPTIONS"), s("{}")),
    ];
    if inner.app.lock().frame_extras {
        form.extend([
            (s("SERVER_ENDPOINT"), server_endpoint(inner)),
            (s("APPLICATION_TOKEN"), inner.app.application_token.clone()),
            (s("APPLICATION_SCOPE"), s(SCOPE)),
        ]);
    }
    FrameRequest {
        query: vec![
            (s("DOMAIN"), domain(inner)),
            (s("PROTOCOL"), s("0")),
            (s("LANG"), s(lang)),
            (s("APP_SID"), random_token()),
        ],
        form,
    }
}

/// What the application's handler answered to the install POST.
#[derive(Debug, Clone)]
pub struct AppInstall {
    pub status: u16,
    pub body: String,
    /// The answer called `BX24.installFinish()`: the portal now counts the application as installed.
    pub installed: bool,
    /// Then `ONAPPINSTALL` went to the handlers bound to it: their HTTP statuses (0 = unreachable).
    pub install_event: Vec<u16>,
}

/// The fields of an iframe POST: the query string and the form body.
#[derive(Debug, Clone)]
pub struct FrameRequest {
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
}

impl FrameRequest {
    /// `handler?query`
    pub fn url(&self, handler: &str) -> String {
        let q = serde_urlencoded::to_string(&self.query).unwrap_or_default();
        let sep = if handler.contains('?') { '&' } else { '?' };
        format!("{handler}{sep}{q}")
    }
}

pub(super) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

impl Bitrix24Emulator {
    /// The POST Bitrix24 sends when a user opens the application (placement `DEFAULT`) or installs it:
    /// a fresh token pair for `user_id`.
    pub fn app_frame_request(&self, user_id: u64, lang: &str) -> FrameRequest {
        frame_request(&self.inner, user_id, lang)
    }

    /// `{base}_emulator/bx24.js`: the stand-in for the Bitrix24 JS SDK the application's pages may load.
    pub fn sdk_url(&self) -> String {
        format!("{}_emulator/bx24.js", self.inner.base)
    }

    /// `{base}_emulator/app_frame?handler=…&lang=…`: the portal page that opens the application in an iframe.
    pub fn app_frame_url(&self, handler: &str, lang: &str) -> String {
        let q =
            serde_urlencoded::to_string([("handler", handler), ("lang", lang)]).unwrap_or_default();
        format!("{}_emulator/app_frame?{q}", self.inner.base)
    }

    /// Installs the application: POSTs the install form to `install_url` as the admin (user 1). The
    /// installation counts as finished when the answer calls `BX24.installFinish()` (what the real page's
    /// script would do in the browser); then, as a portal does, `ONAPPINSTALL` goes to the handlers the
    /// application bound to it, with the application token and a fresh token pair of the installing user.
    pub async fn install_app(&self, install_url: &str, lang: &str) -> std::io::Result<AppInstall> {
        let req = self.app_frame_request(self.inner.config.webhook_user, lang);
        let resp = http()
            .post(req.url(install_url))
            .form(&req.form)
            .send()
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(std::io::Error::other)?;
        let installed = status == 200 && body.contains("installFinish");
        let install_event = if installed {
            self.finish_app_install(lang).await
        } else {
            Vec::new()
        };
        Ok(AppInstall {
            status,
            body,
            installed,
            install_event,
        })
    }
}

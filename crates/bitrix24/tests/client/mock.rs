//! The scripted axum mock (a queue of replies, a record of what it received) and the clients and helpers every
//! part of the suite shares.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use b24sense_bitrix24::*;
use serde_json::{json, Value};

pub(crate) enum Reply {
    Json(u16, Value),
    Raw(u16, &'static str, Vec<u8>),
    Redirect(String),
}

#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
    pub(crate) unix: f64,
}

impl Seen {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
    pub(crate) fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Clone, Default)]
pub(crate) struct Mock {
    pub(crate) replies: Arc<Mutex<VecDeque<Reply>>>,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    pub(crate) fn push(&self, r: Reply) -> &Self {
        self.replies.lock().unwrap().push_back(r);
        self
    }
    pub(crate) fn ok(&self, result: Value) -> &Self {
        self.push(Reply::Json(
            200,
            json!({"result": result, "time": time_block(None)}),
        ))
    }
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub(crate) async fn handler(
    State(m): State<Mock>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    m.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        query: uri.query().map(String::from),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        unix: unix_now(),
    });
    let reply = m.replies.lock().unwrap().pop_front();
    match reply {
        Some(Reply::Json(status, v)) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            v.to_string(),
        )
            .into_response(),
        Some(Reply::Raw(status, ct, body)) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", ct)],
            body,
        )
            .into_response(),
        Some(Reply::Redirect(loc)) => (StatusCode::FOUND, [("location", loc)]).into_response(),
        None => (StatusCode::IM_A_TEAPOT, "unscripted request").into_response(),
    }
}

pub(crate) async fn spawn_mock() -> (Mock, SocketAddr) {
    let mock = Mock::default();
    let app = Router::new().fallback(handler).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, addr)
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub(crate) fn time_block(operating: Option<(f64, f64)>) -> Value {
    let mut t = json!({"start": 1773141841.10, "finish": 1773141841.69, "duration": 0.59, "processing": 0.41,
        "date_start": "2026-03-10T14:24:01+03:00", "date_finish": "2026-03-10T14:24:01+03:00"});
    if let Some((op, reset)) = operating {
        t["operating"] = json!(op);
        t["operating_reset_at"] = json!(reset);
    }
    t
}

pub(crate) fn fast_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        max_attempts: 4,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    }
}

pub(crate) fn webhook_client(addr: SocketAddr) -> Bitrix24Client {
    let w = WebhookUrl::parse(&format!("http://{addr}/rest/1/s3cr3tw3bh00k/")).unwrap();
    Bitrix24Client::new(Credentials::Webhook(w), fast_config()).unwrap()
}

/// Every test is bounded in time.
pub(crate) async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test took too long")
}

pub(crate) struct FakeTokens {
    pub(crate) endpoint: url::Url,
    pub(crate) refreshes: AtomicU32,
}

impl TokenSource for FakeTokens {
    fn access_token(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async move {
            Ok(AccessToken {
                token: "old-token".into(),
                client_endpoint: self.endpoint.clone(),
            })
        })
    }
    fn refresh(&self, stale: &AccessToken) -> BoxFuture<'_, Result<AccessToken, Error>> {
        use secrecy::ExposeSecret;
        assert_eq!(stale.token.expose_secret(), "old-token");
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(AccessToken {
                token: "new-token".into(),
                client_endpoint: self.endpoint.clone(),
            })
        })
    }
}

pub(crate) fn commands(seen: &Seen) -> Vec<(String, String)> {
    // The body is built in order; parse it preserving that order.
    let body = &seen.body;
    let v: Value = serde_json::from_str(body).unwrap();
    let mut cmds: Vec<(String, String)> = v["cmd"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    cmds.sort_by_key(|(k, _)| body.find(&format!("\"{k}\":")).unwrap());
    cmds
}

//! The client against a small scripted axum mock over real sockets on 127.0.0.1 (port 0).
//!
//! Each mock answers requests with a queue of scripted replies and records what it received, so the tests assert
//! on the wire (paths, headers, bodies, batch command strings) and on the client's behaviour.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use b24sense_bitrix24::*;
use b24sense_core::{CallFilter, CrmEntityType, CrmRef, ErrorClass};
use futures::StreamExt;
use serde_json::{json, Value};

enum Reply {
    Json(u16, Value),
    Raw(u16, &'static str, Vec<u8>),
    Redirect(String),
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: String,
    unix: f64,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Clone, Default)]
struct Mock {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    fn push(&self, r: Reply) -> &Self {
        self.replies.lock().unwrap().push_back(r);
        self
    }
    fn ok(&self, result: Value) -> &Self {
        self.push(Reply::Json(
            200,
            json!({"result": result, "time": time_block(None)}),
        ))
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handler(State(m): State<Mock>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
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

async fn spawn_mock() -> (Mock, SocketAddr) {
    let mock = Mock::default();
    let app = Router::new().fallback(handler).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, addr)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn time_block(operating: Option<(f64, f64)>) -> Value {
    let mut t = json!({"start": 1773141841.10, "finish": 1773141841.69, "duration": 0.59, "processing": 0.41,
        "date_start": "2026-03-10T14:24:01+03:00", "date_finish": "2026-03-10T14:24:01+03:00"});
    if let Some((op, reset)) = operating {
        t["operating"] = json!(op);
        t["operating_reset_at"] = json!(reset);
    }
    t
}

fn fast_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        max_attempts: 4,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    }
}

fn webhook_client(addr: SocketAddr) -> Bitrix24Client {
    let w = WebhookUrl::parse(&format!("http://{addr}/rest/1/s3cr3tw3bh00k/")).unwrap();
    Bitrix24Client::new(Credentials::Webhook(w), fast_config()).unwrap()
}

/// Every test is bounded in time.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test took too long")
}

#[tokio::test]
async fn success_envelope_and_request_shape() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.push(Reply::Json(
            200,
            json!({"result": {"ID": "1", "ADMIN": true, "NAME": "Anna", "LAST_NAME": ""},
            "time": time_block(Some((3.31, 1773142441.0)))}),
        ));
        mock.push(Reply::Json(
            200,
            json!({"result": [{"ID": "5"}], "next": "50", "total": 137, "time": time_block(None)}),
        ));
        let c = webhook_client(addr);
        assert_eq!(c.portal_host(), addr.to_string());
        assert_eq!(c.portal_offset(), None);
        let p = c.profile().await.unwrap();
        assert_eq!(
            p,
            Profile {
                id: 1,
                admin: true,
                name: Some("Anna".into()),
                last_name: None
            }
        );
        assert_eq!(
            c.portal_offset().unwrap().local_minus_utc(),
            3 * 3600,
            "learned from time.date_start"
        );

        let r = c
            .call("user.get", json!({"FILTER": {"ID": [5]}}))
            .await
            .unwrap();
        assert_eq!(r.next, Some(50));
        assert_eq!(r.total, Some(137));
        assert_eq!(r.result, json!([{"ID": "5"}]));
        let t = r.time.unwrap();
        assert_eq!(t.duration, Some(0.59));
        assert!(t.date_finish.is_some());

        let seen = mock.seen();
        assert_eq!(seen[0].path, "/rest/1/s3cr3tw3bh00k/profile.json");
        assert_eq!(seen[1].path, "/rest/1/s3cr3tw3bh00k/user.get.json");
        assert_eq!(seen[1].header("content-type"), "application/json");
        assert!(seen[1].header("user-agent").starts_with("b24sense/"));
        assert_eq!(seen[1].json(), json!({"FILTER": {"ID": [5]}}));
        assert_eq!(c.stats().requests, 2);

        // Odd method names never reach the wire.
        assert!(matches!(
            c.call("../x", json!({})).await,
            Err(Error::InvalidArgument(_))
        ));
    })
    .await
}

#[tokio::test]
async fn query_limit_exceeded_is_retried_and_counted() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.push(Reply::Json(
            503,
            json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
        ));
        mock.push(Reply::Json(
            503,
            json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
        ));
        mock.ok(json!(true));
        let c = webhook_client(addr);
        let r = c.call("app.info", json!({})).await.unwrap();
        assert_eq!(r.result, json!(true));
        let s = c.stats();
        assert_eq!((s.requests, s.rate_limited, s.retries), (3, 2, 2));
        assert_eq!(
            mock.seen()[2].body,
            mock.seen()[0].body,
            "same body re-sent"
        );
    })
    .await
}

#[tokio::test]
async fn retries_are_bounded_and_final_error_is_typed() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        for _ in 0..4 {
            mock.push(Reply::Json(500, json!({"error": "INTERNAL_SERVER_ERROR", "error_description": "x"})));
        }
        let c = webhook_client(addr);
        let e = c.call("profile", json!({})).await.unwrap_err();
        assert_eq!(e.api_code(), Some("INTERNAL_SERVER_ERROR"));
        assert!(e.class().is_retryable());
        assert_eq!(c.stats().requests, 4, "max_attempts");

        // Non-transient errors are not retried; empty codes are classified by description.
        mock.push(Reply::Json(400, json!({"error": "", "error_description": "Not found"})));
        let e = c.call("crm.contact.get", json!({"id": 1})).await.unwrap_err();
        let Error::Api(api) = &e else { panic!("{e:?}") };
        assert_eq!(api.kind(), ApiErrorKind::NotFound);
        assert_eq!(api.status, 400);
        assert_eq!(e.class(), ErrorClass::Permanent);
        mock.push(Reply::Json(401, json!({"error": "INVALID_CREDENTIALS", "error_description": "Invalid request credentials"})));
        let e = c.call("profile", json!({})).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert!(!e.to_string().contains("s3cr3tw3bh00k"));
        assert_eq!(c.stats().requests, 6);
    })
    .await
}

#[tokio::test]
async fn html_502_and_truncated_json_are_retried() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.push(Reply::Raw(
            502,
            "text/html",
            b"<html><body>502 Bad Gateway</body></html>".to_vec(),
        ));
        mock.push(Reply::Raw(
            200,
            "application/json",
            br#"{"result": [1, 2"#.to_vec(),
        ));
        mock.ok(json!([1, 2, 3]));
        let c = webhook_client(addr);
        assert_eq!(
            c.call("scope", json!({})).await.unwrap().result,
            json!([1, 2, 3])
        );
        assert_eq!(c.stats().retries, 2);

        // An HTML 404 is not a Bitrix24 endpoint at all: no retry, the run stops.
        mock.push(Reply::Raw(404, "text/html", b"<html>nginx</html>".to_vec()));
        let e = c.call("scope", json!({})).await.unwrap_err();
        assert!(matches!(e, Error::Http { status: 404, .. }), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert_eq!(c.stats().requests, 4);
    })
    .await
}

#[tokio::test]
async fn connection_failures_end_in_a_transport_error_without_the_secret() {
    bounded(async {
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = webhook_client(addr);
        let e = c.call("profile", json!({})).await.unwrap_err();
        assert!(matches!(e, Error::Transport { .. }), "{e:?}");
        assert!(e.class().is_retryable());
        assert!(!format!("{e} {e:?}").contains("s3cr3tw3bh00k"));
        assert_eq!(c.stats().requests, 4);
    })
    .await
}

#[tokio::test]
async fn operation_time_limit_waits_until_reset() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        let reset = unix_now() + 1.0;
        mock.push(Reply::Json(429, json!({"error": "OPERATION_TIME_LIMIT",
            "error_description": "Method is blocked due to operation time limit.", "time": time_block(Some((481.0, reset)))})));
        mock.ok(json!({"ok": 1}));
        let c = webhook_client(addr);
        c.call("voximplant.statistic.get", json!({})).await.unwrap();
        let seen = mock.seen();
        assert!(seen[1].unix >= reset, "retried after the reset, not at once: {} < {reset}", seen[1].unix);
        assert!(seen[1].unix < reset + 3.0);
        assert_eq!(c.stats().operating_limited, 1);
    })
    .await
}

#[tokio::test]
async fn operating_time_near_the_limit_holds_only_that_method() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        let reset = unix_now() + 1.0;
        // 400 s > 0.75 × 480 s.
        mock.push(Reply::Json(
            200,
            json!({"result": [], "time": time_block(Some((400.0, reset)))}),
        ));
        mock.ok(json!("other"));
        mock.ok(json!("same"));
        let c = webhook_client(addr);
        c.call("voximplant.statistic.get", json!({})).await.unwrap();
        let t = Instant::now();
        c.call("user.get", json!({})).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "other methods keep working"
        );
        c.call("voximplant.statistic.get", json!({})).await.unwrap();
        let seen = mock.seen();
        assert!(seen[2].unix >= reset, "held until operating_reset_at");
        assert!(seen[1].unix < reset, "the other method was not held");
        assert_eq!(c.stats().operating_limited, 1);
    })
    .await
}

struct FakeTokens {
    endpoint: url::Url,
    refreshes: AtomicU32,
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

#[tokio::test]
async fn expired_token_refreshes_once_and_retries() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        let tokens = Arc::new(FakeTokens {
            endpoint: format!("http://{addr}/rest/").parse().unwrap(),
            refreshes: AtomicU32::new(0),
        });
        let c = Bitrix24Client::new(Credentials::OAuth(tokens.clone()), fast_config()).unwrap();
        mock.push(Reply::Json(401, json!({"error": "expired_token", "error_description": "The access token provided has expired"})));
        mock.ok(json!({"ID": "3", "ADMIN": "N"}));
        let p = c.profile().await.unwrap();
        assert_eq!((p.id, p.admin), (3, false));
        assert_eq!(tokens.refreshes.load(Ordering::SeqCst), 1);
        let seen = mock.seen();
        assert_eq!(seen[0].path, "/rest/profile.json");
        assert_eq!(seen[0].header("authorization"), "Bearer old-token");
        assert_eq!(seen[1].header("authorization"), "Bearer new-token");
        assert_eq!(c.portal_host(), addr.to_string());

        // A token that stays invalid after the refresh is fatal, and refresh happens only once per call.
        mock.push(Reply::Json(401, json!({"error": "invalid_token", "error_description": ""})));
        mock.push(Reply::Json(401, json!({"error": "invalid_token", "error_description": ""})));
        let e = c.call("profile", json!({})).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert_eq!(tokens.refreshes.load(Ordering::SeqCst), 2);
        assert_eq!(mock.seen().len(), 4);
    })
    .await
}

#[tokio::test]
async fn renamed_portal_redirect_reposts_to_the_new_host() {
    bounded(async {
        let (old, old_addr) = spawn_mock().await;
        let (new, new_addr) = spawn_mock().await;
        old.push(Reply::Redirect(format!(
            "http://localhost:{}/rest/1/s3cr3tw3bh00k/batch.json",
            new_addr.port()
        )));
        new.ok(json!({"result": {"a": 1}, "result_error": []}));
        new.ok(json!({"ID": "1"}));
        let c = webhook_client(old_addr);
        let cmds = vec![("a".to_string(), "profile".to_string())];
        let b = c.batch(&cmds, false).await.unwrap();
        assert_eq!(b.results["a"], json!(1));
        assert_eq!(c.portal_host(), format!("localhost:{}", new_addr.port()));
        let (o, n) = (old.seen(), new.seen());
        assert_eq!(o.len(), 1);
        assert_eq!(n[0].path, "/rest/1/s3cr3tw3bh00k/batch.json");
        assert_eq!(n[0].body, o[0].body, "the same POST body is re-sent");
        // Later calls go straight to the new host.
        c.profile().await.unwrap();
        assert_eq!(old.seen().len(), 1);
        assert_eq!(new.seen()[1].path, "/rest/1/s3cr3tw3bh00k/profile.json");
        assert_eq!(c.stats().redirects, 1);
    })
    .await
}

#[tokio::test]
async fn batch_parses_empty_php_maps_and_result_error() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.ok(json!({
            "result": {"ok": [{"ID": "1"}], "empty": []},
            "result_error": {"bad": {"error": "ACCESS_DENIED", "error_description": "Access denied!"}},
            "result_total": [], "result_next": {"ok": "50"}, "result_time": []}));
        mock.ok(json!({"result": [], "result_error": [], "result_total": [], "result_next": [], "result_time": []}));
        let c = webhook_client(addr);
        let cmds: Vec<(String, String)> = ["ok", "empty", "bad"]
            .iter()
            .map(|n| (n.to_string(), "user.get?FILTER[ID]=1".to_string()))
            .collect();
        let b = c.batch(&cmds, true).await.unwrap();
        assert_eq!(b.results.len(), 2);
        assert_eq!(b.results["empty"], json!([]));
        assert_eq!(b.errors["bad"].kind(), ApiErrorKind::AccessDenied);
        assert_eq!(b.next["ok"], 50);
        assert!(b.total.is_empty());
        let body = mock.seen()[0].body.clone();
        assert_eq!(
            body,
            r#"{"halt":1,"cmd":{"ok":"user.get?FILTER[ID]=1","empty":"user.get?FILTER[ID]=1","bad":"user.get?FILTER[ID]=1"}}"#,
            "commands keep the caller's order"
        );

        let b = c.batch(&cmds[..1], false).await.unwrap();
        assert!(b.results.is_empty() && b.errors.is_empty());

        let too_many: Vec<(String, String)> = (0..51).map(|i| (format!("c{i}"), "profile".to_string())).collect();
        assert!(matches!(c.batch(&too_many, false).await, Err(Error::InvalidArgument(_))));
        assert_eq!(mock.seen().len(), 2, "an oversized batch is refused locally");
    })
    .await
}

fn call_row(id: u64) -> Value {
    json!({"ID": id.to_string(), "PORTAL_USER_ID": "12", "PHONE_NUMBER": "+79001234567", "CALL_ID": format!("c{id}"),
        "CALL_DURATION": "95", "CALL_START_DATE": "2026-03-10T11:19:38+03:00", "CALL_RECORD_URL": "",
        "RECORD_FILE_ID": 9000 + id, "CALL_TYPE": "2", "CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": "797"})
}

fn commands(seen: &Seen) -> Vec<(String, String)> {
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

#[tokio::test]
async fn list_calls_chains_pages_and_stops_at_the_first_short_one() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        let page = |from: u64, n: u64| Value::Array((from..from + n).map(call_row).collect());
        let mut p2 = page(201, 3);
        p2.as_array_mut().unwrap().push(json!({"ID": "204", "CALL_START_DATE": "yesterday"}));
        let mut results = serde_json::Map::new();
        results.insert("p00".into(), page(101, 50));
        results.insert("p01".into(), page(151, 50));
        results.insert("p02".into(), p2);
        // What the portal does with the unresolved reference of the next page: odd rows, to be ignored.
        results.insert("p03".into(), page(1, 50));
        mock.ok(json!({"result": results, "result_error": [], "result_total": [], "result_next": [], "result_time": []}));
        let c = webhook_client(addr);
        let filter = CallFilter { users: vec![12], min_duration: 30, ..Default::default() };
        let chunk = c.list_calls(&filter, 100).await.unwrap();
        assert_eq!(chunk.calls.len(), 103);
        assert_eq!(chunk.calls[0].id, 101);
        assert_eq!(chunk.calls[102].id, 203);
        assert_eq!(chunk.last_id, Some(204), "the unreadable row still advances the cursor");
        assert!(chunk.exhausted);
        assert_eq!(chunk.bad_rows.len(), 1);
        assert!(chunk.bad_rows[0].contains("204"), "{:?}", chunk.bad_rows);
        assert_eq!(chunk.calls[0].call_start_date.offset().local_minus_utc(), 3 * 3600);

        let seen = mock.seen();
        assert_eq!(seen.len(), 1, "one HTTP request");
        assert_eq!(seen[0].path, "/rest/1/s3cr3tw3bh00k/batch.json");
        let cmds = commands(&seen[0]);
        assert_eq!(cmds.len(), 50);
        assert_eq!(cmds[0].0, "p00");
        assert_eq!(
            cmds[0].1,
            "voximplant.statistic.get?FILTER[%3E%3DCALL_DURATION]=30&FILTER[%3EID]=100&FILTER[PORTAL_USER_ID][0]=12\
             &ORDER=ASC&SORT=ID&start=-1"
        );
        assert_eq!(
            cmds[1].1,
            "voximplant.statistic.get?FILTER[%3E%3DCALL_DURATION]=30&FILTER[PORTAL_USER_ID][0]=12&ORDER=ASC&SORT=ID\
             &start=-1&FILTER[%3EID]=$result[p00][49][ID]"
        );
        assert_eq!(cmds[49].0, "p49");
        assert!(cmds[49].1.ends_with("FILTER[%3EID]=$result[p48][49][ID]"));

        // Every page full → not exhausted; a failing later page keeps the pages before it.
        let mut results = serde_json::Map::new();
        results.insert("p00".into(), page(1, 50));
        results.insert("p01".into(), page(51, 50));
        mock.ok(json!({"result": results,
            "result_error": {"p02": {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}}}));
        let chunk = c.list_calls_pages(&CallFilter::default(), 0, 3).await.unwrap();
        assert_eq!((chunk.calls.len(), chunk.last_id, chunk.exhausted), (100, Some(100), false));

        // An error on the first page is the call's error.
        mock.ok(json!({"result": [], "result_error": {"p00": {"error": "ACCESS_DENIED", "error_description": "Access denied!"}}}));
        let e = c.list_calls(&CallFilter::default(), 0).await.unwrap_err();
        assert_eq!(e.api_code(), Some("ACCESS_DENIED"));
    })
    .await
}

#[tokio::test]
async fn lookup_packs_commands_fifty_ids_each() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.ok(json!({
            "result": {
                "u0": [{"ID": "1", "NAME": "Anna", "LAST_NAME": "Ivanova", "ACTIVE": false}, {"ID": "999", "NAME": "Stranger"}],
                "u1": [{"ID": "51", "NAME": "Boris", "LAST_NAME": ""}],
                "u2": [],
                "contact0": [{"ID": "797", "NAME": "Client", "LAST_NAME": "One"}],
                "company0": [{"ID": "5", "TITLE": "ACME"}]},
            "result_error": {"lead0": {"error": "ACCESS_DENIED", "error_description": "Access denied"}}}));
        let c = webhook_client(addr);
        let users: Vec<u64> = (1..=120).collect();
        let crm = vec![
            CrmRef { kind: CrmEntityType::Contact, id: 797 },
            CrmRef { kind: CrmEntityType::Company, id: 5 },
            CrmRef { kind: CrmEntityType::Lead, id: 7 },
            CrmRef { kind: CrmEntityType::Other("QUOTE".into()), id: 1 },
        ];
        let l = c.lookup(&users, &crm).await.unwrap();
        assert_eq!(l.users.len(), 2, "unreturned and unrequested ids are absent");
        assert_eq!(l.users[&1].name.as_deref(), Some("Anna"));
        assert_eq!(l.users[&51].last_name, None);
        assert_eq!(l.crm[&crm[0]].last_name.as_deref(), Some("One"));
        assert_eq!(l.crm[&crm[1]].title.as_deref(), Some("ACME"));
        assert!(!l.crm.contains_key(&crm[2]));

        let seen = mock.seen();
        assert_eq!(seen.len(), 1, "one batch request");
        let cmds = commands(&seen[0]);
        let users_cmds: Vec<_> = cmds.iter().filter(|(_, c)| c.starts_with("user.get?")).collect();
        assert_eq!(users_cmds.len(), 3);
        assert!(users_cmds[0].1.contains("FILTER[ID][49]=50") && !users_cmds[0].1.contains("FILTER[ID][50]"));
        assert!(users_cmds[0].1.contains("ADMIN_MODE=1"));
        assert!(!users_cmds[0].1.contains("ACTIVE"));
        assert!(users_cmds[2].1.contains("FILTER[ID][19]=120"));
        let contact = cmds.iter().find(|(n, _)| n == "contact0").unwrap();
        assert_eq!(contact.1, "crm.contact.list?filter[ID][0]=797&select[0]=ID&select[1]=NAME&select[2]=LAST_NAME&start=-1");
        assert_eq!(cmds.len(), 6, "3 user.get + contact + company + lead; unknown kinds skipped");

        // More than 50 commands → several batch requests.
        for _ in 0..2 {
            mock.ok(json!({"result": [], "result_error": []}));
        }
        let many: Vec<u64> = (1..=2600).collect();
        let l = c.lookup(&many, &[]).await.unwrap();
        assert!(l.users.is_empty());
        let seen = mock.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(commands(&seen[1]).len(), 50);
        assert_eq!(commands(&seen[2]).len(), 2);
    })
    .await
}

#[tokio::test]
async fn disk_download_urls_reports_per_file_failures() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.ok(json!({
            "result": {
                "d1": {"ID": "1", "DELETED_TYPE": "0", "DOWNLOAD_URL": "https://acme.bitrix24.ru/rest/download.json?auth=tok&token=disk%7C1"},
                "d3": {"ID": "3", "DELETED_TYPE": "3", "DOWNLOAD_URL": "https://acme.bitrix24.ru/rest/download.json?auth=tok"}},
            "result_error": {"d2": {"error": "ERROR_NOT_FOUND", "error_description": "Could not find entity with id `2`"}}}));
        let c = webhook_client(addr);
        let m = c.disk_download_urls(&[1, 2, 3, 4, 1]).await.unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[&1].as_ref().unwrap().host_str(), Some("acme.bitrix24.ru"));
        assert_eq!(m[&2].as_ref().unwrap_err().kind(), ApiErrorKind::NotFound);
        let e3 = m[&3].as_ref().unwrap_err();
        assert_eq!(e3.kind(), ApiErrorKind::NotFound);
        assert!(e3.description.contains("DELETED_TYPE 3") && !e3.description.contains("tok"));
        assert!(m[&4].is_err(), "absent from the answer");
        let cmds = commands(&mock.seen()[0]);
        assert_eq!(cmds[0], ("d1".to_string(), "disk.file.get?id=1".to_string()));
        assert_eq!(cmds.len(), 4);
    })
    .await
}

async fn collect(d: Download) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = d.stream;
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn download_streams_and_counts_portal_downloads() {
    bounded(async {
        let (portal, portal_addr) = spawn_mock().await;
        let (pbx, pbx_addr) = spawn_mock().await;
        let audio: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        portal.push(Reply::Raw(503, "text/html", b"<html>busy</html>".to_vec()));
        portal.push(Reply::Raw(200, "audio/mpeg", audio.clone()));
        pbx.push(Reply::Raw(200, "audio/x-wav", b"RIFF....WAVE".to_vec()));
        pbx.push(Reply::Raw(404, "text/html", b"<html>nginx 404</html>".to_vec()));
        portal.push(Reply::Json(401, json!({"error": "expired_token", "error_description": "The access token provided has expired"})));
        let c = webhook_client(portal_addr);

        let url: url::Url = format!("http://{portal_addr}/rest/download.json?auth=SECRETTOKEN&token=disk%7C1").parse().unwrap();
        let d = c.download(&url).await.unwrap();
        assert_eq!(d.content_length, Some(audio.len() as u64));
        assert_eq!(collect(d).await, audio);
        let seen = portal.seen();
        assert_eq!(seen.len(), 2, "503 before the body → retried");
        assert_eq!(seen[1].query.as_deref(), Some("auth=SECRETTOKEN&token=disk%7C1"));
        assert_eq!(seen[1].header("accept"), "*/*");
        assert_eq!(seen[1].header("referer"), format!("http://{portal_addr}/"));
        assert!(seen[1].header("user-agent").starts_with("b24sense/"));

        // An external recording URL (here: another host name) does not take a limiter token.
        let ext: url::Url = format!("http://localhost:{}/rec/1.wav", pbx_addr.port()).parse().unwrap();
        assert_eq!(collect(c.download(&ext).await.unwrap()).await, b"RIFF....WAVE");
        let s = c.stats();
        assert_eq!((s.downloads, s.download_bytes), (2, audio.len() as u64 + 12));
        assert_eq!((s.portal_downloads, s.uncounted_portal_downloads), (0, 2), "uncounted until refused");

        let e = c.download(&ext).await.unwrap_err();
        assert!(matches!(e, Error::Download { status: 404 }), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Permanent);
        let e = c.download(&url).await.unwrap_err();
        assert_eq!(e.api_code(), Some("expired_token"));
        assert!(matches!(e, Error::DownloadLink(_)), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Permanent, "a dead link is re-requested, not fatal for the run");
        assert!(!format!("{e} {e:?}").contains("SECRETTOKEN"));
    })
    .await
}

#[tokio::test]
async fn clones_share_the_limiter_and_stats() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        for _ in 0..4 {
            mock.ok(json!(1));
        }
        let w = WebhookUrl::parse(&format!("http://{addr}/rest/1/s3cr3tw3bh00k/")).unwrap();
        // Burst ceil(0.9 × 2) = 2, then 1 request per 100 ms... per_second 10.
        let cfg = ClientConfig {
            rate: RatePlan {
                capacity: 2,
                per_second: 10,
            },
            ..fast_config()
        };
        let c = Bitrix24Client::new(Credentials::Webhook(w), cfg).unwrap();
        let c2 = c.clone();
        let t = Instant::now();
        let (a, b) = tokio::join!(
            async { (c.call("a", json!({})).await, c.call("a", json!({})).await) },
            async { (c2.call("b", json!({})).await, c2.call("b", json!({})).await) }
        );
        assert!(a.0.is_ok() && a.1.is_ok() && b.0.is_ok() && b.1.is_ok());
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "2 at once, then 2 × 100 ms: {:?}",
            t.elapsed()
        );
        assert_eq!(c2.stats().requests, 4);
    })
    .await
}

#[tokio::test]
async fn renamed_portal_redirect_in_oauth_mode_overrides_client_endpoint() {
    bounded(async {
        let (old, old_addr) = spawn_mock().await;
        let (new, new_addr) = spawn_mock().await;
        let tokens = Arc::new(FakeTokens {
            endpoint: format!("http://{old_addr}/rest/").parse().unwrap(),
            refreshes: AtomicU32::new(0),
        });
        let c = Bitrix24Client::new(Credentials::OAuth(tokens), fast_config()).unwrap();
        old.push(Reply::Redirect(format!(
            "http://localhost:{}/rest/profile.json",
            new_addr.port()
        )));
        new.ok(json!({"ID": "1", "ADMIN": "Y"}));
        new.ok(json!({"ID": "1", "ADMIN": "Y"}));
        assert!(c.profile().await.unwrap().admin);
        // The token source still says the old host; the client keeps using the new one.
        assert!(c.profile().await.unwrap().admin);
        assert_eq!(c.portal_host(), format!("localhost:{}", new_addr.port()));
        assert_eq!(old.seen().len(), 1);
        let n = new.seen();
        assert_eq!(n.len(), 2);
        assert_eq!(n[1].path, "/rest/profile.json");
        assert_eq!(n[1].header("authorization"), "Bearer old-token");
    })
    .await
}

//! The application server against hostile and careless traffic, over real sockets on 127.0.0.1 with the
//! Bitrix24 and SpeechSense emulators: sessions that outlived their installation or went idle, replayed and stale
//! events, idle and half-sent connections, response headers, and request values that try to forge log lines.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use b24sense_web::ConnectionLimits;
use common::{post_event, App, Session};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn state_status(s: &Session) -> u16 {
    s.send("GET", "state", None).await.status
}

/// Swaps the session for a renewed one (what the open page does every few minutes).
async fn renew(s: &mut Session) {
    let (st, v) = s.call("POST", "session/renew", Some(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    *s = Session {
        token: v["session"].as_str().unwrap().to_string(),
        csrf: v["csrf"].as_str().unwrap().to_string(),
        ..s.clone()
    };
}

#[tokio::test]
async fn sessions_end_with_their_installation_and_when_idle() {
    let fx = App::start(3, |c| c.session_ttl = Duration::from_secs(3)).await;
    fx.install().await;
    let before = fx.session().await;
    assert_eq!(state_status(&before).await, 200);

    // A reinstall starts a new installation: the sessions of the old one are refused, new ones work.
    fx.install().await;
    assert_eq!(state_status(&before).await, 401);
    let mut s = fx.session().await;
    assert_eq!(state_status(&s).await, 200);

    // Uninstall and install again: the session from before is refused too (403 while uninstalled).
    assert_eq!(fx.emu.uninstall_app(false).await, vec![200]);
    assert_eq!(state_status(&s).await, 403);
    fx.install().await;
    assert_eq!(state_status(&s).await, 401);

    // An open page renews its session and keeps working past the idle limit; an unrenewed one expires.
    let mut open = fx.session().await;
    s = open.clone();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        renew(&mut open).await;
    }
    assert_eq!(state_status(&open).await, 200);
    assert_eq!(state_status(&s).await, 401, "idle for more than its ttl");
    // A renewal needs the session's CSRF token.
    let forged = Session {
        csrf: "x".into(),
        ..open.clone()
    };
    let (st, _) = forged.call("POST", "session/renew", Some(json!({}))).await;
    assert_eq!(st, 403);
}

async fn runs_started(fx: &App) -> u64 {
    fx.server.metrics().runs_started.get()
}

/// A call-end event as the portal sends it, with the installation's application token and `ts`.
async fn call_end(fx: &App, member_id: &str, ts: i64) -> u16 {
    let token = fx
        .store
        .portal(&fx.key, &fx.emu.app_member_id())
        .await
        .unwrap()
        .and_then(|p| p.application_token)
        .map(|t| t.expose_secret().to_string())
        .unwrap_or_default();
    let form = [
        ("event", "ONVOXIMPLANTCALLEND".to_string()),
        ("ts", ts.to_string()),
        ("auth[member_id]", member_id.to_string()),
        ("auth[application_token]", token),
    ];
    post_event(&fx.base, &form).await
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !done().await {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn replayed_and_stale_events_cost_at_most_one_queued_pass() {
    let fx = App::start(3, |c| c.event_pass_spacing = Duration::from_secs(4)).await;
    let s = fx.install_with_sync().await;
    let member = fx.emu.app_member_id();
    let now = || chrono::Utc::now().timestamp();

    // The first event starts a pass.
    assert_eq!(call_end(&fx, &member, now()).await, 200);
    wait_for("the first pass ends", async || {
        let (_, v) = s.call("GET", "progress", None).await;
        v["progress"]["finished"] == true
    })
    .await;
    assert_eq!(runs_started(&fx).await, 1);

    // Twenty replays right after it: one more pass, once the spacing is over; the rest add nothing.
    for _ in 0..20 {
        assert_eq!(call_end(&fx, &member, now()).await, 200);
    }
    assert_eq!(
        runs_started(&fx).await,
        1,
        "the next pass waits for the spacing"
    );
    wait_for("the queued pass starts", async || {
        runs_started(&fx).await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        runs_started(&fx).await,
        2,
        "one pass was queued, not twenty"
    );

    // An event older than a few minutes is acknowledged and does nothing.
    let accepted = fx.server.metrics().events_accepted.get();
    assert_eq!(call_end(&fx, &member, now() - 3600).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs_started(&fx).await, 2);
    assert_eq!(fx.server.metrics().events_accepted.get(), accepted);

    // An unknown portal: 403, and nothing is stored for it.
    assert_eq!(call_end(&fx, "nobody", now()).await, 403);
    assert!(fx.store.portal(&fx.key, "nobody").await.unwrap().is_none());
    assert_eq!(runs_started(&fx).await, 2);
}

/// Whether the server closed `conn` (EOF or reset) by `deadline`; bytes it answered are read past.
async fn closed_by_server(conn: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_and_the_server_keeps_answering() {
    let fx = App::start(0, |c| {
        c.connections = ConnectionLimits {
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(3),
            max_connections: 10_000,
        }
    })
    .await;
    let addr = fx.base.trim_start_matches("http://").trim_end_matches('/');
    let mut conns = Vec::new();
    for i in 0..1_100 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        match i % 11 {
            // Half a request header.
            0..=4 => c
                .write_all(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
                .await
                .unwrap(),
            // A whole header, a tenth of the body.
            5 => c
                .write_all(
                    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                      Content-Length: 100\r\n\r\nevent=ONVO",
                )
                .await
                .unwrap(),
            // Nothing at all.
            _ => {}
        }
        conns.push(c);
    }
    let t0 = Instant::now();
    let r = fx.get("healthz").await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "healthz waited {:?}",
        t0.elapsed()
    );

    // A kept-alive connection that answered a request and then sits idle is closed as well.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    conns.push(kept);

    // One deadline for all: well past the timeouts, and the loop ends by then whatever the server does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut open = 0;
    for c in &mut conns {
        if !closed_by_server(c, deadline).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "connections the server left open");
    let r = fx.get("healthz").await;
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn answers_are_not_sniffed_and_private_ones_not_stored() {
    let fx = App::start(3, |_| {}).await;
    fx.install().await;
    let page = fx.open_page("ru").await;
    let s = page.session();
    let state = s.send("GET", "state", None).await.headers;
    let report = s.send("GET", "report", None).await.headers;
    let mut answers = vec![("page", page.headers), ("api", state), ("report", report)];
    for path in ["healthz", "metrics", "static/app.js"] {
        answers.push((path, fx.get(path).await.headers().clone()));
    }
    for (what, h) in &answers {
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        // The static files may be cached; nothing else may.
        if *what != "static/app.js" {
            assert_eq!(h["cache-control"], "no-store", "{what}");
        }
    }
}

/// Log output written so far.
type LogBuffer = Arc<Mutex<Vec<u8>>>;

/// Everything the process logs, as text and as JSON lines (one subscriber for the whole test binary).
fn captured_logs() -> &'static (LogBuffer, LogBuffer) {
    static LOGS: OnceLock<(LogBuffer, LogBuffer)> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        let (text, json) = (Arc::default(), Arc::default());
        let to = |buf: &LogBuffer| {
            let buf = buf.clone();
            move || Sink(buf.clone())
        };
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with(tracing_subscriber::fmt::layer().with_writer(to(&text)))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(to(&json)),
            );
        tracing::subscriber::set_global_default(subscriber).unwrap();
        (text, json)
    })
}

struct Sink(LogBuffer);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_newline_in_a_request_field_cannot_forge_a_log_line() {
    let (text, json) = captured_logs();
    let fx = App::start(0, |_| {}).await;
    let forged = "evil\n2030-01-01T00:00:00Z  INFO b24sense_web: application installed";
    let ts = chrono::Utc::now().timestamp();
    assert_eq!(call_end(&fx, forged, ts).await, 403);

    let text = String::from_utf8(text.lock().unwrap().clone()).unwrap();
    assert!(text.contains(r"evil\n2030-01-01"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("2030-01-01")),
        "a forged line: {text}"
    );
    let json = String::from_utf8(json.lock().unwrap().clone()).unwrap();
    assert!(json.contains("evil"), "{json}");
    for line in json.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

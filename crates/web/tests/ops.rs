//! Operating the application server, against the Bitrix24 and SpeechSense emulators over real sockets on
//! 127.0.0.1: Prometheus metrics with the upload latency histogram, the keep-alive refresh of idle
//! installations, and progress journaled in the store across restarts (and resumed exports). The per-call
//! CSV report is in `report.rs`.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use b24sense_core::LedgerState;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_store::{PortalTokens, SecretKey, Store};
use b24sense_web::{AppServer, WebConfig};
use common::{good_settings, http, listen, parse_metrics, portal, sample, web_config, Session};
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::{Connection, Executor};
use tokio_util::sync::CancellationToken;

/// One emulated portal, one SpeechSense, one SQLite store on disk; servers are started on it as needed (a
/// restart is a new server on the same file).
struct Fx {
    emu: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    key: SecretKey,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

/// A running server: its base URL, the [`AppServer`] handle, and how to stop it.
struct Srv {
    base: String,
    app: AppServer,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), b24sense_web::Error>>,
}

impl Srv {
    /// Shuts the server down like SIGTERM does and waits until `serve` has returned (its exports stopped).
    async fn shut_down(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(90), self.task)
            .await
            .expect("serve returns after a shutdown")
            .unwrap()
            .unwrap();
    }
}

impl Fx {
    async fn new(portal: PortalConfig, speech: SpeechSenseConfig) -> Fx {
        let emu = Bitrix24Emulator::start(portal).await.unwrap();
        let speech = SpeechSenseEmulator::start(speech).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        Fx {
            emu,
            speech,
            key: SecretKey::generate(),
            db: dir.path().join("b24sense.db"),
            _dir: dir,
        }
    }

    async fn small(calls: usize) -> Fx {
        Fx::new(portal(calls), SpeechSenseConfig::default()).await
    }

    /// A new connection pool on the store file (what a restarted process opens).
    async fn store(&self) -> Store {
        Store::open(&format!("sqlite:{}", self.db.display()))
            .await
            .unwrap()
    }

    fn config(&self, base: &str) -> WebConfig {
        let mut config = web_config(base, &self.emu, &self.speech, &[&self.emu]);
        config.concurrency = b24sense_engine::Concurrency::Pinned(2);
        config
    }

    /// A listener on a free port, its base URL and a server configured for it (not serving yet).
    async fn app(
        &self,
        tweak: impl FnOnce(&mut WebConfig),
    ) -> (tokio::net::TcpListener, String, AppServer) {
        let (listener, base) = listen().await;
        let mut config = self.config(&base);
        tweak(&mut config);
        let app = AppServer::new(config, self.store().await, self.key.clone()).unwrap();
        (listener, base, app)
    }

    /// A server as `b24sense serve` runs it (with its periodic tasks).
    async fn serve(&self, tweak: impl FnOnce(&mut WebConfig)) -> Srv {
        let (listener, base, app) = self.app(tweak).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.clone().serve(listener, stop.clone()));
        Srv {
            base,
            app,
            stop,
            task,
        }
    }

    /// A server answering HTTP without the periodic tasks, so a test decides when a pass runs.
    async fn router_only(&self, tweak: impl FnOnce(&mut WebConfig)) -> Srv {
        let (listener, base, app) = self.app(tweak).await;
        let stop = CancellationToken::new();
        let router = app.router();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .map_err(b24sense_web::Error::Io)
        });
        Srv {
            base,
            app,
            stop,
            task,
        }
    }

    /// Installs the application through `srv`, opens the settings page and saves working settings.
    async fn install(&self, srv: &Srv) -> Session {
        common::install(&self.emu, &srv.base).await;
        let s = self.open_page(srv).await;
        let settings = good_settings(&self.speech);
        let (st, v) = s.call("POST", "settings", Some(settings)).await;
        assert_eq!(st, 200, "{v}");
        s
    }

    /// Opens the settings page on `srv` as Bitrix24's iframe POST does.
    async fn open_page(&self, srv: &Srv) -> Session {
        common::open_page(&srv.base, &self.emu, "ru")
            .await
            .session()
    }

    /// The portal's stored token pair, read through `store`.
    async fn tokens(&self, store: &Store) -> PortalTokens {
        store
            .portal_tokens(&self.key, &self.emu.app_member_id())
            .await
            .unwrap()
            .unwrap()
    }

    /// Statistic IDs of the portal's calls that have a recording (what must end up in SpeechSense).
    fn recorded_calls(&self) -> BTreeSet<u64> {
        self.emu
            .call_rows()
            .iter()
            .map(|r| r["ID"].as_str().unwrap().parse::<u64>().unwrap())
            .filter(|id| self.emu.recording(*id).is_some())
            .collect()
    }

    /// Asserts SpeechSense holds exactly one talk per recorded call and the ledger agrees.
    async fn assert_one_talk_per_recorded_call(&self) {
        let talks = self.speech.talks();
        let ids: Vec<u64> = talks
            .iter()
            .map(|t| t.fields["id"].parse::<u64>().unwrap())
            .collect();
        let unique: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            ids.len(),
            unique.len(),
            "a call was uploaded twice: {ids:?}"
        );
        assert_eq!(unique, self.recorded_calls());
        let store = self.store().await;
        let uploaded: BTreeSet<u64> = store
            .entries(&self.emu.app_member_id(), &[LedgerState::Uploaded], 100_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.call_id)
            .collect();
        assert_eq!(uploaded, unique);
        let open = store
            .entries(
                &self.emu.app_member_id(),
                &[
                    LedgerState::Pending,
                    LedgerState::Uploading,
                    LedgerState::Failed,
                ],
                100,
            )
            .await
            .unwrap();
        assert!(open.is_empty(), "{open:?}");
    }
}

/// `(which, after, before)` for the access and the refresh token of two stored pairs.
fn token_pairs<'a>(
    after: &'a PortalTokens,
    before: &'a PortalTokens,
) -> [(&'static str, &'a str, &'a str); 2] {
    [
        (
            "access",
            after.access_token.expose_secret(),
            before.access_token.expose_secret(),
        ),
        (
            "refresh",
            after.refresh_token.expose_secret(),
            before.refresh_token.expose_secret(),
        ),
    ]
}

#[tokio::test]
async fn metrics_show_upload_latency_rest_requests_and_queue_depth() {
    let fx = Fx::small(30).await;
    let srv = fx.serve(|_| {}).await;
    let s = fx.install(&srv).await;
    let p = s.export().await;
    assert!(p["stopped"].is_null(), "{p}");
    let uploaded = p["uploaded"].as_u64().unwrap();
    assert!(uploaded > 0, "{p}");

    let r = http()
        .get(format!("{}metrics", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let m = parse_metrics(&text);
    assert!(
        text.contains("# TYPE b24sense_upload_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        sample(&m, "b24sense_upload_duration_seconds_count"),
        uploaded as f64
    );
    assert!(
        sample(&m, "b24sense_upload_duration_seconds_sum") > 0.0,
        "{text}"
    );
    assert_eq!(
        sample(&m, "b24sense_upload_duration_seconds_bucket{le=\"+Inf\"}"),
        uploaded as f64
    );
    // The buckets cover 50 ms to 10 min.
    sample(&m, "b24sense_upload_duration_seconds_bucket{le=\"0.05\"}");
    sample(&m, "b24sense_upload_duration_seconds_bucket{le=\"600\"}");
    assert_eq!(
        sample(&m, "b24sense_calls_total{outcome=\"uploaded\"}"),
        uploaded as f64
    );
    assert_eq!(
        sample(&m, "b24sense_calls_total{outcome=\"skipped\"}"),
        p["skipped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum::<f64>()
    );
    assert!(sample(&m, "b24sense_rest_requests_total") > 0.0, "{text}");
    assert_eq!(sample(&m, "b24sense_rest_rejections_total"), 0.0);
    assert_eq!(
        sample(&m, "b24sense_upload_bytes_total"),
        fx.speech.stats().bytes_received as f64
    );
    assert_eq!(sample(&m, "b24sense_queue_depth"), 0.0);
    assert_eq!(sample(&m, "b24sense_export_runs_total"), 1.0);
    assert_eq!(sample(&m, "b24sense_installs_total"), 1.0);
    srv.shut_down().await;
}

#[tokio::test]
async fn keepalive_refreshes_idle_installations_once_per_pass() {
    let fx = Fx::small(20).await;
    let srv = fx.serve(|_| {}).await;
    let s = fx.install(&srv).await;
    let store = fx.store().await;
    let before = fx.tokens(&store).await;
    // The install exchanged the frame's and the install event's refresh tokens.
    let (installed, _) = fx.emu.oauth_refreshes();

    // Freshly installed (the default age is 14 days): nothing to do.
    let r = srv.app.keepalive_pass().await;
    assert_eq!((r.due, r.refreshed), (0, 0), "{r:?}");
    assert_eq!(fx.emu.oauth_refreshes(), (installed, 0));

    // A replica whose age limit this installation has passed: one refresh per pass, rotated in the store.
    let old = fx
        .router_only(|c| c.keepalive_age = Duration::from_millis(500))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = old.app.keepalive_pass().await;
    assert_eq!((r.due, r.refreshed, r.refused, r.failed), (1, 1, 0, 0));
    assert_eq!(fx.emu.oauth_refreshes(), (installed + 1, 0));
    let after = fx.tokens(&store).await;
    assert_eq!(after.version, before.version + 1);
    for (what, after, before) in token_pairs(&after, &before) {
        assert_ne!(after, before, "the {what} token is new");
    }
    // Just rotated: the next pass leaves it alone…
    let r = old.app.keepalive_pass().await;
    assert_eq!((r.due, r.refreshed), (0, 0), "{r:?}");
    assert_eq!(fx.emu.oauth_refreshes(), (installed + 1, 0));
    // …until it is old again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = old.app.keepalive_pass().await;
    assert_eq!(r.refreshed, 1, "{r:?}");
    assert_eq!(fx.emu.oauth_refreshes(), (installed + 2, 0));
    assert!(old
        .app
        .metrics()
        .render()
        .contains("b24sense_token_keepalive_refreshes_total 2"));

    // The rotated pair works: an export runs without another refresh.
    let p = s.export().await;
    assert!(p["stopped"].is_null(), "{p}");
    assert!(p["uploaded"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(fx.emu.oauth_refreshes(), (installed + 2, 0));
    fx.assert_one_talk_per_recorded_call().await;
    old.shut_down().await;
    srv.shut_down().await;
}

#[tokio::test]
async fn a_refused_keepalive_refresh_is_reported_and_changes_no_tokens() {
    let fx = Fx::small(5).await;
    let srv = fx.serve(|_| {}).await;
    let s = fx.install(&srv).await;
    let store = fx.store().await;
    let before = fx.tokens(&store).await;
    // The install exchanged the frame's and the install event's refresh tokens.
    let (installed, _) = fx.emu.oauth_refreshes();
    let (st, v) = s.call("GET", "state", None).await;
    assert_eq!(st, 200);
    assert!(v["token_problem"].is_null(), "{v}");

    // Someone else used the stored refresh token (refresh tokens are single-use): ours is dead now.
    let (id, secret) = fx.emu.app_credentials();
    let r = http()
        .get(format!("{}oauth/token/", fx.emu.base_url()))
        .query(&[
            ("grant_type", "refresh_token"),
            ("client_id", id),
            ("client_secret", secret),
            ("refresh_token", before.refresh_token.expose_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let old = fx.router_only(|c| c.keepalive_age = Duration::ZERO).await;
    let r = old.app.keepalive_pass().await;
    assert_eq!((r.due, r.refreshed, r.refused, r.failed), (1, 0, 1, 0));
    assert_eq!(
        fx.emu.oauth_refreshes(),
        (installed + 1, 1),
        "ours was rejected"
    );
    assert!(old
        .app
        .metrics()
        .render()
        .contains("b24sense_token_refresh_refusals_total 1"));
    // The stored pair is as it was.
    let after = fx.tokens(&store).await;
    assert_eq!(after.version, before.version);
    for (what, after, before) in token_pairs(&after, &before) {
        assert_eq!(after, before, "the {what} token is unchanged");
    }

    // The page tells the administrator what to do, without any secret.
    let (_, v) = s.call("GET", "state", None).await;
    let msg = v["token_problem"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(
        msg.contains("invalid_grant")
            && msg.contains("Откройте приложение в Битрикс24 заново")
            && msg.contains("переустановите"),
        "{msg}"
    );
    assert!(!v.to_string().contains(before.refresh_token.expose_secret()));
    let (_, v) = s.call("GET", "progress", None).await;
    assert_eq!(v["token_problem"].as_str(), Some(msg));

    // Opening the application brings a fresh pair from Bitrix24 and clears the warning.
    let s = fx.open_page(&srv).await;
    let (_, v) = s.call("GET", "state", None).await;
    assert!(v["token_problem"].is_null(), "{v}");
    old.shut_down().await;
    srv.shut_down().await;
}

#[tokio::test]
async fn an_export_stopped_by_a_restart_is_shown_interrupted_and_resumed() {
    // Slow uploads, so the restart comes mid-run.
    let fx = Fx::new(
        portal(40),
        SpeechSenseConfig {
            upload_latency: Duration::from_millis(150),
            ..SpeechSenseConfig::default()
        },
    )
    .await;
    let a = fx.serve(|_| {}).await;
    let s = fx.install(&a).await;
    let (st, v) = s.call("POST", "export/start", None).await;
    assert_eq!(st, 200, "{v}");
    s.wait_for(|_| {}, |p| p["settled"].as_u64().unwrap_or(0) >= 4)
        .await;
    a.shut_down().await;

    // The journal says the run was interrupted mid-way.
    let member = fx.emu.app_member_id();
    let run = fx
        .store()
        .await
        .last_run_progress(&member, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status.as_deref(), Some("shutdown"));
    assert_eq!(run.progress["interrupted"], true, "{}", run.progress);
    assert!(
        run.progress["settled"].as_u64().unwrap() < fx.recorded_calls().len() as u64,
        "{}",
        run.progress
    );
    let talks_before = fx.speech.talk_count();
    assert!(talks_before < fx.recorded_calls().len());

    // A new server on the same store resumes it by itself; the page says what happened.
    let b = fx.serve(|_| {}).await;
    let s = fx.open_page(&b).await;
    let mut notices = HashSet::new();
    let p = s
        .wait_for(
            |p| {
                for k in ["notice", "stopped"] {
                    if let Some(t) = p[k].as_str() {
                        notices.insert(t.to_string());
                    }
                }
            },
            |p| p["finished"] == true && p["trigger"] == "resume",
        )
        .await;
    assert!(
        notices
            .iter()
            .any(|n| n.contains("Выгрузка прервана: сервер перезапускался")),
        "{notices:?}"
    );
    assert!(p["stopped"].is_null(), "{p}");
    assert_eq!(p["interrupted"], false, "{p}");
    // The resumed run is an incremental pass: it takes up only what the first run left unfinished, so what that
    // run uploaded is neither listed nor sent again.
    assert_eq!(
        p["uploaded"].as_u64().unwrap_or(0),
        (fx.recorded_calls().len() - talks_before) as u64,
        "{p}"
    );
    assert!(p["skipped"].get("already_uploaded").is_none(), "{p}");
    fx.assert_one_talk_per_recorded_call().await;
    assert!(b
        .app
        .metrics()
        .render()
        .contains("b24sense_export_runs_resumed_total 1"));
    assert_eq!(b.app.resume_pass().await, 0, "resumed once only");
    b.shut_down().await;
}

#[tokio::test]
async fn a_dead_run_is_shown_interrupted_and_resumed_once_a_live_one_is_left_alone() {
    let fx = Fx::small(20).await;
    let page = fx.router_only(|_| {}).await;
    let s = fx.install(&page).await;
    let member = fx.emu.app_member_id();
    let store = fx.store().await;

    // A run another replica is running: its heartbeat is fresh.
    let progress =
        json!({"running": true, "trigger": "page", "found": 20, "settled": 3, "uploaded": 3});
    let run = store
        .start_web_run(&member, &json!({"trigger": "page"}), &progress)
        .await
        .unwrap();
    assert_eq!(page.app.resume_pass().await, 0);
    let p = s.progress().await;
    assert_eq!(
        (&p["running"], &p["interrupted"], &p["settled"]),
        (&json!(true), &json!(false), &json!(3)),
        "{p}"
    );

    // Its process died: the heartbeat stopped long ago (as a crash leaves the row).
    let mut raw = sqlx::SqliteConnection::connect(&format!("sqlite:{}", fx.db.display()))
        .await
        .unwrap();
    raw.execute(
        format!("UPDATE runs SET updated_at = '2000-01-01T00:00:00.000Z' WHERE id = {run}")
            .as_str(),
    )
    .await
    .unwrap();
    let p = s.progress().await;
    assert_eq!(
        (&p["running"], &p["interrupted"]),
        (&json!(false), &json!(true)),
        "{p}"
    );
    assert_eq!(
        p["stopped"].as_str(),
        Some("Выгрузка прервана: сервер перезапускался.")
    );
    assert_eq!(p["settled"], 3, "the last journaled counts stay visible");

    // Two replicas recover at the same moment: exactly one resumes it.
    let other = fx.router_only(|_| {}).await;
    let (x, y) = tokio::join!(page.app.resume_pass(), other.app.resume_pass());
    assert_eq!(x + y, 1);
    let p = s
        .wait_for(
            |_| {},
            |p| p["finished"] == true && p["trigger"] == "resume",
        )
        .await;
    assert!(p["stopped"].is_null(), "{p}");
    fx.assert_one_talk_per_recorded_call().await;
    assert_eq!(
        page.app.resume_pass().await + other.app.resume_pass().await,
        0
    );
    page.shut_down().await;
    other.shut_down().await;
}

#[tokio::test]
async fn finished_progress_survives_a_restart() {
    let fx = Fx::small(25).await;
    let a = fx.serve(|_| {}).await;
    let s = fx.install(&a).await;
    let p = s.export().await;
    assert!(p["stopped"].is_null(), "{p}");
    a.shut_down().await;

    let b = fx.serve(|_| {}).await;
    let s = fx.open_page(&b).await;
    let after = s.progress().await;
    for k in [
        "found", "settled", "uploaded", "skipped", "failed", "bytes", "finished", "trigger",
    ] {
        assert_eq!(after[k], p[k], "{k}: {after} vs {p}");
    }
    assert_eq!(after["interrupted"], false);
    let (_, state) = s.call("GET", "state", None).await;
    assert_eq!(state["progress"]["uploaded"], p["uploaded"]);
    assert_eq!(
        b.app.resume_pass().await,
        0,
        "a finished run is not resumed"
    );
    b.shut_down().await;
}

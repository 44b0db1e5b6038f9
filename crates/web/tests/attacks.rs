//! Attacks on the install, over real sockets against the Bitrix24 emulator: a forged `ONAPPINSTALL` over an
//! installed portal pointing at an attacker's host, a forged install claiming an uninstalled portal, and an
//! install from only the fields Bitrix24 documents (the application token learned from `ONAPPINSTALL`). The
//! attacker's host is a listener that answers like a portal (`profile` says ADMIN) and counts the connections it
//! gets: an install must never reach it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use b24sense_emulators::bitrix24::{Bitrix24Emulator, FrameRequest, PortalConfig};
use b24sense_store::{Portal, PortalStatus};
use common::{good_settings, http, portal, post_frame, App, Session};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The victim's portal and the application server, another (the attacker's own, real) portal whose OAuth
/// server is allowed too, and the attacker's host.
struct Fx {
    app: App,
    other: Bitrix24Emulator,
    attacker: Attacker,
}

/// A host that answers every request like a portal whose user is an administrator, and counts connections.
struct Attacker {
    addr: String,
    accepted: Arc<AtomicUsize>,
}

impl Attacker {
    async fn start() -> Attacker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let _ = socket.read(&mut buf).await;
                    let body = r#"{"result":{"ID":"1","ADMIN":true,"NAME":"Mallory"},"time":{}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        Attacker { addr, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn fixture(calls: usize) -> Fx {
    let other = Bitrix24Emulator::start(PortalConfig {
        seed: 2,
        ..portal(calls)
    })
    .await
    .unwrap();
    let victim = PortalConfig {
        seed: 1,
        ..portal(calls)
    };
    Fx {
        app: App::start_with(victim, &[&other], |_| {}).await,
        other,
        attacker: Attacker::start().await,
    }
}

impl Fx {
    async fn install(&self) {
        let done = self.app.install().await;
        assert_eq!(done.install_event, vec![200], "ONAPPINSTALL accepted");
    }

    async fn post(&self, path: &str, query: &[(String, String)], form: &[(String, String)]) -> u16 {
        let frame = FrameRequest {
            query: query.to_vec(),
            form: form.to_vec(),
        };
        post_frame(&self.app.base, path, &frame).await
    }

    /// Opens the settings page as the portal's admin; the page's session.
    async fn open_page(&self) -> Result<Session, u16> {
        let page = self.app.open_page("ru").await;
        if page.status != 200 {
            return Err(page.status);
        }
        Ok(page.session())
    }

    /// A call-end event as the portal sends it, with `application_token`.
    async fn call_end_event(&self, application_token: &str) -> u16 {
        let ts = chrono::Utc::now().timestamp().to_string();
        let form = pairs(&[
            ("event", "ONVOXIMPLANTCALLEND"),
            ("data[CALL_ID]", "x"),
            ("ts", &ts),
            ("auth[member_id]", &self.app.emu.app_member_id()),
            ("auth[domain]", &self.app.emu.app_domain()),
            ("auth[application_token]", application_token),
        ]);
        self.post("events", &[], &form).await
    }

    /// Forged `ONAPPINSTALL` bodies claiming the victim's portal with the attacker's endpoint: a made-up refresh
    /// token with the victim's (allowed) OAuth server, the attacker's own OAuth server, and a genuine refresh
    /// token of another portal at its own (allowed) OAuth server.
    fn forged_install_events(&self) -> Vec<(&'static str, Vec<(String, String)>)> {
        let evil_rest = format!("http://{}/rest/", self.attacker.addr);
        let evil_oauth = format!("http://{}/oauth/rest/", self.attacker.addr);
        let genuine_other = get(&self.other.app_frame_request(1, "ru").form, "REFRESH_ID");
        let member = self.app.emu.app_member_id();
        let forge = |domain: &str, server: &str, refresh: &str| {
            pairs(&[
                ("event", "ONAPPINSTALL"),
                ("data[LANGUAGE_ID]", "ru"),
                ("auth[access_token]", "attacker-access"),
                ("auth[refresh_token]", refresh),
                ("auth[domain]", domain),
                ("auth[client_endpoint]", &evil_rest),
                ("auth[server_endpoint]", server),
                ("auth[member_id]", &member),
                ("auth[application_token]", "attacker-app-token"),
            ])
        };
        let victim_oauth = self.app.emu.app_server_endpoint();
        let other_oauth = self.other.app_server_endpoint();
        vec![
            (
                "made-up refresh token",
                forge(&self.app.emu.app_domain(), &victim_oauth, "made-up"),
            ),
            (
                "attacker's domain",
                forge(&self.attacker.addr, &victim_oauth, "made-up"),
            ),
            (
                "attacker's OAuth server",
                forge(&self.app.emu.app_domain(), &evil_oauth, "made-up"),
            ),
            (
                "no OAuth server named",
                forge(&self.app.emu.app_domain(), "", "made-up"),
            ),
            (
                "another portal's genuine refresh token",
                forge(&self.app.emu.app_domain(), &other_oauth, &genuine_other),
            ),
        ]
    }
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get(form: &[(String, String)], key: &str) -> String {
    form.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// What identifies the installation in its row.
fn identity(p: &Portal) -> (String, String, String, Option<String>, PortalStatus) {
    (
        p.domain.clone(),
        p.client_endpoint.clone(),
        p.server_endpoint.clone(),
        p.application_token
            .as_ref()
            .map(|t| t.expose_secret().to_string()),
        p.status,
    )
}

#[tokio::test]
async fn a_forged_install_event_cannot_take_over_an_installed_portal() {
    let fx = fixture(5).await;
    fx.install().await;
    let before = fx.app.portal().await;
    let tokens_before = fx.app.tokens().await;

    for (label, form) in fx.forged_install_events() {
        assert_eq!(fx.post("install", &[], &form).await, 403, "{label}");
    }
    // The same as an iframe install: the attacker's DOMAIN with the victim's member_id.
    let mut frame = fx.app.emu.app_frame_request(1, "ru");
    frame.query[0].1 = fx.attacker.addr.clone();
    assert_eq!(fx.post("install", &frame.query, &frame.form).await, 403);

    // Nothing changed, nothing reached the attacker.
    let after = fx.app.portal().await;
    assert_eq!(identity(&after), identity(&before));
    let tokens_after = fx.app.tokens().await;
    assert_eq!(tokens_after.version, tokens_before.version);
    assert_eq!(fx.attacker.connections(), 0, "no request to the attacker");

    // The real portal still works: its events are accepted, its admin opens the page and reads the state.
    assert_eq!(fx.app.end_first_call().await, Some(vec![200]));
    let s = fx.open_page().await.expect("the admin opens /app");
    let (st, body) = s.call("GET", "state", None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(fx.attacker.connections(), 0);
}

#[tokio::test]
async fn claiming_an_uninstalled_portal_is_refused_and_its_reinstall_sees_its_history() {
    let fx = fixture(6).await;
    fx.install().await;
    let s = fx.open_page().await.unwrap();
    let settings = good_settings(&fx.app.speech);
    let (st, body) = s.call("POST", "settings", Some(settings)).await;
    assert_eq!(st, 200, "{body}");
    s.export().await;
    let report = s.send("GET", "report", None).await.text;
    let history = report.lines().count();
    assert!(history > 1, "{report}");

    // The portal uninstalls the application: settings and ledger stay, secrets go.
    assert_eq!(fx.app.emu.uninstall_app(false).await, vec![200]);
    let before = fx.app.portal().await;
    assert_eq!(before.status, PortalStatus::Uninstalled);

    // A forged install of that member_id, as an event or as an iframe naming the attacker's host.
    for (label, form) in fx.forged_install_events() {
        assert_eq!(fx.post("install", &[], &form).await, 403, "{label}");
    }
    let forged = pairs(&[
        ("AUTH_ID", "attacker-access"),
        ("AUTH_EXPIRES", "3600"),
        ("REFRESH_ID", "made-up"),
        ("member_id", &before.member_id),
        ("status", "L"),
    ]);
    for domain in [fx.attacker.addr.clone(), fx.app.emu.app_domain()] {
        let query = pairs(&[("DOMAIN", &domain), ("PROTOCOL", "0"), ("LANG", "ru")]);
        assert_eq!(fx.post("install", &query, &forged).await, 403, "{domain}");
    }
    assert_eq!(identity(&fx.app.portal().await), identity(&before));
    assert_eq!(fx.attacker.connections(), 0, "no request to the attacker");

    // The real reinstall works and finds its settings and its history.
    fx.install().await;
    assert_eq!(fx.app.portal().await.status, PortalStatus::Installed);
    let s = fx.open_page().await.expect("the admin opens /app");
    let (st, state) = s.call("GET", "state", None).await;
    assert_eq!(st, 200, "{state}");
    assert_eq!(state["saved"], true, "{state}");
    assert_eq!(
        state["settings"]["connection_id"],
        fx.app.speech.config().connections[0].id.as_str(),
        "{state}"
    );
    let report = s.send("GET", "report", None).await.text;
    assert_eq!(report.lines().count(), history, "{report}");
}

#[tokio::test]
async fn an_install_from_the_documented_fields_only_learns_its_token_from_onappinstall() {
    let fx = fixture(3).await;
    let handler = format!("{}install", fx.app.base);
    // Exactly the fields Bitrix24 documents for the install frame.
    let frame = fx.app.emu.app_frame_request(1, "ru");
    let keep = |fields: &[(String, String)], names: &[&str]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), get(fields, n)))
            .collect()
    };
    let query = keep(&frame.query, &["DOMAIN", "PROTOCOL", "LANG", "APP_SID"]);
    let form = keep(
        &frame.form,
        &[
            "AUTH_ID",
            "AUTH_EXPIRES",
            "REFRESH_ID",
            "member_id",
            "status",
        ],
    );
    let r = http()
        .post(
            FrameRequest {
                query,
                form: form.clone(),
            }
            .url(&handler),
        )
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("installFinish"));

    // Installed, the page works; events are refused until ONAPPINSTALL brings the application token.
    let portal = fx.app.portal().await;
    assert_eq!(portal.status, PortalStatus::Installed);
    assert!(portal.application_token.is_none());
    fx.open_page().await.expect("the admin opens /app");
    let token = fx.app.emu.app_application_token();
    assert_eq!(fx.call_end_event(&token).await, 403);

    // The portal finishes the install and sends ONAPPINSTALL to the handler bound during the install.
    assert_eq!(fx.app.emu.finish_app_install("ru").await, vec![200]);
    let portal = fx.app.portal().await;
    assert_eq!(
        portal.application_token.unwrap().expose_secret(),
        token.as_str()
    );
    assert_eq!(fx.app.end_first_call().await, Some(vec![200]));
    assert_eq!(fx.call_end_event("forged").await, 403);
}

#[tokio::test]
async fn a_frame_that_carries_the_application_token_still_installs_at_once() {
    let fx = fixture(3).await;
    fx.app.emu.set_frame_extras(true);
    let frame = fx.app.emu.app_frame_request(1, "ru");
    assert_eq!(fx.post("install", &frame.query, &frame.form).await, 200);
    // No ONAPPINSTALL yet, and events already pass.
    assert_eq!(
        fx.call_end_event(&fx.app.emu.app_application_token()).await,
        200
    );
}

//! Fixtures shared by the web integration tests: the emulated portal and SpeechSense, the application server
//! configured for them and serving on a free port of 127.0.0.1, the install, the settings page opened as
//! Bitrix24's iframe POST opens it, and the page's API session. One copy, so a change to how the server is
//! started or the page is opened is made once for every test binary.
#![allow(dead_code)] // Each test binary uses only some of the helpers.

use std::time::{Duration, Instant};

use b24sense_emulators::bitrix24::{AppInstall, Bitrix24Emulator, FrameRequest, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_store::{Portal, PortalTokens, SecretKey, Store};
use b24sense_web::{AppServer, WebConfig};
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::{CancellationToken, DropGuard};
use url::Url;

/// An HTTP client that never goes through a proxy and gives up after 30 s.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A portal with `calls` calls and a generous REST rate limit (the tests are not about throttling).
pub fn portal(calls: usize) -> PortalConfig {
    PortalConfig {
        calls,
        rate: (500, 100),
        ..PortalConfig::default()
    }
}

/// A listener on a free port of 127.0.0.1 and the server's base URL there.
pub async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    (listener, base)
}

/// A server's configuration at `base` for the portals of `oauth_of` (their OAuth servers are allowed), with the
/// application credentials of `emu`.
pub fn web_config(
    base: &str,
    emu: &Bitrix24Emulator,
    speech: &SpeechSenseEmulator,
    oauth_of: &[&Bitrix24Emulator],
) -> WebConfig {
    let (id, secret) = emu.app_credentials();
    let mut config = WebConfig::new(
        Url::parse(base).unwrap(),
        id.to_string(),
        SecretString::from(secret.to_string()),
        speech.endpoint(),
    );
    config.allow_http_portals = true;
    // The emulator's stand-in for the Bitrix24 JS SDK: pages opened in a browser load nothing from outside.
    config.bitrix24_sdk = emu.sdk_url();
    config.oauth_servers = oauth_of
        .iter()
        .map(|e| format!("127.0.0.1:{}", e.addr().port()))
        .collect();
    config
}

/// Serves `server` on `listener` (with its periodic tasks) until the returned guard is dropped.
pub fn serve(server: AppServer, listener: tokio::net::TcpListener) -> DropGuard {
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone()));
    stop.drop_guard()
}

/// Settings that work with `speech` (all calls, no filters, continuous sync off).
pub fn good_settings(speech: &SpeechSenseEmulator) -> Value {
    json!({
        "connection_id": speech.config().connections[0].id, "api_key": speech.config().api_keys[0],
        "language": "ru-RU", "since": "", "users": "", "min_duration": "0", "direction": [],
        "mono_policy": "upload", "sync_enabled": false
    })
}

/// Installs the application of `emu` through the server at `base`, as the portal does; asserts it installed.
pub async fn install(emu: &Bitrix24Emulator, base: &str) -> AppInstall {
    let done = emu
        .install_app(&format!("{base}install"), "ru")
        .await
        .unwrap();
    assert!(done.installed, "{done:?}");
    done
}

/// POSTs a Bitrix24 form (an install or an iframe open) to `path` of the server at `base`; the status.
pub async fn post_frame(base: &str, path: &str, frame: &FrameRequest) -> u16 {
    http()
        .post(frame.url(&format!("{base}{path}")))
        .form(&frame.form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// POSTs an event form to the server's event handler at `base`; the status.
pub async fn post_event(base: &str, form: &(impl serde::Serialize + ?Sized)) -> u16 {
    http()
        .post(format!("{base}events"))
        .form(form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The settings page as the server at `base` answered the iframe POST of `emu`'s admin.
pub struct Page {
    pub base: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

/// Opens the settings page on the server at `base` as Bitrix24's iframe POST for `emu`'s admin does.
pub async fn open_page(base: &str, emu: &Bitrix24Emulator, lang: &str) -> Page {
    let frame = emu.app_frame_request(1, lang);
    let r = http()
        .post(frame.url(&format!("{base}app")))
        .form(&frame.form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Page {
        base: base.to_string(),
        status,
        headers,
        body: r.text().await.unwrap(),
    }
}

impl Page {
    /// The page's API session, from its boot JSON; asserts the page opened.
    pub fn session(&self) -> Session {
        assert_eq!(self.status, 200, "the page opens: {}", self.body);
        let page = &self.body;
        let start = page.find("id=\"boot\">").unwrap() + "id=\"boot\">".len();
        let end = start + page[start..].find("</script>").unwrap();
        let v: Value = serde_json::from_str(&page[start..end].replace("<\\/", "</")).unwrap();
        Session {
            base: self.base.clone(),
            token: v["session"].as_str().unwrap().to_string(),
            csrf: v["csrf"].as_str().unwrap().to_string(),
        }
    }
}

/// A settings-page session on one server: the bearer token and its CSRF token.
#[derive(Clone, Debug)]
pub struct Session {
    pub base: String,
    pub token: String,
    pub csrf: String,
}

/// An API answer: status, headers and the body as text.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| Value::String(self.text.clone()))
    }
}

impl Session {
    /// An API request with the session: a GET, or a POST with the CSRF token and `body` (`{}` when none).
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}api/{path}", self.base);
        let req = if method == "GET" {
            http().get(url)
        } else {
            http()
                .post(url)
                .header("X-CSRF-Token", &self.csrf)
                .json(&body.unwrap_or(json!({})))
        };
        let r = req.bearer_auth(&self.token).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Answer {
            status,
            headers,
            text: r.text().await.unwrap(),
        }
    }

    /// [`Session::send`]; the status and the JSON (or text) answer.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let a = self.send(method, path, body).await;
        (a.status, a.json())
    }

    pub async fn progress(&self) -> Value {
        let (st, v) = self.call("GET", "progress", None).await;
        assert_eq!(st, 200, "{v}");
        v["progress"].clone()
    }

    /// Polls the progress until `done(progress)` (bounded: 90 s); every answer seen goes to `seen`.
    pub async fn wait_for(
        &self,
        mut seen: impl FnMut(&Value),
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        loop {
            let p = self.progress().await;
            seen(&p);
            if done(&p) {
                return p;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "waited in vain: {p}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_finished(&self) -> Value {
        self.wait_for(|_| {}, |p| p["finished"] == true).await
    }

    /// Starts an export and waits until it has finished; its last progress.
    pub async fn export(&self) -> Value {
        let (st, v) = self.call("POST", "export/start", None).await;
        assert_eq!(st, 200, "{v}");
        self.wait_finished().await
    }
}

/// One emulated portal, one SpeechSense, one SQLite store in a tempdir and the application server serving them
/// on a free port (stopped when the fixture is dropped).
pub struct App {
    pub emu: Bitrix24Emulator,
    pub speech: SpeechSenseEmulator,
    pub store: Store,
    pub key: SecretKey,
    pub base: String,
    pub server: AppServer,
    /// Kept for the fixture's lifetime: the store's directory and the server's stop guard.
    pub dir: tempfile::TempDir,
    pub stop: DropGuard,
}

impl App {
    /// A fixture for a portal with `calls` calls; `adjust` changes the server's configuration.
    pub async fn start(calls: usize, adjust: impl FnOnce(&mut WebConfig)) -> App {
        App::start_with(portal(calls), &[], adjust).await
    }

    /// A fixture for the portal `portal`; the OAuth servers of `also_allowed` are allowed besides its own.
    pub async fn start_with(
        portal: PortalConfig,
        also_allowed: &[&Bitrix24Emulator],
        adjust: impl FnOnce(&mut WebConfig),
    ) -> App {
        App::start_full(portal, SpeechSenseConfig::default(), also_allowed, adjust).await
    }

    /// A fixture for the portal `portal` and a SpeechSense emulator configured as `speech`.
    pub async fn start_full(
        portal: PortalConfig,
        speech: SpeechSenseConfig,
        also_allowed: &[&Bitrix24Emulator],
        adjust: impl FnOnce(&mut WebConfig),
    ) -> App {
        let emu = Bitrix24Emulator::start(portal).await.unwrap();
        let speech = SpeechSenseEmulator::start(speech).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite:{}/b.db", dir.path().display()))
            .await
            .unwrap();
        let key = SecretKey::generate();
        let (listener, base) = listen().await;
        let oauth_of: Vec<&Bitrix24Emulator> = [&emu]
            .into_iter()
            .chain(also_allowed.iter().copied())
            .collect();
        let mut config = web_config(&base, &emu, &speech, &oauth_of);
        adjust(&mut config);
        let server = AppServer::new(config, store.clone(), key.clone()).unwrap();
        let stop = serve(server.clone(), listener);
        App {
            emu,
            speech,
            store,
            key,
            base,
            server,
            dir,
            stop,
        }
    }

    /// Installs the application through this server.
    pub async fn install(&self) -> AppInstall {
        install(&self.emu, &self.base).await
    }

    /// Opens the settings page of this portal's admin on this server.
    pub async fn open_page(&self, lang: &str) -> Page {
        open_page(&self.base, &self.emu, lang).await
    }

    /// Opens the settings page and returns its session.
    pub async fn session(&self) -> Session {
        self.open_page("ru").await.session()
    }

    /// Installs the application, opens the page and saves good settings with continuous sync on; the page
    /// session.
    pub async fn install_with_sync(&self) -> Session {
        self.install().await;
        let s = self.session().await;
        let mut settings = good_settings(&self.speech);
        settings["sync_enabled"] = json!(true);
        let (st, _) = s.call("POST", "settings", Some(settings)).await;
        assert_eq!(st, 200);
        s
    }

    /// The portal's stored row.
    pub async fn portal(&self) -> Portal {
        let member = self.emu.app_member_id();
        let portal = self.store.portal(&self.key, &member).await.unwrap();
        portal.expect("the portal is stored")
    }

    /// The portal's stored token pair.
    pub async fn tokens(&self) -> PortalTokens {
        let member = self.emu.app_member_id();
        let tokens = self.store.portal_tokens(&self.key, &member).await.unwrap();
        tokens.expect("the portal's tokens are stored")
    }

    /// Sends the call-end event of the portal's first call; the statuses our handler answered.
    pub async fn end_first_call(&self) -> Option<Vec<u16>> {
        let id: u64 = self.emu.call_rows()[0]["ID"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        self.emu.send_call_end(id).await
    }

    /// A plain GET of `path` on this server (no session).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        http()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
}

/// Sample lines of a Prometheus text exposition: `name{labels}` → value. Panics on a line that is neither a
/// comment nor a sample.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// The value of the sample `name` (with its labels) in `samples`.
pub fn sample(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no sample {name}: {samples:?}"))
        .1
}

/// [`good_settings`] plus the emulator's chat connection, so Open Lines sessions go out beside the calls.
pub fn chat_settings(speech: &SpeechSenseEmulator) -> Value {
    let mut s = good_settings(speech);
    s["chat_connection_id"] = json!(chat_connection(speech));
    s
}

/// The SpeechSense emulator's chat connection.
pub fn chat_connection(speech: &SpeechSenseEmulator) -> String {
    let kind = b24sense_speechsense::ConnectionKind::Chat;
    speech.config().connection_id(kind).unwrap().to_string()
}

/// `(session id, part)` of every talk on the chat connection, in the order they were stored.
pub fn chat_talks(speech: &SpeechSenseEmulator) -> Vec<(String, String)> {
    let chat = chat_connection(speech);
    speech
        .talks()
        .into_iter()
        .filter(|t| t.connection_id == chat)
        .map(|t| (t.fields["id"].clone(), t.fields["part"].clone()))
        .collect()
}

/// How many talks are on connections other than the chat one (the calls').
pub fn call_talk_count(speech: &SpeechSenseEmulator) -> usize {
    let chat = chat_connection(speech);
    speech
        .talks()
        .iter()
        .filter(|t| t.connection_id != chat)
        .count()
}

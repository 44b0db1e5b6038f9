//! Secrets never leave the places meant for them. The real `b24sense serve` runs at TRACE against the emulators
//! with unique canary values for the SpeechSense API key and the master key (and the emulator's client secret,
//! application token and every access/refresh token it issued, read back from the store, as further canaries);
//! the whole flow runs — install, page, settings, connection checks, exports, an event, the CSV report, metrics —
//! with forced errors (a wrong API key, an expired access token, REST 500s, a forged event) and a panicking task.
//! Then every captured byte — the log, every HTTP answer with its headers, `/metrics`, the report, and the raw
//! SQLite files (db, -wal, -shm) — is searched for each canary, raw, URL-encoded, hex and base64.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use b24sense_emulators::bitrix24::{Bitrix24Emulator, FaultConfig, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_store::{SecretKey, Store};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Everything the server answered, status line to body.
#[derive(Default)]
struct Seen(Vec<u8>);

impl Seen {
    async fn keep(&mut self, what: &str, r: reqwest::Response) -> (u16, String) {
        let status = r.status().as_u16();
        self.0
            .extend_from_slice(format!("{what} {status}\n").as_bytes());
        for (k, v) in r.headers() {
            self.0.extend_from_slice(k.as_str().as_bytes());
            self.0.extend_from_slice(b": ");
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(b'\n');
        }
        let body = r.text().await.unwrap();
        self.0.extend_from_slice(body.as_bytes());
        (status, body)
    }
}

/// The page's API session.
struct Session {
    base: String,
    token: String,
    csrf: String,
}

impl Session {
    async fn call(&self, seen: &mut Seen, method: &str, path: &str, body: Value) -> (u16, String) {
        let url = format!("{}api/{path}", self.base);
        let req = if method == "GET" {
            http().get(url)
        } else {
            http()
                .post(url)
                .header("X-CSRF-Token", &self.csrf)
                .json(&body)
        };
        let r = req.bearer_auth(&self.token).send().await.unwrap();
        seen.keep(path, r).await
    }

    /// Polls the progress until the run has finished (bounded: 90 s).
    async fn wait_finished(&self, seen: &mut Seen) -> Value {
        let t0 = Instant::now();
        loop {
            let (st, body) = self.call(seen, "GET", "progress", json!({})).await;
            assert_eq!(st, 200, "{body}");
            let p: Value = serde_json::from_str(&body).unwrap();
            if p["progress"]["finished"] == true {
                return p["progress"].clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "waited in vain: {p}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn b64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The ways `secret` could show up: raw, URL-encoded, hex (both cases) and base64 (standard and URL-safe, at each
/// of the three alignments it could have inside a longer base64 text, full groups only).
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut v = vec![
        secret.to_vec(),
        url::form_urlencoded::byte_serialize(secret)
            .collect::<String>()
            .into_bytes(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
    ];
    for alphabet in [STD, URL] {
        for pad in 0..3 {
            let mut shifted = vec![0u8; pad];
            shifted.extend_from_slice(secret);
            let e = b64(&shifted, alphabet);
            // Skip the group holding the padding bytes and the last, partial group.
            let start = if pad == 0 { 0 } else { 4 };
            let end = 4 * (shifted.len() / 3);
            v.push(e.as_bytes()[start..end].to_vec());
        }
    }
    v
}

fn hits(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn read_db_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("b24sense.db")
                .then(|| (name, std::fs::read(e.path()).unwrap_or_default()))
        })
        .collect()
}

/// The access and refresh tokens the store holds now.
async fn stored_tokens(db: &str, key: &SecretKey, member_id: &str) -> Vec<String> {
    let store = Store::open(db).await.unwrap();
    let t = store
        .portal_tokens(key, member_id)
        .await
        .unwrap()
        .expect("the portal has tokens");
    vec![
        t.access_token.expose_secret().to_string(),
        t.refresh_token.expose_secret().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_canary_in_logs_answers_metrics_reports_or_database_files() {
    let api_key = format!("canaryApiKey{:032x}", rand::random::<u128>());
    let master_hex = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let key = SecretKey::parse(&master_hex).unwrap();
    let emu = Bitrix24Emulator::start(PortalConfig {
        calls: 12,
        rate: (500, 100),
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let speech = SpeechSenseEmulator::start(SpeechSenseConfig {
        api_keys: vec![api_key.clone()],
        ..SpeechSenseConfig::default()
    })
    .await
    .unwrap();
    let (client_id, client_secret) = emu.app_credentials();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("b24sense.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}/");
    let log_path = dir.path().join("serve.log");
    let out_path = dir.path().join("serve.out");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("b24sense"))
        .env_clear()
        .env("HOME", dir.path())
        .env("RUST_LOG", "trace")
        .env("B24SENSE_SECRET_KEY", &master_hex)
        .env("B24SENSE_TEST_PANIC", "1")
        .args(["serve", "--allow-http-portals", "--concurrency", "2"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--public-url",
            &base,
        ])
        .args(["--client-id", client_id, "--client-secret", client_secret])
        .args(["--speechsense-endpoint", &speech.endpoint()])
        .args(["--database", &db])
        .args([
            "--oauth-server",
            &format!("127.0.0.1:{}", emu.addr().port()),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();

    let mut seen = Seen::default();
    let t0 = Instant::now();
    loop {
        if let Ok(r) = http().get(format!("{base}healthz")).send().await {
            if seen.keep("healthz", r).await.0 == 200 {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "serve did not start"
        );
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Install, then open the page as the portal's iframe does.
    let install = emu
        .install_app(&format!("{base}install"), "ru")
        .await
        .unwrap();
    seen.0.extend_from_slice(install.body.as_bytes());
    assert!(install.installed, "{install:?}");
    let frame = emu.app_frame_request(1, "ru");
    let r = http()
        .post(frame.url(&format!("{base}app")))
        .form(&frame.form)
        .send()
        .await
        .unwrap();
    let (st, page) = seen.keep("app", r).await;
    assert_eq!(st, 200, "{page}");
    let start = page.find("id=\"boot\">").unwrap() + "id=\"boot\">".len();
    let end = start + page[start..].find("</script>").unwrap();
    let boot: Value = serde_json::from_str(&page[start..end].replace("<\\/", "</")).unwrap();
    let s = Session {
        base: base.clone(),
        token: boot["session"].as_str().unwrap().to_string(),
        csrf: boot["csrf"].as_str().unwrap().to_string(),
    };
    let settings = |key: &str| {
        json!({
            "connection_id": speech.config().connections[0].id,
            "api_key": key,
            "language": "ru-RU", "since": "", "users": "", "min_duration": "0", "direction": [],
            "mono_policy": "upload", "sync_enabled": true
        })
    };
    let mut tokens = stored_tokens(&db, &key, &emu.app_member_id()).await;

    // A wrong API key (SpeechSense answers UNAUTHENTICATED), then the right one saved and checked.
    let (_, wrong) = s
        .call(&mut seen, "POST", "check", settings("wrong-key"))
        .await;
    let (st, body) = s
        .call(&mut seen, "POST", "settings", settings(&api_key))
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, right) = s.call(&mut seen, "POST", "check", settings(&api_key)).await;
    assert_eq!(st, 200, "{right}");
    assert_ne!(wrong, right, "the wrong key is refused");

    // An export whose first REST request finds the access token expired: the server refreshes it.
    emu.expire_access_tokens();
    let (st, body) = s.call(&mut seen, "POST", "export/start", json!({})).await;
    assert_eq!(st, 200, "{body}");
    let p = s.wait_finished(&mut seen).await;
    assert!(p["uploaded"].as_u64().unwrap() > 0, "{p}");
    assert!(emu.oauth_refreshes().0 >= 2, "install + refresh");
    tokens.extend(stored_tokens(&db, &key, &emu.app_member_id()).await);

    // A call-end event whose pass meets REST 500s; a forged event.
    emu.set_faults(FaultConfig {
        internal_error_next: 3,
        ..FaultConfig::default()
    });
    let id = emu.call_rows()[0]["ID"].as_str().unwrap().parse().unwrap();
    assert!(emu.send_call_end(id).await.unwrap().contains(&200));
    let r = http()
        .post(format!("{base}events"))
        .form(&[
            ("event", "ONVOXIMPLANTCALLEND"),
            ("auth[member_id]", &emu.app_member_id()),
            ("auth[application_token]", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(seen.keep("forged event", r).await.0, 403);
    let t0 = Instant::now();
    while emu.faults().internal_error_next > 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the 500s never met");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.wait_finished(&mut seen).await;

    for path in ["state", "users", "report", "progress"] {
        let (st, body) = s.call(&mut seen, "GET", path, json!({})).await;
        assert_eq!(st, 200, "{path}: {body}");
    }
    for path in ["metrics", "readyz"] {
        let r = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(seen.keep(path, r).await.0, 200);
    }
    tokens.extend(stored_tokens(&db, &key, &emu.app_member_id()).await);
    let db_running = read_db_files(dir.path());

    // SIGTERM: a graceful shutdown.
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("serve did not stop");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let log = std::fs::read(&log_path).unwrap();
    let log_text = String::from_utf8_lossy(&log);
    assert!(log_text.contains("TRACE"), "the log is at TRACE");
    assert!(log_text.contains("panicked"), "the test task panicked");
    assert!(
        log_text.contains("[REDACTED]"),
        "the panic printed the redacted secret"
    );
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("log".into(), log.clone()),
        ("stdout".into(), std::fs::read(&out_path).unwrap()),
        ("answers".into(), seen.0),
    ];
    places.extend(
        db_running
            .into_iter()
            .map(|(n, b)| (format!("{n} (running)"), b)),
    );
    places.extend(read_db_files(dir.path()));
    assert!(places
        .iter()
        .any(|(n, b)| n == "b24sense.db" && !b.is_empty()));

    let mut canaries: Vec<(String, Vec<Vec<u8>>)> = vec![
        ("API key".into(), forms(api_key.as_bytes())),
        ("client secret".into(), forms(client_secret.as_bytes())),
        (
            "application token".into(),
            forms(emu.app_application_token().as_bytes()),
        ),
    ];
    let master_bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&master_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut master = forms(master_hex.as_bytes());
    master.extend(forms(&master_bytes));
    canaries.push(("master key".into(), master));
    tokens.sort();
    tokens.dedup();
    assert!(
        tokens.len() >= 4,
        "at least two token pairs: {}",
        tokens.len()
    );
    for (i, t) in tokens.iter().enumerate() {
        canaries.push((format!("token {i}"), forms(t.as_bytes())));
    }
    let mut leaks = Vec::new();
    for (what, forms) in &canaries {
        for form in forms {
            for (place, bytes) in &places {
                let n = hits(bytes, form);
                if n > 0 {
                    leaks.push(format!(
                        "{what} as {:?} in {place}: {n}",
                        String::from_utf8_lossy(form)
                    ));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secret canaries found:\n{}",
        leaks.join("\n")
    );
}

//! From clone to the application in one command: `b24sense demo --serve` prints one URL, which opens the
//! application's settings page inside the emulated portal's frame; and each `emulate` prints what a user needs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("b24sense"));
    c.env_clear()
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Reads the child's stdout on a thread: every line goes to the returned channel.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines until `last` matches (bounded by `limit`); kills the child and panics on timeout or early exit.
fn read_until(
    child: &mut Child,
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    last: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = last(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("no expected line within {limit:?}; stdout {seen:#?}; stderr {err}");
            }
        }
    }
}

/// SIGTERM, then the exit status within `limit` (kills and panics otherwise).
fn terminate(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of `attr="…"` after `from` in `html`.
fn attr<'a>(html: &'a str, from: usize, attr: &str) -> Option<(&'a str, usize)> {
    let key = format!("{attr}=\"");
    let start = html[from..].find(&key)? + from + key.len();
    let end = start + html[start..].find('"')?;
    Some((&html[start..end], end))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serve_prints_one_url_that_opens_the_settings_page_in_the_portal_frame() {
    let mut child = bin()
        .args(["demo", "--serve", "--calls", "40", "--lang", "en"])
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let out = read_until(&mut child, &rx, Duration::from_secs(90), |l| {
        l.contains("API key")
    });
    let urls: Vec<&str> = out
        .iter()
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .collect();
    assert_eq!(urls.len(), 1, "exactly one URL: {out:#?}");
    let url = urls[0].to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let value_of = |label: &str| {
        out.iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {label} in {out:#?}"))
    };
    let connection = value_of("Connection ID:");
    let key = value_of("API key:");
    assert_eq!(connection, "conn-two-channel");
    assert_eq!(key, "test-api-key");

    // The printed URL is the portal's page: a Bitrix24-like header and a frame the application opens in.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let frame = http.get(&url).send().await.unwrap();
    assert_eq!(frame.status().as_u16(), 200);
    let frame = frame.text().await.unwrap();
    assert!(
        frame.contains("Bitrix24") && frame.contains("<iframe"),
        "{frame}"
    );
    let (form_at, _) = frame
        .find("<form")
        .map(|i| (i, ()))
        .expect("the page posts the frame form");
    let (action, _) = attr(&frame, form_at, "action").expect("form action");
    let action = unescape(action);
    assert!(
        action.contains("/app?"),
        "the frame opens the application's handler: {action}"
    );
    assert_ne!(
        url::Url::parse(&action).unwrap().port(),
        url::Url::parse(&url).unwrap().port(),
        "the application is served apart from the portal"
    );
    let mut form = Vec::new();
    let mut at = form_at;
    while let Some(i) = frame[at..].find("<input").map(|i| i + at) {
        let (name, end) = attr(&frame, i, "name").unwrap();
        let (value, end) = attr(&frame, end, "value").unwrap();
        form.push((unescape(name), unescape(value)));
        at = end;
    }
    assert!(form.iter().any(|(k, _)| k == "AUTH_ID"), "{form:?}");

    // What the browser does with that form: the settings page of the installed application.
    let page = http.post(&action).form(&form).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("id=\"boot\""),
        "the settings page with its session: {page}"
    );
    assert!(
        page.contains("connection_id") || page.contains("Connection ID"),
        "the settings form: {page}"
    );

    let status = terminate(&mut child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulate_speechsense_prints_its_address_key_connections_and_commands() {
    let mut child = bin()
        .args(["emulate", "speechsense", "--port", "0", "--lang", "en"])
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let out = read_until(&mut child, &rx, Duration::from_secs(30), |l| {
        l.starts_with("Stop")
    });
    let text = out.join("\n");
    let endpoint = out
        .iter()
        .find_map(|l| l.trim().strip_prefix("endpoint:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no endpoint in {text}"));
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{text}");
    assert!(!endpoint.ends_with(":0"), "the real port, not 0: {text}");
    let key = out
        .iter()
        .find_map(|l| l.trim().strip_prefix("API key:"))
        .map(|v| v.trim().to_string());
    assert_eq!(key.as_deref(), Some("test-api-key"), "{text}");
    for needle in [
        "conn-two-channel",
        "two-channel audio",
        "conn-chat",
        "conn-mono",
        "b24sense export --bitrix24-webhook",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // The printed check command works against the running emulator.
    let check = text
        .lines()
        .find(|l| l.trim_start().starts_with("b24sense check"))
        .unwrap_or_else(|| panic!("a check command in {text}"));
    let args: Vec<String> = check.split_whitespace().skip(1).map(String::from).collect();
    let out = tokio::task::spawn_blocking(move || {
        let mut c = bin();
        c.args(&args).arg("--lang=en").output().unwrap()
    });
    let out = out.await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Successful request to SpeechSense"));
    assert_eq!(
        terminate(&mut child, Duration::from_secs(10)).code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulate_bitrix24_prints_its_webhook_and_ready_command_lines() {
    let mut child = bin()
        .args([
            "emulate", "bitrix24", "--port", "0", "--calls", "5", "--lang", "en",
        ])
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let out = read_until(&mut child, &rx, Duration::from_secs(30), |l| {
        l.starts_with("Stop")
    });
    let text = out.join("\n");
    let webhook = out
        .iter()
        .find_map(|l| l.trim().strip_prefix("webhook URL:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no webhook in {text}"));
    assert!(webhook.starts_with("http://127.0.0.1:") && webhook.contains("/rest/1/"));
    assert!(
        text.contains(&format!("b24sense export --bitrix24-webhook {webhook}")),
        "{text}"
    );
    assert!(
        text.contains("b24sense serve --allow-http-portals"),
        "{text}"
    );
    assert!(
        text.contains("--client-id") && text.contains("--oauth-server"),
        "{text}"
    );
    // The printed webhook answers.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = http.get(format!("{webhook}profile")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        terminate(&mut child, Duration::from_secs(10)).code(),
        Some(0)
    );
}

//! The settings page in real headless Chromium (Debian's `chromium` + `chromedriver`), opened the way Bitrix24
//! opens it: the emulated portal's page POSTs the placement form into an iframe. The test fills the form,
//! checks the connection (a wrong key first), saves, starts the export, waits for the progress to finish and
//! compares with what the SpeechSense emulator holds. Screenshots go to `target/screenshots/` (tests never change tracked files); `scripts/refresh-screenshots.sh`
//! runs this test with `B24SENSE_SCREENSHOTS_DIR` pointing at `docs/screenshots/` to refresh the README's pictures.
//!
//! A missing `chromedriver` fails the test (`.ci/run` installs it); a developer without Chromium may skip it
//! explicitly with `B24SENSE_SKIP_BROWSER_TEST=1`, and the test then says so.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::App;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

async fn start_driver(path: &PathBuf) -> (Driver, Client) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver(child);
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-proxy-server", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-default-apps",
                     "--window-size=1100,1500", "--lang=ru-RU"]
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let t0 = Instant::now();
    loop {
        // Plain HTTP to the local chromedriver: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let r = ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match r {
            Ok(c) => return (driver, c),
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "chromedriver did not start: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn wait_text(c: &Client, css: &str, pred: impl Fn(&str) -> bool, what: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if pred(&t) {
                    return t;
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what} in {css}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    if !value.is_empty() {
        e.send_keys(value).await.unwrap();
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// `B24SENSE_SCREENSHOTS_DIR`, else `screenshots/` in cargo's target directory.
fn screenshots() -> PathBuf {
    let dir = std::env::var_os("B24SENSE_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("screenshots")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_page_in_chromium() {
    let Some(driver_path) = chromedriver() else {
        // Never a silent skip: only an explicit opt-out lets a machine without Chromium pass.
        assert!(
            std::env::var_os("B24SENSE_SKIP_BROWSER_TEST").is_some(),
            "chromedriver is not installed: apt-get install chromium chromium-driver \
             (or set B24SENSE_SKIP_BROWSER_TEST=1 to skip this test on purpose)"
        );
        eprintln!("SKIPPED on purpose (B24SENSE_SKIP_BROWSER_TEST): chromedriver is not installed");
        return;
    };
    let fx = App::start(60, |c| {
        c.concurrency = b24sense_engine::Concurrency::Pinned(4)
    })
    .await;
    fx.install().await;
    let (emu, speech) = (&fx.emu, &fx.speech);

    let (_driver, c) = start_driver(&driver_path).await;
    c.goto(&emu.app_frame_url(&format!("{}app", fx.base), "ru"))
        .await
        .unwrap();
    let frame = c.wait().for_element(Locator::Css("#app")).await.unwrap();
    frame.enter_frame().await.unwrap();
    wait_text(&c, "#edit", |t| t == "Редактировать", "the Edit button").await;
    click(&c, "#edit").await;

    let conn = speech.config().connections[0].id.clone();
    let key = speech.config().api_keys[0].clone();
    fill(&c, "#f-connection_id", &conn).await;

    // A wrong key: the message says the key is wrong.
    fill(&c, "#f-api_key", "wrong-key").await;
    click(&c, "#check").await;
    let msg = wait_text(
        &c,
        "#check-result",
        |t| t.contains("API-ключ"),
        "the wrong-key message",
    )
    .await;
    assert!(msg.contains("SpeechSense не принял API-ключ"), "{msg}");

    fill(&c, "#f-api_key", &key).await;
    click(&c, "#check").await;
    wait_text(
        &c,
        "#check-result",
        |t| t == "Успешный запрос к SpeechSense",
        "the success message",
    )
    .await;
    fill(&c, "#f-since", "").await;
    fill(&c, "#f-users", "").await;
    fill(&c, "#f-min_duration", "0").await;
    std::fs::write(
        screenshots().join("settings-form.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();

    // The user picker (user.get) fills the list of users.
    click(&c, "#pick-users").await;
    let first = c
        .wait()
        .for_element(Locator::Css("#user-list input"))
        .await
        .unwrap();
    first.click().await.unwrap();
    let users = c
        .find(Locator::Css("#f-users"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert!(users.unwrap_or_default().parse::<u64>().is_ok());
    click(&c, "#pick-users").await;

    // A field error next to its field, then fixed.
    fill(&c, "#f-users", "1, bob").await;
    click(&c, "#save").await;
    wait_text(&c, "#err-users", |t| !t.is_empty(), "the users field error").await;
    fill(&c, "#f-users", "").await;
    click(&c, "#save").await;
    wait_text(&c, "#summary", |t| t.contains(&conn), "the saved settings").await;

    click(&c, "#start").await;
    wait_text(
        &c,
        "#p-status",
        |t| t.starts_with("Выгрузка завершена"),
        "the finished export",
    )
    .await;
    let uploaded: usize = wait_text(&c, "#p-uploaded", |t| !t.is_empty(), "uploaded")
        .await
        .parse()
        .unwrap();
    assert!(uploaded > 0);
    assert_eq!(speech.talk_count(), uploaded);
    std::fs::write(
        screenshots().join("export-finished.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    c.close().await.unwrap();
}

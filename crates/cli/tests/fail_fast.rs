//! Fail fast, say what to do, once, in one language: the checks `export` makes before listing anything.

use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};

struct Services {
    portal: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    dir: tempfile::TempDir,
}

async fn services() -> Services {
    Services {
        portal: Bitrix24Emulator::start(PortalConfig {
            calls: 10,
            ..PortalConfig::default()
        })
        .await
        .unwrap(),
        speech: SpeechSenseEmulator::start(SpeechSenseConfig::default())
            .await
            .unwrap(),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Services {
    /// `export` against the emulators with `webhook`, no language flag.
    fn args(&self, webhook: &str) -> Vec<String> {
        let config = self.speech.config();
        let db = format!("sqlite:{}", self.dir.path().join("ledger.db").display());
        [
            "export",
            "--bitrix24-webhook",
            webhook,
            "--speechsense-endpoint",
            &self.speech.endpoint(),
            "--connection-id",
            &config.connections[0].id,
            "--api-key",
            &config.api_keys[0],
            "--database",
            &db,
        ]
        .map(String::from)
        .to_vec()
    }

    /// The command with a clean environment (`env` added).
    fn command(&self, args: &[String], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::cargo_bin("b24sense").unwrap();
        cmd.env_clear()
            .env("HOME", self.dir.path())
            .envs(env.iter().copied())
            .args(args)
            .timeout(Duration::from_secs(120));
        cmd
    }

    fn export(&self, webhook: &str, lang: &str) -> Command {
        let mut args = vec!["--lang".to_string(), lang.to_string()];
        args.extend(self.args(webhook));
        self.command(&args, &[])
    }

    /// The emulator's webhook with another secret.
    fn wrong_secret_webhook(&self) -> String {
        let secret = &self.portal.config().webhook_secret;
        self.portal
            .webhook_url()
            .replace(secret.as_str(), "wrongsecret42")
    }
}

async fn run(mut cmd: Command) -> (Output, Duration) {
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let out = cmd.output().unwrap();
        (out, t0.elapsed())
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn has_cyrillic(s: &str) -> bool {
    s.chars().any(|c| ('\u{400}'..='\u{4ff}').contains(&c))
}

/// A closed port on loopback: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_portal_fails_fast_with_the_url_and_advice() {
    let s = services().await;
    let webhook = format!("http://127.0.0.1:{}/rest/1/somesecret/", closed_port());
    let (out, took) = run(s.export(&webhook, "en")).await;
    let all = text(&out);
    println!(
        "unreachable portal: exit {:?} after {took:?}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {all}");
    let port = webhook
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert!(
        all.contains(&format!("127.0.0.1:{port}")),
        "names the portal: {all}"
    );
    assert!(all.contains("connection refused"), "the cause: {all}");
    assert!(
        all.contains("Check the portal address in --bitrix24-webhook"),
        "advice: {all}"
    );
    assert!(!all.contains("somesecret"), "never the secret: {all}");
    assert!(
        !all.contains("finished") && !all.contains("nothing was uploaded"),
        "{all}"
    );
    assert_eq!(s.speech.talk_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_webhook_secret_is_named_once_with_how_to_make_a_new_one() {
    let s = services().await;
    let (out, _) = run(s.export(&s.wrong_secret_webhook(), "en")).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "refused: {all}");
    assert!(all.contains("secret"), "names the secret: {all}");
    assert!(
        all.contains("Incoming webhook"),
        "how to make a new one: {all}"
    );
    assert!(!all.contains("wrongsecret42"), "never the secret: {all}");
    assert_eq!(
        all.matches("Bitrix24 refused the webhook").count(),
        1,
        "once: {all}"
    );
    assert_eq!(
        all.matches("INVALID_CREDENTIALS").count(),
        1,
        "the raw cause once: {all}"
    );
    assert!(
        !all.contains("finished") && !all.contains("nothing was uploaded"),
        "{all}"
    );
    assert_eq!(
        s.portal.stats().http_requests,
        1,
        "one request, then stop: no listing, no retries"
    );
    assert_eq!(s.speech.talk_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_language_per_run() {
    let s = services().await;
    let (en, _) = run(s.export(&s.wrong_secret_webhook(), "en")).await;
    let en = text(&en);
    assert!(!has_cyrillic(&en), "English only: {en}");

    let (ru, _) = run(s.export(&s.wrong_secret_webhook(), "ru")).await;
    assert_eq!(ru.status.code(), Some(3));
    let ru = text(&ru);
    assert!(
        ru.contains("Bitrix24 не принял вебхук") && ru.contains("секретный код"),
        "{ru}"
    );
    // No line mixes Russian with English words; the raw cause stands on its own line, marked.
    let english = [
        "refused", "error", "failed", "request", "could", "the ", "webhook ",
    ];
    for line in ru.lines().filter(|l| has_cyrillic(l)) {
        let lower = line.to_lowercase();
        assert!(
            !english.iter().any(|w| lower.contains(w)),
            "a line mixing Russian and English: {line}"
        );
    }
    assert!(ru
        .lines()
        .any(|l| l.trim() == "техническая причина, как её сообщила система:"));

    // The locale decides when no flag is given; B24SENSE_LANG and the flag win over it.
    let args = s.args(&s.wrong_secret_webhook());
    let ru_locale = ("LANG", "ru_RU.UTF-8");
    let (out, _) = run(s.command(&args, &[ru_locale])).await;
    assert!(
        text(&out).contains("Bitrix24 не принял вебхук"),
        "{}",
        text(&out)
    );
    let (out, _) = run(s.command(&args, &[ru_locale, ("B24SENSE_LANG", "en")])).await;
    assert!(!has_cyrillic(&text(&out)), "{}", text(&out));
    let mut cmd = s.export(&s.wrong_secret_webhook(), "en");
    cmd.env("LANG", "ru_RU.UTF-8");
    let (out, _) = run(cmd).await;
    assert!(!has_cyrillic(&text(&out)), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_speechsense_in_russian_is_one_language_per_line() {
    let s = services().await;
    let mut cmd = Command::cargo_bin("b24sense").unwrap();
    cmd.env_clear().args([
        "check",
        "--lang",
        "ru",
        "--speechsense-endpoint",
        &format!("http://127.0.0.1:{}", closed_port()),
        "--connection-id",
        "conn-two-channel",
        "--api-key",
        "test-api-key",
    ]);
    let (out, took) = run(cmd).await;
    let err = text(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(err.contains("Не удалось связаться с SpeechSense"), "{err}");
    assert!(
        err.contains("соединение отклонено"),
        "the cause, translated: {err}"
    );
    for line in err.lines().filter(|l| has_cyrillic(l)) {
        let lower = line.to_lowercase();
        assert!(
            !["request", "failed", "error", "transport"]
                .iter()
                .any(|w| lower.contains(w)),
            "a line mixing Russian and English: {line}"
        );
    }
    drop(s);
}

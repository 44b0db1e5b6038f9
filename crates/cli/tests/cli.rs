//! Black-box tests of the `b24sense` binary against the emulators: the CLI contract, messages and exit codes.

use std::process::Output;

use assert_cmd::Command;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};

struct Services {
    portal: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    key: String,
    connection: String,
    dir: tempfile::TempDir,
}

async fn services(calls: usize) -> Services {
    let portal = Bitrix24Emulator::start(PortalConfig {
        calls,
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let config = SpeechSenseConfig::default();
    let key = config.api_keys[0].clone();
    let connection = config.connections[0].id.clone();
    let speech = SpeechSenseEmulator::start(config).await.unwrap();
    Services {
        portal,
        speech,
        key,
        connection,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Services {
    fn export(&self, extra: &[&str]) -> Command {
        self.export_with(&self.portal.webhook_url(), &self.key, extra)
    }

    fn export_with_key(&self, key: &str, extra: &[&str]) -> Command {
        self.export_with(&self.portal.webhook_url(), key, extra)
    }

    fn export_with(&self, webhook: &str, key: &str, extra: &[&str]) -> Command {
        self.export_to(webhook, &self.speech.endpoint(), key, extra)
    }

    fn export_to(&self, webhook: &str, endpoint: &str, key: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("b24sense").unwrap();
        cmd.env_clear()
            .env("HOME", self.dir.path())
            .arg("export")
            .args(["--bitrix24-webhook", webhook])
            .args(["--speechsense-endpoint", endpoint])
            .args(["--connection-id", &self.connection])
            .args(["--api-key", key])
            .args([
                "--database",
                &format!("sqlite:{}", self.dir.path().join("ledger.db").display()),
            ])
            .args(extra);
        cmd
    }
}

/// Runs a command off the async runtime (the emulators live on it).
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_rerun_uploads_nothing_twice() {
    let s = services(80).await;
    let first = run(s.export(&["--json"])).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    let uploaded = summary["uploaded"].as_u64().unwrap();
    assert!(uploaded > 40, "{summary}");
    assert_eq!(s.speech.talk_count() as u64, uploaded);
    assert_eq!(summary["rest"]["rate_limited"], 0);

    let second = run(s.export(&["--json"])).await;
    assert_eq!(second.status.code(), Some(0));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&second)).unwrap();
    assert_eq!(summary["uploaded"], 0);
    assert_eq!(
        summary["skipped"]["already_uploaded"].as_u64(),
        Some(uploaded)
    );
    assert_eq!(s.speech.talk_count() as u64, uploaded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_file_and_dry_run() {
    let s = services(40).await;
    let dry = run(s.export(&["--dry-run"])).await;
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert!(stdout(&dry).contains("would upload"), "{}", stdout(&dry));
    assert!(stdout(&dry).contains("minutes"));
    assert_eq!(s.speech.talk_count(), 0, "a dry run uploads nothing");

    let report = s.dir.path().join("report.jsonl");
    let out = run(s.export(&["--report", report.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&report).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40, "one line per qualifying call");
    let uploaded: Vec<_> = lines
        .iter()
        .filter(|l| l["outcome"] == "uploaded")
        .collect();
    assert_eq!(uploaded.len(), s.speech.talk_count());
    assert!(uploaded
        .iter()
        .all(|l| l["talk_id"].as_str().is_some_and(|t| !t.is_empty())));
    assert!(lines
        .iter()
        .filter(|l| l["outcome"] == "skipped")
        .all(|l| l["reason"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_flag_and_nothing_is_uploaded() {
    let s = services(20).await;
    let cases: &[(&[&str], &str)] = &[
        (&["--since", "01.02.2025"], "--since"),
        (&["--until", "tomorrow"], "--until"),
        (&["--users", "1,abc"], "--users"),
        (&["--min-duration", "-5"], "--min-duration"),
        (&["--min-duration", "ten"], "--min-duration"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--direction", "sideways"], "--direction"),
        (&["--language", "русский"], "--language"),
        (
            &["--min-duration", "60", "--max-duration", "30"],
            "--max-duration",
        ),
    ];
    for (args, flag) in cases {
        let out = run(s.export(args)).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(flag),
            "{args:?} must name {flag}: {}",
            stderr(&out)
        );
    }
    for bad in [
        "ftp://portal/rest/1/x/",
        "https://portal.bitrix24.ru/rest/abc/secret/",
        "not a url",
        "https://portal.bitrix24.ru/",
    ] {
        let out = run(s.export_with(bad, &s.key, &[])).await;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("--bitrix24-webhook") && !err.contains("multiple times"),
            "{bad}: {err}"
        );
    }
    assert_eq!(s.speech.talk_count(), 0);
    assert_eq!(
        s.portal.stats().http_requests,
        0,
        "refused before any request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_what_is_wrong() {
    let s = services(1).await;
    let check = |key: &str, conn: &str, endpoint: &str, lang: &str| {
        let mut cmd = Command::cargo_bin("b24sense").unwrap();
        cmd.env_clear().args([
            "check",
            "--speechsense-endpoint",
            endpoint,
            "--connection-id",
            conn,
            "--api-key",
            key,
            "--lang",
            lang,
        ]);
        cmd
    };
    let ok = run(check(&s.key, &s.connection, &s.speech.endpoint(), "ru")).await;
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("Успешный запрос к SpeechSense"));

    let bad_key = run(check(
        "wrong-key",
        &s.connection,
        &s.speech.endpoint(),
        "en",
    ))
    .await;
    assert_eq!(bad_key.status.code(), Some(3));
    assert!(
        stderr(&bad_key).to_lowercase().contains("key"),
        "{}",
        stderr(&bad_key)
    );
    assert!(
        !stderr(&bad_key).contains("wrong-key"),
        "never echo the key"
    );

    let bad_conn = run(check(
        &s.key,
        "nosuchconnection",
        &s.speech.endpoint(),
        "en",
    ))
    .await;
    assert_eq!(bad_conn.status.code(), Some(3));
    assert!(
        stderr(&bad_conn).to_lowercase().contains("connection"),
        "{}",
        stderr(&bad_conn)
    );

    // Nothing listens on port 9 of loopback.
    let unreachable = run(check(&s.key, &s.connection, "http://127.0.0.1:9", "en")).await;
    assert_eq!(
        unreachable.status.code(),
        Some(4),
        "{}",
        stderr(&unreachable)
    );
    assert!(
        stderr(&unreachable).contains("reach"),
        "{}",
        stderr(&unreachable)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_with_wrong_key_exits_refused() {
    let s = services(10).await;
    let out = run(s.export_with_key("wrong-key", &[])).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.speech.talk_count(), 0);
}

#[test]
fn demo_runs_end_to_end() {
    let out = Command::cargo_bin("b24sense")
        .unwrap()
        .args(["demo", "--calls", "120", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["found"], 120);
    assert!(v["uploaded"].as_u64().unwrap() > 60, "{v}");
    assert_eq!(v["emulators"]["talks_stored"], v["uploaded"]);
    assert_eq!(v["emulators"]["portal_rate_limited"], 0);
    assert!(v["rest"]["requests"].as_u64().unwrap() >= 2);
    // Refused nothing, so the portal's own downloads stayed out of its request limit.
    assert_eq!(v["download_accounting"], "uncounted", "{v}");
    assert_eq!(v["rest"]["portal_downloads_counted"], 0, "{v}");
}

#[test]
fn every_command_has_help() {
    for cmd in [
        &["--help"][..],
        &["export", "--help"],
        &["check", "--help"],
        &["demo", "--help"],
        &["emulate", "--help"],
    ] {
        let out = Command::cargo_bin("b24sense")
            .unwrap()
            .args(cmd)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        assert!(stdout(&out).contains("Usage"), "{cmd:?}");
    }
    let out = Command::cargo_bin("b24sense")
        .unwrap()
        .args(["export", "--help"])
        .output()
        .unwrap();
    for flag in [
        "--bitrix24-webhook",
        "B24SENSE_BITRIX24_WEBHOOK",
        "--since",
        "--users",
        "--min-duration",
        "--dry-run",
        "--database",
    ] {
        assert!(stdout(&out).contains(flag), "export --help lacks {flag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_an_unreachable_endpoint_says_so_and_touches_nothing() {
    let s = services(10).await;
    // Nothing listens on port 9 of loopback.
    let out = run(s.export_to(&s.portal.webhook_url(), "http://127.0.0.1:9", &s.key, &[])).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("Could not reach SpeechSense"), "{err}");
    assert_eq!(
        s.portal.stats().http_requests,
        0,
        "the portal is not touched when SpeechSense is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_retry_read_the_ledger() {
    let s = services(30).await;
    let db = format!("sqlite:{}", s.dir.path().join("ledger.db").display());
    let out = run(s.export(&["--json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();

    let mut cmd = Command::cargo_bin("b24sense").unwrap();
    cmd.env_clear()
        .args(["status", "--database", &db, "--json"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let uploaded: u64 = v["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "uploaded")
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(uploaded, summary["uploaded"].as_u64().unwrap());
    assert_eq!(v["last_run"]["status"], "finished");

    let mut cmd = Command::cargo_bin("b24sense").unwrap();
    cmd.env_clear().args([
        "retry",
        "--failed",
        "--reason",
        "download_failed",
        "--database",
        &db,
    ]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("0 failed calls"),
        "{}",
        stdout(&out)
    );

    let mut cmd = Command::cargo_bin("b24sense").unwrap();
    cmd.env_clear().args([
        "retry",
        "--failed",
        "--reason",
        "no_such_reason",
        "--database",
        &db,
    ]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--reason"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_search_scope_is_refused() {
    let s = services(5).await;
    let out = run(s.export(&["--organization-id", "org1", "--project-id", "p1"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--space-id"), "{}", stderr(&out));
    assert_eq!(s.speech.talk_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_unreachable_ledger_is_a_clear_error_and_nothing_is_lost() {
    let s = services(5).await;
    let path = s.dir.path().join("garbage.db");
    let garbage = b"this is not a SQLite database, but somebody's precious file".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let db = format!("sqlite:{}", path.display());
    // `status` opens the ledger exactly as `export` does (`open_store`), through the flag's environment variable.
    let mut cmd = Command::cargo_bin("b24sense").unwrap();
    cmd.env_clear()
        .env("HOME", s.dir.path())
        .env("B24SENSE_DATABASE_URL", &db)
        .args(["status"]);
    let out = run(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("--database") && err.contains("garbage.db"),
        "names the flag and the file: {err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file is left exactly as it was"
    );

    let mut cmd = Command::cargo_bin("b24sense").unwrap();
    cmd.env_clear().args([
        "status",
        "--database",
        "postgres://postgres@127.0.0.1:1/test",
    ]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("--database"), "{}", stderr(&out));
    assert_eq!(s.speech.talk_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_since_until_and_users_mean_all_calls_in_flags_and_environment() {
    let s = services(60).await;
    let found = |o: &Output| -> u64 {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
        let summary: serde_json::Value = serde_json::from_str(&stdout(o)).unwrap();
        summary["found"].as_u64().unwrap()
    };
    let dry = ["--dry-run", "--json"];
    let all = found(&run(s.export(&dry)).await);
    assert!(all > 0);

    let empty_flags = [&dry[..], &["--since", "", "--until", " ", "--users", ""]].concat();
    assert_eq!(found(&run(s.export(&empty_flags)).await), all, "flags");
    let mut cmd = s.export(&dry);
    cmd.env("B24SENSE_SINCE", "")
        .env("B24SENSE_UNTIL", "  ")
        .env("B24SENSE_USERS", "");
    assert_eq!(found(&run(cmd).await), all, "environment");

    // The environment variables are read: a date or a user given there filters.
    let mut cmd = s.export(&dry);
    cmd.env("B24SENSE_SINCE", "2999-01-01");
    assert_eq!(found(&run(cmd).await), 0, "B24SENSE_SINCE");
    let mut cmd = s.export(&dry);
    cmd.env("B24SENSE_UNTIL", "2000-01-01");
    assert_eq!(found(&run(cmd).await), 0, "B24SENSE_UNTIL");
    let user = s.portal.call_rows()[0]["PORTAL_USER_ID"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cmd = s.export(&dry);
    cmd.env("B24SENSE_USERS", &user);
    let one_user = found(&run(cmd).await);
    assert!(
        0 < one_user && one_user < all,
        "B24SENSE_USERS={user}: {one_user} of {all}"
    );
    // A flag wins over its environment variable.
    let mut cmd = s.export(&[&dry[..], &["--since", ""]].concat());
    cmd.env("B24SENSE_SINCE", "2999-01-01");
    assert_eq!(
        found(&run(cmd).await),
        all,
        "--since \"\" over B24SENSE_SINCE"
    );
}

//! `b24sense serve` as a process: refuses to start without the secret key (naming the variable), and
//! serves /healthz, /readyz and /metrics on the address it prints.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("b24sense"));
    c.env_remove("B24SENSE_SECRET_KEY")
        .env_remove("B24SENSE_SECRET_KEY_FILE")
        .env_remove("B24SENSE_DATABASE_URL");
    c
}

#[test]
fn refuses_without_the_secret_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "serve",
            "--public-url",
            "https://b24sense.example.com/",
            "--client-id",
            "local.x.1",
        ])
        .args(["--client-secret", "s3cret", "--listen", "127.0.0.1:0"])
        .arg("--database")
        .arg(format!("sqlite:{}/d.db", dir.path().display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("B24SENSE_SECRET_KEY is not set"), "{err}");
    assert!(!err.contains("s3cret"));
}

#[tokio::test]
async fn serves_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .env("B24SENSE_SECRET_KEY", "ab".repeat(32))
        .env("B24SENSE_LOG_FORMAT", "json")
        .args([
            "serve",
            "--public-url",
            "https://b24sense.example.com/",
            "--client-id",
            "local.x.1",
        ])
        .args(["--client-secret", "s3cret", "--listen", "127.0.0.1:0"])
        .arg("--database")
        .arg(format!("sqlite:{}/d.db", dir.path().display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(stderr);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(60), line)
        .await
        .unwrap()
        .unwrap();
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for (path, needle) in [
        ("healthz", "ok"),
        ("readyz", "ready"),
        ("metrics", "b24sense_calls_total"),
    ] {
        let r = http
            .get(format!("http://{addr}/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    // An event from an unknown portal is refused.
    let r = http
        .post(format!("http://{addr}/events"))
        .form(&[
            ("event", "ONAPPUNINSTALL"),
            ("auth[member_id]", "x"),
            ("auth[application_token]", "y"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn keepalive_flags_are_validated() {
    // An age past the refresh token's shortest lifetime (28 days, maybe 20 to be safe) is refused up front.
    let out = bin()
        .env("B24SENSE_SECRET_KEY", "ab".repeat(32))
        .args([
            "serve",
            "--public-url",
            "https://b24sense.example.com/",
            "--client-id",
            "local.x.1",
        ])
        .args(["--client-secret", "s3cret", "--token-keepalive-age", "30"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token-keepalive-age"), "{err}");
    let help = bin().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--token-keepalive-interval",
        "--token-keepalive-age",
        "--run-stale-after",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}

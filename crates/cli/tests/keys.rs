//! `b24sense keys` as a process: `rotate` moves every stored secret to the new key (refusing to call it done
//! while the old key is missing), after which `check` and the store read everything with the new key alone;
//! `generate` prints fresh keys; no key and no secret ever appears in the output.

use std::process::{Command, Output};

use b24sense_store::{Installation, PortalSettings, SecretKey, Store};
use secrecy::{ExposeSecret, SecretString};

const OLD_HEX: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const NEW_HEX: &str = "f9e8d7c6b5a4938271605f4e3d2c1b0af9e8d7c6b5a4938271605f4e3d2c1b0a";
const MEMBERS: [&str; 2] = ["m-alpha", "m-beta"];

fn canary(member: &str, what: &str) -> String {
    format!("CANARY-{what}-{member}")
}

/// `b24sense keys <args>` with exactly the given key variables.
fn keys(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("b24sense"));
    for v in [
        "B24SENSE_SECRET_KEY",
        "B24SENSE_SECRET_KEY_FILE",
        "B24SENSE_OLD_SECRET_KEY",
        "B24SENSE_OLD_SECRET_KEY_FILE",
        "B24SENSE_DATABASE_URL",
    ] {
        c.env_remove(v);
    }
    c.env("RUST_LOG", "trace").envs(env.iter().copied());
    c.arg("keys").args(args).output().unwrap()
}

/// Stdout and stderr, checked to hold no key and no secret.
fn text(out: &Output) -> String {
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for leak in [OLD_HEX, NEW_HEX, "CANARY"] {
        assert!(!t.contains(leak), "{leak} in the output:\n{t}");
    }
    t
}

async fn seed(url: &str, key: &SecretKey) {
    let store = Store::open(url).await.unwrap();
    for m in MEMBERS {
        let inst = Installation {
            member_id: m.into(),
            domain: format!("{m}.bitrix24.ru"),
            client_endpoint: format!("https://{m}.bitrix24.ru/rest/"),
            server_endpoint: "https://oauth.bitrix.info/rest/".into(),
            application_token: SecretString::from(canary(m, "app")),
            access_token: SecretString::from(canary(m, "access")),
            refresh_token: SecretString::from(canary(m, "refresh")),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
            lang: None,
        };
        store.install_portal(key, &inst).await.unwrap();
        let api_key = SecretString::from(canary(m, "api"));
        store
            .save_settings(key, m, &PortalSettings::default(), Some(&api_key))
            .await
            .unwrap();
    }
    store.close().await;
}

/// Every secret of the seeded portals, read with `key`.
async fn read_all(url: &str, key: &SecretKey) -> Vec<String> {
    let store = Store::open(url).await.unwrap();
    let mut out = Vec::new();
    for m in MEMBERS {
        let p = store.portal(key, m).await.unwrap().unwrap();
        let t = store.portal_tokens(key, m).await.unwrap().unwrap();
        let s = store.settings(key, m).await.unwrap().unwrap();
        out.push(p.application_token.unwrap().expose_secret().to_string());
        out.push(t.access_token.expose_secret().to_string());
        out.push(t.refresh_token.expose_secret().to_string());
        out.push(s.api_key.unwrap().expose_secret().to_string());
    }
    store.close().await;
    out
}

#[tokio::test]
async fn rotate_then_the_new_key_alone_reads_everything() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/d.db", dir.path().display());
    let old = SecretKey::parse(OLD_HEX).unwrap();
    let new = SecretKey::parse(NEW_HEX).unwrap();
    seed(&url, &old).await;
    let db = ["--database", url.as_str()];
    let new_only = [("B24SENSE_SECRET_KEY", NEW_HEX)];

    // Without the old key nothing can be moved: the secrets are named, the missing variable too.
    let out = keys(&new_only, &["rotate", db[0], db[1]]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("0 secrets re-encrypted now"), "{t}");
    assert!(t.contains("m-alpha/access_token"), "{t}");
    assert!(t.contains("B24SENSE_OLD_SECRET_KEY"), "{t}");

    // With the old key in a file (a secret mount): all 8 move.
    let old_file = dir.path().join("old.key");
    std::fs::write(&old_file, format!("{OLD_HEX}\n")).unwrap();
    let ring = [
        ("B24SENSE_SECRET_KEY", NEW_HEX),
        ("B24SENSE_OLD_SECRET_KEY_FILE", old_file.to_str().unwrap()),
    ];
    let out = keys(&ring, &["rotate", db[0], db[1]]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("key {}: 8 secrets re-encrypted now", new.id())),
        "{t}"
    );
    assert!(t.contains("left under another key: 0"), "{t}");

    // Running it again changes nothing.
    let out = keys(&ring, &["rotate", db[0], db[1]]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("0 secrets re-encrypted now, 8 under it in all"),
        "{t}"
    );

    // The new key alone opens every secret; the old one alone opens none.
    let out = keys(&new_only, &["check", db[0], db[1]]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("8 secrets: 8 under key {}", new.id())) && t.contains("0 cannot be"),
        "{t}"
    );
    let out = keys(
        &[("B24SENSE_SECRET_KEY", OLD_HEX)],
        &["check", db[0], db[1]],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("8 cannot be decrypted"), "{t}");

    let mut want = Vec::new();
    for m in MEMBERS {
        for what in ["app", "access", "refresh", "api"] {
            want.push(canary(m, what));
        }
    }
    assert_eq!(read_all(&url, &new).await, want);
    // Nothing secret in the database file either.
    let raw = std::fs::read(dir.path().join("d.db")).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("CANARY"));
}

#[test]
fn a_key_never_comes_from_the_command_line_and_generate_prints_fresh_ones() {
    let out = keys(&[], &["check", "--database", "sqlite::memory:"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("B24SENSE_SECRET_KEY is not set"), "{t}");
    let out = keys(&[], &["rotate", "--key", NEW_HEX]);
    assert_eq!(out.status.code(), Some(2));

    let a = keys(&[], &["generate"]);
    let b = keys(&[], &["generate"]);
    assert!(a.status.success() && b.status.success());
    let (a, b) = (
        String::from_utf8(a.stdout).unwrap(),
        String::from_utf8(b.stdout).unwrap(),
    );
    assert_eq!(a.trim().len(), 64);
    assert!(SecretKey::parse(&a).is_ok());
    assert_ne!(a, b);
}

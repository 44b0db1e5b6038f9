//! Installed applications: tokens rotate atomically, secrets are encrypted at rest and deleted on uninstall.
//! Runs on SQLite (a temp file) and PostgreSQL (a random schema, dropped afterwards).

use b24sense_store::{
    DueRefresh, Error, Installation, PortalSettings, PortalStatus, SecretKey, Store,
};
use chrono::{Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, Executor};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

enum Db {
    Sqlite(tempfile::TempDir),
    Pg(String),
}

impl Db {
    async fn open(&self) -> Store {
        match self {
            Db::Sqlite(dir) => Store::open(&format!("sqlite:{}/l.db", dir.path().display()))
                .await
                .expect("open sqlite"),
            Db::Pg(schema) => Store::open_postgres_schema(PG_URL, schema)
                .await
                .expect("open postgres"),
        }
    }

    /// Every text value in the two tables, read raw (what a stolen database shows).
    async fn raw_dump(&self) -> String {
        let sql = "SELECT member_id || '|' || COALESCE(application_token,'') || '|' || COALESCE(access_token,'') \
                   || '|' || COALESCE(refresh_token,'') AS v FROM portals \
                   UNION ALL SELECT COALESCE(api_key,'') || '|' || CAST(settings AS TEXT) FROM portal_settings";
        let rows: Vec<String> = match self {
            Db::Sqlite(dir) => {
                let url = format!("sqlite:{}/l.db", dir.path().display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
            }
            Db::Pg(schema) => {
                let mut c = sqlx::PgConnection::connect(PG_URL).await.unwrap();
                c.execute(format!("SET search_path TO {schema}").as_str())
                    .await
                    .unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
            }
        };
        rows.join("\n")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Pg(schema) = self {
            let schema = schema.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(PG_URL).await {
                        let _ = c
                            .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

fn install(member: &str, access: &str, refresh: &str) -> Installation {
    Installation {
        member_id: member.into(),
        domain: "acme.bitrix24.ru".into(),
        client_endpoint: "https://acme.bitrix24.ru/rest/".into(),
        server_endpoint: "https://oauth.bitrix.info/rest/".into(),
        application_token: SecretString::from("app-token-SECRET"),
        access_token: SecretString::from(access.to_string()),
        refresh_token: SecretString::from(refresh.to_string()),
        expires_at: Utc::now() + Duration::hours(1),
        lang: Some("ru".into()),
    }
}

async fn lifecycle(db: Db) {
    let key = SecretKey::generate();
    let store = db.open().await;
    store
        .install_portal(&key, &install("m1", "access-A-SECRET", "refresh-A-SECRET"))
        .await
        .unwrap();
    let p = store.portal(&key, "m1").await.unwrap().expect("portal");
    assert_eq!(p.status, PortalStatus::Installed);
    assert_eq!(p.domain, "acme.bitrix24.ru");
    assert_eq!(
        p.application_token.unwrap().expose_secret(),
        "app-token-SECRET"
    );
    assert_eq!(store.installed_portals(&key).await.unwrap().len(), 1);

    // Rotation is compare-and-swap on the version.
    let t = store.portal_tokens(&key, "m1").await.unwrap().unwrap();
    assert_eq!(t.refresh_token.expose_secret(), "refresh-A-SECRET");
    let exp = Utc::now() + Duration::hours(1);
    let a2 = SecretString::from("access-B-SECRET");
    let r2 = SecretString::from("refresh-B-SECRET");
    assert!(store
        .rotate_tokens(&key, "m1", t.version, &a2, &r2, exp)
        .await
        .unwrap());
    // A second refresh that read the old version loses.
    let a3 = SecretString::from("access-C");
    assert!(!store
        .rotate_tokens(&key, "m1", t.version, &a3, &a3, exp)
        .await
        .unwrap());
    let t2 = store.portal_tokens(&key, "m1").await.unwrap().unwrap();
    assert_eq!(t2.access_token.expose_secret(), "access-B-SECRET");
    assert_eq!(t2.version, t.version + 1);

    // Keep-alive: the pair was rotated just now, so it is due only for a zero age; a refusal is recorded for
    // the current version only and cleared by the next rotation.
    let p = store.portal(&key, "m1").await.unwrap().unwrap();
    assert!(p.tokens_rotated_at.is_some() && p.refresh_refused.is_none());
    assert!(store
        .portals_due_for_refresh(std::time::Duration::from_secs(3600))
        .await
        .unwrap()
        .is_empty());
    let due = store
        .portals_due_for_refresh(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        due,
        vec![DueRefresh {
            member_id: "m1".into(),
            token_version: t2.version
        }]
    );
    assert!(!store
        .set_refresh_refused("m1", t.version, "invalid_grant")
        .await
        .unwrap());
    assert!(store
        .set_refresh_refused("m1", t2.version, "invalid_grant")
        .await
        .unwrap());
    let p = store.portal(&key, "m1").await.unwrap().unwrap();
    assert_eq!(p.refresh_refused.as_deref(), Some("invalid_grant"));
    let rotated = p.tokens_rotated_at.unwrap();
    let a4 = SecretString::from("access-B2-SECRET");
    assert!(store
        .rotate_tokens(&key, "m1", t2.version, &a4, &r2, exp)
        .await
        .unwrap());
    let p = store.portal(&key, "m1").await.unwrap().unwrap();
    assert!(p.refresh_refused.is_none());
    assert!(p.tokens_rotated_at.unwrap() >= rotated);
    let t2 = store.portal_tokens(&key, "m1").await.unwrap().unwrap();

    // Settings, with the API key kept when not given again.
    let mut s = PortalSettings {
        connection_id: "conn-1".into(),
        users: vec![5, 7],
        min_duration: 30,
        since: Some("2026-03-01".into()),
        ..PortalSettings::default()
    };
    store
        .save_settings(&key, "m1", &s, Some(&SecretString::from("apikey-SECRET")))
        .await
        .unwrap();
    s.min_duration = 45;
    store.save_settings(&key, "m1", &s, None).await.unwrap();
    let got = store.settings(&key, "m1").await.unwrap().unwrap();
    assert_eq!(got.settings, s);
    assert_eq!(got.api_key.unwrap().expose_secret(), "apikey-SECRET");
    assert!(store.settings(&key, "nobody").await.unwrap().is_none());
    assert!(matches!(
        store.save_settings(&key, "nobody", &s, None).await,
        Err(Error::Data(_))
    ));

    // Nothing secret is readable in the database.
    let dump = db.raw_dump().await;
    assert!(!dump.contains("SECRET"), "{dump}");
    assert!(dump.contains("conn-1"));

    // Another key cannot read the secrets, and says which setting is wrong.
    let other = SecretKey::generate();
    match store.portal_tokens(&other, "m1").await {
        Err(e @ Error::SecretKey(_)) => assert!(e.to_string().contains("B24SENSE_SECRET_KEY")),
        other => panic!("expected a key error, got {other:?}"),
    }

    // Token rotations keep the installation's generation; install, uninstall and reinstall move it on.
    let generation = |p: Option<b24sense_store::Portal>| p.unwrap().generation;
    assert_eq!(generation(store.portal(&key, "m1").await.unwrap()), 1);

    // Uninstall deletes the secrets and stops token use; a rotation racing it loses.
    assert!(store.uninstall_portal("m1").await.unwrap());
    assert_eq!(generation(store.portal(&key, "m1").await.unwrap()), 2);
    assert!(store.portal_tokens(&key, "m1").await.unwrap().is_none());
    assert!(!store
        .rotate_tokens(&key, "m1", t2.version, &a3, &a3, exp)
        .await
        .unwrap());
    let p = store.portal(&key, "m1").await.unwrap().unwrap();
    assert_eq!(p.status, PortalStatus::Uninstalled);
    assert!(p.application_token.is_none());
    let got = store.settings(&key, "m1").await.unwrap().unwrap();
    assert!(got.api_key.is_none());
    assert_eq!(got.settings.min_duration, 45);
    assert!(store.installed_portals(&key).await.unwrap().is_empty());

    // Re-install brings new tokens and a new version.
    store
        .install_portal(&key, &install("m1", "access-D", "refresh-D"))
        .await
        .unwrap();
    let t3 = store.portal_tokens(&key, "m1").await.unwrap().unwrap();
    assert_eq!(t3.access_token.expose_secret(), "access-D");
    assert!(t3.version > t2.version);
    assert_eq!(generation(store.portal(&key, "m1").await.unwrap()), 3);
    store.close().await;
}

#[tokio::test]
async fn lifecycle_sqlite() {
    lifecycle(Db::Sqlite(tempfile::tempdir().unwrap())).await;
}

#[tokio::test]
async fn lifecycle_postgres() {
    lifecycle(Db::Pg(format!("t_{}", uuid::Uuid::new_v4().simple()))).await;
}

#[test]
fn secret_key_parsing_and_errors() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let k = SecretKey::parse(hex).unwrap();
    let sealed = k.seal("hello", "m/col");
    assert_eq!(k.open(&sealed, "m/col").unwrap().expose_secret(), "hello");
    // Bound to its place: another row/column does not decrypt.
    assert!(k.open(&sealed, "m/other").is_err());
    let b64 = "ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8=";
    let k2 = SecretKey::parse(b64).unwrap();
    assert_eq!(k2.open(&sealed, "m/col").unwrap().expose_secret(), "hello");
    assert!(SecretKey::parse("abcd").is_err());
    assert!(!format!("{k:?}").contains("0011"));
}

#[test]
fn secret_key_from_env_names_the_variable() {
    // The only test touching these variables in this binary.
    std::env::remove_var(SecretKey::ENV);
    std::env::remove_var(SecretKey::FILE_ENV);
    let e = SecretKey::from_env().unwrap_err().to_string();
    assert!(e.contains("B24SENSE_SECRET_KEY is not set"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "short\n").unwrap();
    std::env::set_var(SecretKey::FILE_ENV, &path);
    let e = SecretKey::from_env().unwrap_err().to_string();
    assert!(e.contains("B24SENSE_SECRET_KEY_FILE"), "{e}");
    std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
    assert!(SecretKey::from_env().is_ok());
    std::env::set_var(SecretKey::ENV, "zz");
    let e = SecretKey::from_env().unwrap_err().to_string();
    assert!(e.starts_with("secret key: B24SENSE_SECRET_KEY:"), "{e}");
    std::env::remove_var(SecretKey::ENV);
    std::env::remove_var(SecretKey::FILE_ENV);
}

#[test]
fn derived_keys_are_stable_and_distinct() {
    let k = SecretKey::parse(&"cd".repeat(32)).unwrap();
    let same = SecretKey::parse(&"cd".repeat(32)).unwrap();
    assert_eq!(k.derive("session"), same.derive("session"));
    assert_ne!(k.derive("session"), k.derive("csrf"));
    assert_ne!(k.derive("session"), SecretKey::generate().derive("session"));
}

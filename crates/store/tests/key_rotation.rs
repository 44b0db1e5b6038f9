//! Key rotation: every secret ends under the new key, a rotation stopped part-way leaves everything readable
//! with the key ring {new, old} and a second run finishes it, a secret changed during the rotation is never
//! overwritten, and ciphertexts from before key ids still open and get rotated.
//! Runs on SQLite (a temp file) and PostgreSQL (a random schema, dropped afterwards).

use b24sense_store::{Error, Installation, PortalSettings, Reseal, SecretKey, Store};
use chrono::{Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, Executor};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh database: a SQLite file in `dir`, or a PostgreSQL schema.
enum Db {
    Sqlite(tempfile::TempDir),
    Pg(String),
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    fn pg() -> Db {
        Db::Pg(format!("t_{}", uuid::Uuid::new_v4().simple()))
    }

    async fn open(&self) -> Store {
        match self {
            Db::Sqlite(dir) => Store::open(&format!("sqlite:{}/l.db", dir.path().display()))
                .await
                .unwrap(),
            Db::Pg(schema) => Store::open_postgres_schema(PG_URL, schema).await.unwrap(),
        }
    }

    /// Runs one statement outside the store (what a copy of an older database holds).
    async fn raw(&self, sql: &str) {
        match self {
            Db::Sqlite(dir) => {
                let url = format!("sqlite:{}/l.db", dir.path().display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                c.execute(sql).await.unwrap();
            }
            Db::Pg(schema) => {
                let mut c = sqlx::PgConnection::connect(PG_URL).await.unwrap();
                c.execute(format!("SET search_path TO {schema}").as_str())
                    .await
                    .unwrap();
                c.execute(sql).await.unwrap();
            }
        }
    }

    async fn drop_schema(&self) {
        if let Db::Pg(schema) = self {
            let mut c = sqlx::PgConnection::connect(PG_URL).await.unwrap();
            c.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                .await
                .unwrap();
        }
    }
}

fn install(member: &str) -> Installation {
    Installation {
        member_id: member.into(),
        domain: format!("{member}.bitrix24.ru"),
        client_endpoint: format!("https://{member}.bitrix24.ru/rest/"),
        server_endpoint: "https://oauth.bitrix.info/rest/".into(),
        application_token: SecretString::from(format!("app-{member}")),
        access_token: SecretString::from(format!("access-{member}")),
        refresh_token: SecretString::from(format!("refresh-{member}")),
        expires_at: Utc::now() + Duration::hours(1),
        lang: None,
    }
}

const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];

/// Three portals with tokens and an application token, two with an API key: 11 secrets under `key`.
async fn seed(store: &Store, key: &SecretKey) {
    for m in MEMBERS {
        store.install_portal(key, &install(m)).await.unwrap();
    }
    for m in &MEMBERS[..2] {
        let api_key = SecretString::from(format!("apikey-{m}"));
        store
            .save_settings(key, m, &PortalSettings::default(), Some(&api_key))
            .await
            .unwrap();
    }
}

/// Every seeded secret, decrypted with `key`, as `member:column=value` lines.
async fn read_all(store: &Store, key: &SecretKey) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for m in MEMBERS {
        let p = store.portal(key, m).await?.unwrap();
        let t = store.portal_tokens(key, m).await?.unwrap();
        out.push(format!(
            "{m}:app={}",
            p.application_token.unwrap().expose_secret()
        ));
        out.push(format!("{m}:access={}", t.access_token.expose_secret()));
        out.push(format!("{m}:refresh={}", t.refresh_token.expose_secret()));
        if let Some(s) = store.settings(key, m).await? {
            out.push(format!("{m}:api={}", s.api_key.unwrap().expose_secret()));
        }
    }
    Ok(out)
}

fn expected() -> Vec<String> {
    let mut out = Vec::new();
    for m in MEMBERS {
        out.push(format!("{m}:app=app-{m}"));
        out.push(format!("{m}:access=access-{m}"));
        out.push(format!("{m}:refresh=refresh-{m}"));
        if m != "m3" {
            out.push(format!("{m}:api=apikey-{m}"));
        }
    }
    out
}

async fn rotate_interrupted_then_finished(db: Db) {
    let store = db.open().await;
    let old = SecretKey::generate();
    let new = SecretKey::generate();
    seed(&store, &old).await;
    // m3's access token as stored before ciphertexts named their key (the same body without the prefix).
    db.raw(
        "UPDATE portals SET access_token = substr(access_token, 13) WHERE member_id = 'm3' \
         AND access_token LIKE 'v2.%'",
    )
    .await;
    assert_eq!(read_all(&store, &old).await.unwrap(), expected());
    let versions = token_versions(&store, &old).await;
    let ring = new.clone().with_previous(&old);
    let census = store.secret_census(&ring).await.unwrap();
    assert_eq!((census.current, census.other), (0, 11));

    // Stopped after 4 secrets (as a crash would stop it): all still readable with the ring, neither key alone.
    let first = store.rotate_secrets(&ring, Some(4)).await.unwrap();
    assert_eq!(first.resealed, 4);
    assert_eq!((first.census.current, first.census.other), (4, 7));
    assert_eq!(read_all(&store, &ring).await.unwrap(), expected());
    assert!(read_all(&store, &new).await.is_err());
    assert!(read_all(&store, &old).await.is_err());

    // A second run finishes it; then the new key alone reads everything, the old one nothing.
    let second = store.rotate_secrets(&ring, None).await.unwrap();
    assert_eq!(second.resealed, 7);
    assert!(second.unreadable.is_empty());
    assert_eq!((second.census.current, second.census.other), (11, 0));
    assert_eq!(read_all(&store, &new).await.unwrap(), expected());
    assert!(store.unreadable_secrets(&new).await.unwrap().is_empty());
    for m in MEMBERS {
        assert!(store.portal_tokens(&old, m).await.is_err());
    }
    // Token versions did not move: a refresh in flight still wins its compare-and-swap.
    assert_eq!(token_versions(&store, &new).await, versions);

    // Nothing left to do.
    let third = store.rotate_secrets(&new, None).await.unwrap();
    assert_eq!((third.resealed, third.census.current), (0, 11));
    store.close().await;
    db.drop_schema().await;
}

async fn token_versions(store: &Store, key: &SecretKey) -> Vec<i64> {
    let mut out = Vec::new();
    for m in MEMBERS {
        out.push(store.portal_tokens(key, m).await.unwrap().unwrap().version);
    }
    out
}

#[tokio::test]
async fn rotation_interrupted_then_finished_sqlite() {
    rotate_interrupted_then_finished(Db::sqlite()).await;
}

#[tokio::test]
async fn rotation_interrupted_then_finished_postgres() {
    rotate_interrupted_then_finished(Db::pg()).await;
}

async fn concurrent_change_is_kept(db: Db) {
    let store = db.open().await;
    let old = SecretKey::generate();
    let new = SecretKey::generate();
    seed(&store, &old).await;
    let ring = new.clone().with_previous(&old);
    let stale = store.stored_secrets(&ring, None, 100, true).await.unwrap();
    assert_eq!(stale.len(), 11);

    // While the rotation holds what it read, the server (with the same ring) refreshes m1's tokens and the
    // administrator saves m2's API key.
    let version = store
        .portal_tokens(&ring, "m1")
        .await
        .unwrap()
        .unwrap()
        .version;
    let fresh = SecretString::from("access-fresh".to_string());
    let fresh_refresh = SecretString::from("refresh-fresh".to_string());
    let exp = Utc::now() + Duration::hours(1);
    assert!(store
        .rotate_tokens(&ring, "m1", version, &fresh, &fresh_refresh, exp)
        .await
        .unwrap());
    let api_key = SecretString::from("apikey-fresh".to_string());
    store
        .save_settings(&ring, "m2", &PortalSettings::default(), Some(&api_key))
        .await
        .unwrap();

    let mut kept = Vec::new();
    for s in &stale {
        match store.reseal_secret(&ring, s).await.unwrap() {
            Reseal::Done => {}
            Reseal::ChangedMeanwhile => kept.push(format!("{}/{}", s.member_id, s.column)),
            Reseal::Unreadable => panic!("{s:?} unreadable"),
        }
    }
    kept.sort();
    assert_eq!(kept, ["m1/access_token", "m1/refresh_token", "m2/api_key"]);
    let t = store.portal_tokens(&new, "m1").await.unwrap().unwrap();
    assert_eq!(t.access_token.expose_secret(), "access-fresh");
    assert_eq!(t.refresh_token.expose_secret(), "refresh-fresh");
    let s = store.settings(&new, "m2").await.unwrap().unwrap();
    assert_eq!(s.api_key.unwrap().expose_secret(), "apikey-fresh");
    let census = store.secret_census(&new).await.unwrap();
    assert_eq!((census.current, census.other), (11, 0));
    store.close().await;
    db.drop_schema().await;
}

#[tokio::test]
async fn rotation_keeps_a_concurrent_change_sqlite() {
    concurrent_change_is_kept(Db::sqlite()).await;
}

#[tokio::test]
async fn rotation_keeps_a_concurrent_change_postgres() {
    concurrent_change_is_kept(Db::pg()).await;
}

#[tokio::test]
async fn a_secret_neither_key_opens_is_reported_and_left() {
    let db = Db::sqlite();
    let store = db.open().await;
    let stranger = SecretKey::generate();
    let old = SecretKey::generate();
    let new = SecretKey::generate();
    store
        .install_portal(&stranger, &install("m9"))
        .await
        .unwrap();
    seed(&store, &old).await;
    let ring = new.clone().with_previous(&old);
    let report = store.rotate_secrets(&ring, None).await.unwrap();
    assert_eq!(report.resealed, 11);
    let mut unreadable = report.unreadable.clone();
    unreadable.sort();
    assert_eq!(
        unreadable,
        [
            "m9/access_token",
            "m9/application_token",
            "m9/refresh_token"
        ]
    );
    assert_eq!((report.census.current, report.census.other), (11, 3));
    assert_eq!(store.unreadable_secrets(&ring).await.unwrap().len(), 3);
    // The error names the key the secret was saved with and the variables to check, never a key.
    let e = store
        .portal_tokens(&ring, "m9")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(stranger.id()) && e.contains("B24SENSE_OLD_SECRET_KEY"),
        "{e}"
    );
    assert_eq!(read_all(&store, &new).await.unwrap(), expected());
    store.close().await;
}

#[test]
fn ciphertexts_name_their_key_and_the_ring_opens_both() {
    let old = SecretKey::parse(&"01".repeat(32)).unwrap();
    let new = SecretKey::parse(&"02".repeat(32)).unwrap();
    let by_old = old.seal("hello", "m/col");
    assert!(by_old.starts_with(&format!("v2.{}.", old.id())), "{by_old}");
    assert_ne!(old.id(), new.id());
    let ring = new.clone().with_previous(&old);
    assert!(ring.has_previous());
    assert_eq!(
        ring.open(&by_old, "m/col").unwrap().expose_secret(),
        "hello"
    );
    // The ring writes with the new key only.
    let by_ring = ring.seal("hi", "m/col");
    assert!(by_ring.starts_with(&format!("v2.{}.", new.id())));
    assert!(old.open(&by_ring, "m/col").is_err());
    assert!(new.open(&by_old, "m/col").is_err());
    // Sessions are signed with subkeys of the new key.
    assert_eq!(ring.derive("web-session"), new.derive("web-session"));
    // A key given as its own previous is no rotation.
    assert!(!new.clone().with_previous(&new).has_previous());
}

//! What the application keeps for chats: the chat connection in a portal's settings (settings saved before chats
//! existed still read), and the chat ledger read page by page for the CSV report. Runs on SQLite (a temp file) and
//! PostgreSQL (a random schema in postgres://postgres@127.0.0.1:5432/test, or `B24SENSE_TEST_POSTGRES_URL`;
//! dropped afterwards).

use std::time::Duration;

use b24sense_core::LedgerState;
use b24sense_store::{ChatVerdict, Installation, ListedSession, PortalSettings, SecretKey, Store};
use chrono::Utc;
use secrecy::SecretString;
use sqlx::{Connection, Executor};

fn pg_url() -> String {
    std::env::var("B24SENSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

enum Db {
    Sqlite(tempfile::TempDir),
    Pg(String),
}

impl Db {
    fn sqlite_url(dir: &tempfile::TempDir) -> String {
        format!("sqlite:{}", dir.path().join("l.db").display())
    }

    async fn open(&self) -> Store {
        match self {
            Db::Sqlite(dir) => Store::open(&Db::sqlite_url(dir)).await.unwrap(),
            Db::Pg(schema) => Store::open_postgres_schema(&pg_url(), schema)
                .await
                .unwrap(),
        }
    }

    /// A statement on a connection of its own (what an older version of the application left in the table).
    async fn raw(&self, sql: &str) {
        match self {
            Db::Sqlite(dir) => {
                let mut c = sqlx::SqliteConnection::connect(&Db::sqlite_url(dir))
                    .await
                    .unwrap();
                c.execute(sql).await.unwrap();
            }
            Db::Pg(schema) => {
                let mut c = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
                c.execute(format!("SET search_path TO {schema}").as_str())
                    .await
                    .unwrap();
                c.execute(sql).await.unwrap();
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Pg(schema) = self {
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&pg_url()).await {
                        let _ = c.execute(sql.as_str()).await;
                    }
                });
            })
            .join();
        }
    }
}

fn pg() -> Db {
    Db::Pg(format!("t_{}", uuid::Uuid::new_v4().simple()))
}

fn sqlite() -> Db {
    Db::Sqlite(tempfile::tempdir().unwrap())
}

fn installation(member: &str) -> Installation {
    Installation {
        member_id: member.into(),
        domain: "acme.bitrix24.ru".into(),
        client_endpoint: "https://acme.bitrix24.ru/rest/".into(),
        server_endpoint: "https://oauth.bitrix.info/rest/".into(),
        application_token: SecretString::from("app-token"),
        access_token: SecretString::from("access"),
        refresh_token: SecretString::from("refresh"),
        expires_at: Utc::now() + chrono::Duration::hours(1),
        lang: Some("ru".into()),
    }
}

async fn chat_connection_in_settings(db: Db) {
    let store = db.open().await;
    let key = SecretKey::generate();
    store
        .install_portal(&key, &installation("m1"))
        .await
        .unwrap();
    let mut s = PortalSettings {
        connection_id: "conn-audio".into(),
        chat_connection_id: Some("conn-chat".into()),
        ..PortalSettings::default()
    };
    store
        .save_settings(&key, "m1", &s, Some(&SecretString::from("key")))
        .await
        .unwrap();
    let got = store.settings(&key, "m1").await.unwrap().unwrap();
    assert_eq!(got.settings, s);
    s.chat_connection_id = None;
    store.save_settings(&key, "m1", &s, None).await.unwrap();
    let got = store.settings(&key, "m1").await.unwrap().unwrap();
    assert_eq!(got.settings.chat_connection_id, None);

    // Settings an older version saved (no chat key at all) read as "no chats", the rest intact.
    db.raw(
        "UPDATE portal_settings SET settings = '{\"connection_id\":\"conn-old\",\"language\":\"kk-KZ\",\
         \"users\":[5],\"min_duration\":30,\"direction\":[],\"mono_policy\":\"skip\",\"sync_enabled\":true}' \
         WHERE member_id = 'm1'",
    )
    .await;
    let old = store.settings(&key, "m1").await.unwrap().unwrap().settings;
    assert_eq!(old.chat_connection_id, None);
    assert_eq!(
        (
            old.connection_id.as_str(),
            old.language.as_str(),
            old.users,
            old.min_duration
        ),
        ("conn-old", "kk-KZ", vec![5], 30)
    );
    assert!(old.sync_enabled);
    store.close().await;
}

async fn chat_ledger_pages(db: Db) {
    let store = db.open().await;
    let listed: Vec<ListedSession> = (1..=23)
        .map(|i| ListedSession {
            session_id: i * 10,
            activity_id: 1000 + i,
        })
        .collect();
    store.register_chats("p1", &listed).await.unwrap();
    store
        .register_chats(
            "p2",
            &[ListedSession {
                session_id: 15,
                activity_id: 7,
            }],
        )
        .await
        .unwrap();
    // Rows in every state: one uploaded, one skipped, one waiting (pending with a reason), the rest pending.
    let lease = Duration::from_secs(30);
    for (id, verdict) in [
        (
            20,
            ChatVerdict::Uploaded {
                reuploaded_after_crash: false,
            },
        ),
        (
            30,
            ChatVerdict::Skipped {
                reason: "no_client_message",
            },
        ),
        (
            40,
            ChatVerdict::Waiting {
                reason: "session_open",
            },
        ),
    ] {
        let claim = store
            .claim_chat("p1", id, "w", lease)
            .await
            .unwrap()
            .unwrap();
        assert!(store.finish_chat(&claim, verdict).await.unwrap());
    }

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.chat_ledger_page("p1", after, 5).await.unwrap();
        assert!(page.len() <= 5);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.session_id);
        seen.extend(page);
    }
    let ids: Vec<u64> = seen.iter().map(|e| e.session_id).collect();
    assert_eq!(
        ids,
        (1..=23).map(|i| i * 10).collect::<Vec<u64>>(),
        "every row of the portal once, ascending"
    );
    assert!(seen.iter().all(|e| e.portal == "p1"));
    let state = |id: u64| {
        let e = seen.iter().find(|e| e.session_id == id).unwrap();
        (e.state, e.reason.clone())
    };
    assert_eq!(state(20), (LedgerState::Uploaded, None));
    assert_eq!(
        state(30),
        (LedgerState::Skipped, Some("no_client_message".into()))
    );
    assert_eq!(
        state(40),
        (LedgerState::Pending, Some("session_open".into()))
    );
    assert_eq!(state(50), (LedgerState::Pending, None));
    let p2 = store.chat_ledger_page("p2", None, 100).await.unwrap();
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0].activity_id, 7);
    store.close().await;
}

#[tokio::test]
async fn chat_connection_in_settings_sqlite() {
    chat_connection_in_settings(sqlite()).await;
}

#[tokio::test]
async fn chat_connection_in_settings_postgres() {
    chat_connection_in_settings(pg()).await;
}

#[tokio::test]
async fn chat_ledger_pages_sqlite() {
    chat_ledger_pages(sqlite()).await;
}

#[tokio::test]
async fn chat_ledger_pages_postgres() {
    chat_ledger_pages(pg()).await;
}

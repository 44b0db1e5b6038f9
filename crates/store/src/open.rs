//! Opening a store: URL parsing, connection setup per backend, migrations, and turning failures into
//! clear errors (unreachable, not a database, created by a newer b24sense).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor};

use crate::error::{is_not_a_database, Error};
use crate::{Db, LedgerFaults, Place, SqliteDb, Store};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// How long to wait for the server (PostgreSQL) or a free connection.
    pub connect_timeout: Duration,
    /// PostgreSQL pool size.
    pub max_connections: u32,
    /// PostgreSQL: how long a statement waits for a connection (a free one, or a new one while the server refuses
    /// them) before it fails; short, so that an unreachable server is reported within seconds (the engine holds
    /// its outcomes and retries, `docs/ledger-faults.md`).
    pub acquire_timeout: Duration,
    /// How long a SQLite statement waits for the write lock before failing with "database is locked".
    pub busy_timeout: Duration,
    /// PostgreSQL: how long a statement waits for its answer (its connection included) before it is given up as
    /// "unreachable" and its connection dropped. Without it, a statement sent into a network that drops packets,
    /// or to a server that failed over, would wait for TCP to give up (many minutes); with it, such a fault is
    /// met like a server that is down (the engine holds its outcomes and retries; a statement that took effect
    /// though its answer was lost is safe to retry).
    pub answer_timeout: Duration,
    /// PostgreSQL only: keep the tables in this schema (created if missing).
    pub schema: Option<String>,
    /// A fault-injecting layer for tests (see [`LedgerFaults`]); `None` in production.
    pub faults: Option<LedgerFaults>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            connect_timeout: Duration::from_secs(10),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
            // Short enough that a write lock held elsewhere is reported within seconds (the engine then holds its
            // outcomes and retries); long enough for any ordinary write of another process to finish.
            busy_timeout: Duration::from_secs(3),
            // Far above any ledger statement's time on a live server, yet short enough for the user to be told
            // within 5 s when the server stops answering.
            answer_timeout: Duration::from_secs(4),
            schema: None,
            faults: None,
        }
    }
}

impl Store {
    /// Opens `sqlite:PATH` / `sqlite://PATH` (the file and its parent directories are created; WAL, busy
    /// timeout, foreign keys) or `postgres://…`, and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store, Error> {
        Store::open_with(url, OpenOptions::default()).await
    }

    /// PostgreSQL with every table inside `schema` (created if missing; every connection's `search_path`
    /// is set to it). For tests' isolation and for operators who share one database.
    pub async fn open_postgres_schema(url: &str, schema: &str) -> Result<Store, Error> {
        let options = OpenOptions {
            schema: Some(schema.to_owned()),
            ..OpenOptions::default()
        };
        Store::open_with(url, options).await
    }

    pub async fn open_with(url: &str, options: OpenOptions) -> Result<Store, Error> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            if options.schema.is_some() {
                return Err(Error::InvalidUrl(
                    "a schema applies to PostgreSQL only".into(),
                ));
            }
            let path = rest.strip_prefix("//").unwrap_or(rest);
            open_sqlite(path, &options).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            open_postgres(url, &options).await
        } else {
            let scheme = url.split_once(':').map_or("(none)", |(s, _)| s);
            Err(Error::InvalidUrl(format!(
                "unsupported scheme {scheme:?}; expected sqlite:PATH or postgres://USER@HOST/DB"
            )))
        }
    }
}

async fn open_sqlite(path: &str, options: &OpenOptions) -> Result<Store, Error> {
    if path.is_empty() {
        return Err(Error::InvalidUrl("sqlite: URL without a file path".into()));
    }
    if path.contains('?') {
        return Err(Error::InvalidUrl(
            "sqlite: URL parameters are not supported; give a plain file path".into(),
        ));
    }
    let memory = path == ":memory:";
    let file = PathBuf::from(path);
    let mut connect = SqliteConnectOptions::new()
        .busy_timeout(options.busy_timeout)
        .foreign_keys(true);
    if memory {
        // Each connection would get its own empty in-memory database: use exactly one.
        connect = connect.in_memory(true);
    } else {
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                Error::Unreachable(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        connect = connect
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses no committed transaction on an application crash.
            .synchronous(SqliteSynchronous::Normal);
    }
    // One connection (see `SqliteDb`): SQLite lets one writer in at a time and nearly every ledger statement
    // writes; with several connections they would queue on the file lock through SQLite's busy handler (sleeps
    // and retries that cost CPU), each with its own page cache. An in-memory database exists once per connection.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.connect_timeout)
        .connect_with(connect)
        .await
        .map_err(|e| sqlite_open_error(e, &file))?;
    if let Err(e) = SQLITE_MIGRATIONS.run(&pool).await {
        pool.close().await;
        return Err(match e {
            MigrateError::Execute(ref inner) | MigrateError::ExecuteMigration(ref inner, _)
                if is_not_a_database(inner) =>
            {
                corrupt(&file, inner)
            }
            other => migrate_error(other, &SQLITE_MIGRATIONS),
        });
    }
    tracing::debug!(path = %file.display(), "opened SQLite ledger");
    let connection = pool
        .acquire()
        .await
        .map_err(|e| sqlite_open_error(e, &file))?;
    let place = Place {
        shown: format!("sqlite:{}", file.display()),
        recovery: (!memory).then(|| crate::recovery::beside(&file)),
        key: String::new(),
        faults: options.faults.clone(),
        answer_timeout: options.answer_timeout,
    };
    Ok(Store::with_db(
        Db::Sqlite(Arc::new(SqliteDb {
            pool,
            connection: tokio::sync::Mutex::new(Some(connection)),
        })),
        place,
    ))
}

fn sqlite_open_error(e: sqlx::Error, file: &Path) -> Error {
    if is_not_a_database(&e) {
        return corrupt(file, &e);
    }
    match e {
        sqlx::Error::Database(db) => Error::Unreachable(format!(
            "cannot open SQLite database {}: {}",
            file.display(),
            db.message()
        )),
        sqlx::Error::Io(io) => Error::Unreachable(format!(
            "cannot open SQLite database {}: {io}",
            file.display()
        )),
        other => Error::Database(other),
    }
}

fn corrupt(file: &Path, e: &sqlx::Error) -> Error {
    let reason = match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    };
    Error::Corrupt {
        path: file.to_path_buf(),
        reason,
    }
}

async fn open_postgres(url: &str, options: &OpenOptions) -> Result<Store, Error> {
    let shown = redact(url);
    let connect = PgConnectOptions::from_str(url)
        .map_err(|e| Error::InvalidUrl(format!("{shown}: {}", redact_text(&e.to_string(), url))))?;
    if let Some(schema) = &options.schema {
        validate_schema(schema)?;
    }
    // One direct connection first: a refused or silent server fails fast and clearly here, instead of
    // inside the pool's retry loop.
    let mut conn = match tokio::time::timeout(options.connect_timeout, connect.connect()).await {
        Err(_) => {
            return Err(Error::Unreachable(format!(
                "{shown}: no answer within {:?}",
                options.connect_timeout
            )))
        }
        Ok(Err(e)) => return Err(pg_connect_error(e, &shown)),
        Ok(Ok(conn)) => conn,
    };
    if let Some(schema) = &options.schema {
        let created = conn
            .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
            .await;
        if let Err(e) = created {
            // Another process creating the same schema at the same moment is fine.
            let race =
                matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"));
            if !race {
                return Err(Error::Database(e));
            }
        }
    }
    let _ = conn.close().await;
    // `SET` on every new connection rather than a startup option: connection poolers (PgBouncer) reject
    // unknown startup parameters.
    let set_path = options
        .schema
        .as_ref()
        .map(|s| format!("SET search_path TO \"{s}\""));
    let pool = PgPoolOptions::new()
        .after_connect(move |conn, _meta| {
            let set_path = set_path.clone();
            Box::pin(async move {
                if let Some(sql) = set_path {
                    conn.execute(sql.as_str()).await?;
                }
                Ok(())
            })
        })
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(|e| pg_connect_error(e, &shown))?;
    if let Err(e) = POSTGRES_MIGRATIONS.run(&pool).await {
        pool.close().await;
        return Err(migrate_error(e, &POSTGRES_MIGRATIONS));
    }
    tracing::debug!(url = %shown, schema = ?options.schema, "opened PostgreSQL ledger");
    let shown = match &options.schema {
        Some(schema) => format!("{shown} (schema {schema})"),
        None => shown,
    };
    let place = Place {
        key: shown.clone(),
        shown,
        recovery: None,
        faults: options.faults.clone(),
        answer_timeout: options.answer_timeout,
    };
    Ok(Store::with_db(Db::Postgres(pool), place))
}

fn pg_connect_error(e: sqlx::Error, shown: &str) -> Error {
    match e {
        sqlx::Error::Io(io) => Error::Unreachable(format!("{shown}: {io}")),
        sqlx::Error::PoolTimedOut => Error::Unreachable(format!("{shown}: timed out connecting")),
        sqlx::Error::Tls(tls) => Error::Unreachable(format!("{shown}: TLS: {tls}")),
        other => Error::Database(other),
    }
}

fn migrate_error(e: MigrateError, migrator: &Migrator) -> Error {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match e {
        MigrateError::VersionMissing(found) if found > known => Error::TooNew { found, known },
        other => Error::Migration(other),
    }
}

/// Unquoted PostgreSQL identifiers fold to lower case; accepting only `[a-z_][a-z0-9_]*` keeps the quoted
/// `CREATE SCHEMA` and the `search_path` option in agreement and free of injection.
fn validate_schema(schema: &str) -> Result<(), Error> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= 63 {
        Ok(())
    } else {
        Err(Error::InvalidUrl(format!(
            "schema name {schema:?} must be 1–63 characters of a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Removes the password (if any) of `url` from `text`.
fn redact_text(text: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(pw) if !pw.is_empty() => text.replace(&pw, "REDACTED"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:s3cret@h:5432/db"),
            "postgres://u:REDACTED@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_text("bad s3cret here", "postgres://u:s3cret@h/db"),
            "bad REDACTED here"
        );
    }

    #[test]
    fn schema_names() {
        assert!(validate_schema("t_0123abc").is_ok());
        assert!(validate_schema("_x").is_ok());
        for bad in ["", "9a", "A", "a-b", "a\"; drop", &"a".repeat(64)] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }
}

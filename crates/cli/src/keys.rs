//! `b24sense keys`: the key that encrypts stored secrets (OAuth tokens, application tokens, SpeechSense API
//! keys) — `generate` a new one, `rotate` every secret to it, `check` that every secret opens. Keys come only
//! from the environment (or files it names), never from the command line, and are never printed except by
//! `generate`.

use b24sense_store::SecretKey;
use clap::{Args, Subcommand};
use secrecy::ExposeSecret;

use crate::lang::pick;
use crate::{exit, open_store, Failure};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random key (64 hex digits) for B24SENSE_SECRET_KEY.
    Generate,
    /// Re-encrypt every stored secret under B24SENSE_SECRET_KEY (the new key); secrets still under the previous
    /// key are read with B24SENSE_OLD_SECRET_KEY. Safe to stop at any point and run again.
    Rotate(KeysArgs),
    /// Check that every stored secret decrypts with B24SENSE_SECRET_KEY (and B24SENSE_OLD_SECRET_KEY, if set).
    Check(KeysArgs),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Database: sqlite:PATH or postgres://… (as for serve).
    #[arg(long, env = "B24SENSE_DATABASE_URL", value_parser = crate::args::parse_database)]
    pub database: Option<String>,
}

pub async fn run(command: KeysCommand) -> Result<u8, Failure> {
    match command {
        KeysCommand::Generate => {
            out!("{}", SecretKey::generate_hex().expose_secret());
            err!(
                "{}",
                pick(
                    format!(
                        "сохраните ключ там, откуда читается {} (или {}); не в базе данных и не в репозитории",
                        SecretKey::ENV,
                        SecretKey::FILE_ENV
                    ),
                    format!(
                        "store it where {} (or {}) is read from; never in the database or a repository",
                        SecretKey::ENV,
                        SecretKey::FILE_ENV
                    )
                )
            );
            Ok(exit::OK)
        }
        KeysCommand::Rotate(a) => rotate(a).await,
        KeysCommand::Check(a) => check(a).await,
    }
}

fn store_error(e: b24sense_store::Error) -> Failure {
    Failure::new(
        exit::UNAVAILABLE,
        format!("{}: {e}", pick("база данных", "database")),
    )
}

async fn rotate(a: KeysArgs) -> Result<u8, Failure> {
    let key = SecretKey::from_env().map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let store = open_store(&a.database).await?;
    let report = store
        .rotate_secrets(&key, None)
        .await
        .map_err(store_error)?;
    store.close().await;
    let (id, resealed, current, changed) = (
        key.id(),
        report.resealed,
        report.census.current,
        report.changed_meanwhile,
    );
    out!(
        "{}",
        pick(
            format!("ключ {id}: перешифровано секретов сейчас — {resealed}, всего под ним — {current}, изменено за это время — {changed} (оставлены как записаны)"),
            format!("key {id}: {resealed} secrets re-encrypted now, {current} under it in all, {changed} changed meanwhile (kept as written)"),
        )
    );
    let other = report.census.other;
    out!(
        "{}",
        pick(
            format!("осталось под другим ключом: {other}"),
            format!("left under another key: {other}")
        )
    );
    if other == 0 {
        let old = SecretKey::OLD_ENV;
        out!(
            "{}",
            pick(
                format!(
                    "готово: все секреты под ключом {id}; перезапустите `b24sense serve` без {old}"
                ),
                format!(
                    "done: every secret is under key {id}; restart `b24sense serve` without {old}"
                ),
            )
        );
        return Ok(exit::OK);
    }
    unreadable_hint(&key, &report.unreadable);
    if report.unreadable.is_empty() {
        out!(
            "{}",
            pick(
                "часть секретов изменилась во время перешифровки: запустите `b24sense keys rotate` ещё раз",
                "some secrets changed while rotating: run `b24sense keys rotate` again",
            )
        );
    }
    Ok(exit::SOME_FAILED)
}

async fn check(a: KeysArgs) -> Result<u8, Failure> {
    let key = SecretKey::from_env().map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let store = open_store(&a.database).await?;
    let census = store.secret_census(&key).await.map_err(store_error)?;
    let unreadable = store.unreadable_secrets(&key).await.map_err(store_error)?;
    store.close().await;
    let (all, current, id, other, bad) = (
        census.current + census.other,
        census.current,
        key.id(),
        census.other,
        unreadable.len(),
    );
    out!(
        "{}",
        pick(
            format!("секретов: {all}; под ключом {id} — {current}, под другим ключом — {other}, не расшифровываются — {bad}"),
            format!("{all} secrets: {current} under key {id}, {other} under another key, {bad} cannot be decrypted"),
        )
    );
    if unreadable.is_empty() {
        if other > 0 {
            out!(
                "{}",
                pick(
                    format!("запустите `b24sense keys rotate`, чтобы перевести их под ключ {id}"),
                    format!("run `b24sense keys rotate` to move them under key {id}"),
                )
            );
        }
        return Ok(exit::OK);
    }
    unreadable_hint(&key, &unreadable);
    Ok(exit::SOME_FAILED)
}

/// Names the secrets neither key opens (portal and column, never a value) and what to do about them.
fn unreadable_hint(key: &SecretKey, unreadable: &[String]) {
    if unreadable.is_empty() {
        return;
    }
    let (n, list) = (unreadable.len(), unreadable.join(", "));
    out!(
        "{}",
        pick(
            format!("секретов, которые не открывает ни один ключ: {n}: {list}"),
            format!("{n} secrets open with neither key: {list}"),
        )
    );
    if key.has_previous() {
        out!(
            "{}",
            pick(
                "они сохранены третьим ключом; переустановите приложение на этих порталах (и сохраните API-ключ \
                 заново) — это их заменит",
                "they were saved with a third key; reinstalling the application on those portals (and saving the \
                 API key again) replaces them",
            )
        );
    } else {
        let (old, old_file) = (SecretKey::OLD_ENV, SecretKey::OLD_FILE_ENV);
        out!(
            "{}",
            pick(
                format!("укажите в {old} (или {old_file}) прежний ключ и запустите снова"),
                format!("set {old} (or {old_file}) to the previous key and run again"),
            )
        );
    }
}

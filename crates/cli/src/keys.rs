//! `b24sense keys`: the key that encrypts stored secrets (OAuth tokens, application tokens, SpeechSense API
//! keys) — `generate` a new one, `rotate` every secret to it, `check` that every secret opens. Keys come only
//! from the environment (or files it names), never from the command line, and are never printed except by
//! `generate`.

use b24sense_store::SecretKey;
use clap::{Args, Subcommand};
use secrecy::ExposeSecret;

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
            println!("{}", SecretKey::generate_hex().expose_secret());
            eprintln!(
                "store it where {} (or {}) is read from; never in the database or a repository",
                SecretKey::ENV,
                SecretKey::FILE_ENV
            );
            Ok(exit::OK)
        }
        KeysCommand::Rotate(a) => rotate(a).await,
        KeysCommand::Check(a) => check(a).await,
    }
}

fn store_error(e: b24sense_store::Error) -> Failure {
    Failure::new(exit::UNAVAILABLE, format!("database: {e}"))
}

async fn rotate(a: KeysArgs) -> Result<u8, Failure> {
    let key = SecretKey::from_env().map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let store = open_store(&a.database).await?;
    let report = store
        .rotate_secrets(&key, None)
        .await
        .map_err(store_error)?;
    store.close().await;
    println!(
        "key {}: {} secrets re-encrypted now, {} under it in all, {} changed meanwhile (kept as written)",
        key.id(),
        report.resealed,
        report.census.current,
        report.changed_meanwhile
    );
    println!("left under another key: {}", report.census.other);
    if report.census.other == 0 {
        println!(
            "done: every secret is under key {}; restart `b24sense serve` without {}",
            key.id(),
            SecretKey::OLD_ENV
        );
        return Ok(exit::OK);
    }
    unreadable_hint(&key, &report.unreadable);
    if report.unreadable.is_empty() {
        println!("some secrets changed while rotating: run `b24sense keys rotate` again");
    }
    Ok(exit::SOME_FAILED)
}

async fn check(a: KeysArgs) -> Result<u8, Failure> {
    let key = SecretKey::from_env().map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let store = open_store(&a.database).await?;
    let census = store.secret_census(&key).await.map_err(store_error)?;
    let unreadable = store.unreadable_secrets(&key).await.map_err(store_error)?;
    store.close().await;
    println!(
        "{} secrets: {} under key {}, {} under another key, {} cannot be decrypted",
        census.current + census.other,
        census.current,
        key.id(),
        census.other,
        unreadable.len()
    );
    if unreadable.is_empty() {
        if census.other > 0 {
            println!(
                "run `b24sense keys rotate` to move them under key {}",
                key.id()
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
    println!(
        "{} secrets open with neither key: {}",
        unreadable.len(),
        unreadable.join(", ")
    );
    if key.has_previous() {
        println!(
            "they were saved with a third key; reinstalling the application on those portals (and saving the \
             API key again) replaces them"
        );
    } else {
        println!(
            "set {} (or {}) to the previous key and run again",
            SecretKey::OLD_ENV,
            SecretKey::OLD_FILE_ENV
        );
    }
}

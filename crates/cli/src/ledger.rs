//! Operator commands on the ledger (`status` and `retry`), the ledger's recovery journal for a PostgreSQL ledger
//! (in the data directory), and the progress lines about the ledger's health (`docs/ledger-faults.md`).

use std::path::PathBuf;

use b24sense_core::LedgerState;
use b24sense_engine::{LedgerFault, LedgerHealth};
use b24sense_store::Store;
use serde_json::json;

use crate::args::{RetryArgs, StatusArgs};
use crate::lang::pick;
use crate::{exit, open_store, Failure};

/// The data directory's `b24sense` folder: where a PostgreSQL ledger's recovery journal is kept (a SQLite
/// ledger's is beside its file).
pub fn recovery_dir() -> Option<PathBuf> {
    dirs::data_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/share")))
        .map(|d| d.join("b24sense"))
}

/// The store with its recovery journal's place set (PostgreSQL: the data directory).
pub fn with_recovery(store: Store) -> Store {
    match recovery_dir() {
        Some(dir) => store.with_recovery_dir(&dir),
        None => store,
    }
}

/// One line per change of the ledger's health, printed whatever the output mode (it says what to do).
pub fn print_health(h: &LedgerHealth, bar: Option<&indicatif::ProgressBar>) {
    let line = health_line(h);
    match bar {
        Some(bar) => bar.println(line),
        None => err!("{line}"),
    }
}

fn health_line(h: &LedgerHealth) -> String {
    match h {
        LedgerHealth::Down {
            fault,
            cause,
            held,
            give_up_secs,
        } => {
            let (what_ru, what_en) = fault_words(*fault);
            pick(
                format!(
                    "реестр не принимает записи ({what_ru}: {cause}). Новые звонки не берутся; результаты ({held}) \
                     сохранены в памяти и в журнале восстановления, запись повторяется. Что сделать: {}. Выгрузка \
                     продолжится сама; через {give_up_secs} с без реестра она завершится, сохранив результаты.",
                    advice(*fault, true)
                ),
                format!(
                    "the ledger refuses writes ({what_en}: {cause}). No new calls are taken; outcomes ({held}) are \
                     held in memory and in the recovery journal and written again and again. What to do: {}. The \
                     export goes on by itself; after {give_up_secs} s without the ledger it ends, keeping them.",
                    advice(*fault, false)
                ),
            )
        }
        LedgerHealth::Up { down_secs, held } => pick(
            format!("реестр снова принимает записи (после {down_secs} с); выгрузка продолжается, результатов к записи: {held}"),
            format!("the ledger takes writes again (after {down_secs} s); the export goes on, outcomes to write: {held}"),
        ),
        LedgerHealth::Journaled { path: Some(path), held } => pick(
            format!(
                "{held} результатов, которые реестр не принял, сохранены в журнале восстановления {}; следующий \
                 запуск загрузит их первым делом, и эти звонки не будут выгружены повторно",
                path.display()
            ),
            format!(
                "{held} outcomes the ledger did not take are kept in the recovery journal {}; the next run imports \
                 them first and uploads none of those calls again",
                path.display()
            ),
        ),
        LedgerHealth::Journaled { path: None, held } => pick(
            format!("{held} результатов не удалось записать ни в реестр, ни в журнал: они выше, строками JSON — сохраните их"),
            format!("{held} outcomes could be written neither to the ledger nor to the journal: they are above, as JSON lines — keep them"),
        ),
        LedgerHealth::Imported { path, entries, applied } => pick(
            format!(
                "загружен журнал восстановления {} ({entries} записей, применено {applied})",
                path.display()
            ),
            format!(
                "imported the recovery journal {} ({entries} entries, {applied} applied)",
                path.display()
            ),
        ),
    }
}

fn fault_words(fault: LedgerFault) -> (&'static str, &'static str) {
    match fault {
        LedgerFault::DiskFull => ("диск заполнен", "disk full"),
        LedgerFault::ReadOnly => ("только для чтения", "read-only"),
        LedgerFault::Locked => ("заблокирован другим процессом", "locked by another process"),
        LedgerFault::Unreachable => ("база недоступна", "database unreachable"),
        LedgerFault::Other => ("ошибка базы", "database error"),
    }
}

fn advice(fault: LedgerFault, ru: bool) -> &'static str {
    match (fault, ru) {
        (LedgerFault::DiskFull, true) => "освободите место на диске реестра",
        (LedgerFault::DiskFull, false) => "free space on the ledger's disk",
        (LedgerFault::ReadOnly, true) => {
            "верните права на запись файлу реестра, его папке и файловой системе"
        }
        (LedgerFault::ReadOnly, false) => {
            "make the ledger file, its folder and filesystem writable again"
        }
        (LedgerFault::Locked, true) => {
            "закройте программу, держащую блокировку записи (другой b24sense, sqlite3)"
        }
        (LedgerFault::Locked, false) => {
            "close the program holding the write lock (another b24sense, sqlite3)"
        }
        (LedgerFault::Unreachable, true) => {
            "проверьте, что сервер базы работает и доступен по сети"
        }
        (LedgerFault::Unreachable, false) => {
            "check that the database server runs and can be reached"
        }
        (LedgerFault::Other, true) => "посмотрите журнал самой базы",
        (LedgerFault::Other, false) => "see the database's own log",
    }
}

fn db_error(e: b24sense_store::Error) -> Failure {
    Failure::new(exit::UNAVAILABLE, format!("ledger: {e}"))
}

pub async fn status(a: StatusArgs) -> Result<u8, Failure> {
    let store = with_recovery(open_store(&a.database).await?);
    let portal = a.portal.as_deref();
    let recovery = store.pending_recovery();
    let counts = store.counts(portal).await.map_err(db_error)?;
    let chat_counts = store.chat_counts(portal).await.map_err(db_error)?;
    let last = store.last_run(portal).await.map_err(db_error)?;
    let in_doubt = match portal {
        Some(p) => store
            .entries(p, &[LedgerState::Uploading], 100)
            .await
            .map_err(db_error)?,
        None => Vec::new(),
    };
    let journal = match &recovery {
        Ok(Some((path, entries))) => json!({
            "path": path, "entries": entries.len(),
            "talk_ids": entries.iter().filter(|e| e.talk_id().is_some()).count(),
        }),
        Ok(None) => serde_json::Value::Null,
        Err(e) => json!({ "error": e.to_string() }),
    };
    if a.json {
        let v = json!({
            "ledger": store.describe(),
            "recovery_journal": journal,
            "counts": counts.iter().map(|c| json!({"state": c.state.as_str(), "reason": c.reason, "count": c.count})).collect::<Vec<_>>(),
            "chat_counts": chat_counts.iter().map(|c| json!({"state": c.state.as_str(), "reason": c.reason, "count": c.count})).collect::<Vec<_>>(),
            "last_run": last.as_ref().map(|r| json!({
                "id": r.id, "portal": r.portal, "started_at": r.started_at, "finished_at": r.finished_at,
                "status": r.status, "summary": r.summary,
            })),
            "in_doubt": in_doubt.iter().map(|e| json!({"call_id": e.call_id, "lease_owner": e.lease_owner, "lease_until": e.lease_until})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(exit::OK);
    }
    println!(
        "{}",
        pick(
            format!("реестр: {}", store.describe()),
            format!("ledger: {}", store.describe())
        )
    );
    match &recovery {
        Ok(Some((path, entries))) => {
            let talks = entries.iter().filter(|e| e.talk_id().is_some()).count();
            println!(
                "{}",
                pick(
                    format!(
                        "ждёт журнал восстановления {} — {} результатов, из них {talks} с ID разговора; следующий \
                         `b24sense export` загрузит их в реестр первым делом",
                        path.display(),
                        entries.len()
                    ),
                    format!(
                        "recovery journal pending: {} — {} outcomes, {talks} with a talk ID; the next \
                         `b24sense export` imports them into the ledger first",
                        path.display(),
                        entries.len()
                    ),
                )
            );
        }
        Ok(None) => {}
        Err(e) => println!(
            "{}",
            pick(
                format!("журнал восстановления: {e}"),
                format!("recovery journal: {e}")
            )
        ),
    }
    if counts.is_empty() && chat_counts.is_empty() {
        println!(
            "the ledger is empty{}",
            portal.map(|p| format!(" for {p}")).unwrap_or_default()
        );
    } else if !counts.is_empty() {
        println!("{:<10} {:<24} {:>8}", "state", "reason", "calls");
        for c in &counts {
            println!(
                "{:<10} {:<24} {:>8}",
                c.state.as_str(),
                c.reason.as_deref().unwrap_or("-"),
                c.count
            );
        }
    }
    if !chat_counts.is_empty() {
        println!("{:<10} {:<24} {:>8}", "state", "reason", "chats");
        for c in &chat_counts {
            println!(
                "{:<10} {:<24} {:>8}",
                c.state.as_str(),
                c.reason.as_deref().unwrap_or("-"),
                c.count
            );
        }
    }
    match &last {
        Some(r) => println!(
            "last run: #{} for {} started {} — {}",
            r.id,
            r.portal,
            r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            r.status
                .as_deref()
                .unwrap_or("still running or interrupted")
        ),
        None => println!("no runs recorded"),
    }
    if !in_doubt.is_empty() {
        println!(
            "in doubt (upload started, outcome unknown): {}",
            in_doubt.len()
        );
        for e in &in_doubt {
            println!("  call {}", e.call_id);
        }
    }
    Ok(exit::OK)
}

pub async fn retry(a: RetryArgs) -> Result<u8, Failure> {
    debug_assert!(a.failed);
    let store = open_store(&a.database).await?;
    let n = store
        .reset_failed(a.portal.as_deref(), a.reason.as_deref())
        .await
        .map_err(db_error)?;
    println!(
        "{n} failed calls{} made pending again; the next `b24sense export` retries them",
        a.reason
            .as_deref()
            .map(|r| format!(" (reason {r})"))
            .unwrap_or_default()
    );
    Ok(exit::OK)
}

/// `--ledger-give-up`: a number with a unit (`90s`, `10m`, `1h`) or plain seconds.
pub fn parse_give_up(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 10m or 1h"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?}: use s, m or h (e.g. 10m)")),
    };
    if !(0.1..=7.0 * 86_400.0).contains(&secs) {
        return Err("must be between 0.1 s and 7 days".into());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn give_up_durations() {
        assert_eq!(parse_give_up("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_give_up("90").unwrap().as_secs(), 90);
        assert_eq!(parse_give_up("1.5s").unwrap().as_millis(), 1500);
        assert_eq!(parse_give_up("2h").unwrap().as_secs(), 7200);
        assert!(parse_give_up("10 parsecs").is_err());
        assert!(parse_give_up("0").is_err());
        assert!(parse_give_up("").is_err());
    }
}

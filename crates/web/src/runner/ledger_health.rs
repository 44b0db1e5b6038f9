//! The ledger's health as the settings page shows it (`docs/ledger-faults.md`): while the ledger refuses writes,
//! the run's notice is a banner saying what is wrong and what to do, and the run goes on by itself once the
//! ledger takes writes again (the notice clears); outcomes left in the recovery journal are said too.

use b24sense_engine::{LedgerFault, LedgerHealth};

use super::progress::{Progress, RunState};
use crate::i18n::Lang;

/// Applies one ledger-health event to the run's progress (the notice) and its error list.
pub(super) fn apply(st: &RunState, p: &mut Progress, h: &LedgerHealth, lang: Lang) {
    let ru = lang == Lang::Ru;
    match h {
        LedgerHealth::Down { fault, cause, .. } => {
            tracing::error!(%cause, ?fault, "the ledger refuses writes");
            let text = banner(*fault, ru);
            st.push_error(text.clone());
            p.notice = Some(text);
        }
        LedgerHealth::Up { .. } => {
            p.notice = Some(if ru {
                "Реестр снова принимает записи; выгрузка продолжается.".into()
            } else {
                "The ledger takes writes again; the export goes on.".into()
            });
        }
        LedgerHealth::Journaled { held, .. } => {
            p.notice = Some(if ru {
                format!("Реестр не принял {held} результатов: они сохранены в журнале восстановления и будут записаны при следующем запуске; повторной выгрузки не будет.")
            } else {
                format!("The ledger did not take {held} outcomes: they are kept in the recovery journal and written at the next start; nothing is uploaded twice.")
            });
        }
        LedgerHealth::Imported { .. } => {}
    }
}

fn banner(fault: LedgerFault, ru: bool) -> String {
    let (what, todo) = match (fault, ru) {
        (LedgerFault::DiskFull, true) => ("диск реестра заполнен", "освободите место на диске"),
        (LedgerFault::DiskFull, false) => ("the ledger's disk is full", "free space on the disk"),
        (LedgerFault::ReadOnly, true) => (
            "реестр доступен только для чтения",
            "верните права на запись",
        ),
        (LedgerFault::ReadOnly, false) => ("the ledger is read-only", "make it writable again"),
        (LedgerFault::Locked, true) => (
            "реестр заблокирован другим процессом",
            "закройте этот процесс",
        ),
        (LedgerFault::Locked, false) => ("another process locks the ledger", "close that process"),
        (LedgerFault::Unreachable, true) => {
            ("база реестра недоступна", "проверьте сервер базы и сеть")
        }
        (LedgerFault::Unreachable, false) => (
            "the ledger's database is unreachable",
            "check the database server and the network",
        ),
        (LedgerFault::Other, true) => ("ошибка базы реестра", "посмотрите журнал базы"),
        (LedgerFault::Other, false) => ("the ledger's database fails", "see the database's log"),
    };
    if ru {
        format!("Реестр не принимает записи: {what}. Что сделать: {todo}. Новые звонки не берутся, полученные результаты сохранены; выгрузка продолжится сама.")
    } else {
        format!("The ledger refuses writes: {what}. What to do: {todo}. No new calls are taken and the answers received are kept; the export goes on by itself.")
    }
}

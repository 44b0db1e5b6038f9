//! The ledger's health as the settings page shows it (`docs/ledger-faults.md`): while the ledger refuses writes,
//! the run's notice is a banner saying what is wrong and what to do, and the run goes on by itself once the
//! ledger takes writes again (the notice clears); outcomes left in the recovery journal are said too. The metrics
//! count the outages and the runs down now ([`LedgerDown`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use b24sense_engine::{LedgerFault, LedgerHealth};

use super::progress::{Progress, RunState};
use crate::i18n::Lang;
use crate::metrics::Metrics;

/// One run's part in `b24sense_ledger_down`: counted while its ledger refuses writes, and no longer once the run
/// is gone (dropped with its progress callback), however it ended.
pub(super) struct LedgerDown {
    metrics: Arc<Metrics>,
    down: AtomicBool,
}

impl LedgerDown {
    pub(super) fn new(metrics: Arc<Metrics>) -> LedgerDown {
        LedgerDown {
            metrics,
            down: AtomicBool::new(false),
        }
    }

    fn set(&self, down: bool) {
        if self.down.swap(down, Ordering::Relaxed) == down {
            return;
        }
        if down {
            self.metrics.ledger_outages.inc();
            self.metrics.ledger_down.inc();
        } else {
            self.metrics.ledger_down.dec();
        }
    }
}

impl Drop for LedgerDown {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Applies one ledger-health event to the run's progress (the notice), its error list and the metrics.
pub(super) fn apply(
    st: &RunState,
    p: &mut Progress,
    gauge: &LedgerDown,
    h: &LedgerHealth,
    lang: Lang,
) {
    let ru = lang == Lang::Ru;
    gauge.set(matches!(h, LedgerHealth::Down { .. }));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn down(fault: LedgerFault) -> LedgerHealth {
        LedgerHealth::Down {
            fault,
            cause: "database or disk is full".into(),
            held: 0,
            give_up_secs: 600,
        }
    }

    fn gauge(m: &Metrics) -> i64 {
        m.ledger_down.get()
    }

    #[test]
    fn a_fault_shows_a_banner_and_the_metrics_count_it_until_the_ledger_is_back() {
        let m = Arc::new(Metrics::default());
        let st = RunState::new(Progress::default());
        let run = LedgerDown::new(m.clone());
        let mut p = st.lock().clone();
        apply(&st, &mut p, &run, &down(LedgerFault::DiskFull), Lang::Ru);
        let notice = p.notice.clone().unwrap();
        assert!(
            notice.contains("диск реестра заполнен") && notice.contains("освободите место"),
            "{notice}"
        );
        assert_eq!((m.ledger_outages.get(), gauge(&m)), (1, 1));
        // Another fault kind while down is the same outage.
        apply(&st, &mut p, &run, &down(LedgerFault::Locked), Lang::En);
        assert!(p
            .notice
            .as_deref()
            .unwrap()
            .contains("another process locks the ledger"));
        assert_eq!((m.ledger_outages.get(), gauge(&m)), (1, 1));
        apply(
            &st,
            &mut p,
            &run,
            &LedgerHealth::Up {
                down_secs: 2,
                held: 0,
            },
            Lang::En,
        );
        assert!(p.notice.as_deref().unwrap().contains("takes writes again"));
        assert_eq!((m.ledger_outages.get(), gauge(&m)), (1, 0));
        // A second outage; the run then ends while down: it no longer counts as down.
        apply(&st, &mut p, &run, &down(LedgerFault::Unreachable), Lang::En);
        assert_eq!((m.ledger_outages.get(), gauge(&m)), (2, 1));
        drop(run);
        assert_eq!((m.ledger_outages.get(), gauge(&m)), (2, 0));
        assert!(m.render().contains("b24sense_ledger_outages_total 2"));
    }
}

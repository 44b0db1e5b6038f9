//! Open Lines chats in `export` (and the demo): the chat run's settings from the flags, its summary (text and
//! JSON), its share of the exit code. The run itself goes beside the call run, on the same Bitrix24 client, in
//! [`crate::export`].

use std::time::Duration;

use b24sense_core::chat::{ChatFilter, ChatOptions};
use b24sense_engine::chats::{ChatExportConfig, ChatSummary};
use serde_json::{json, Value};

use crate::args::{FilterArgs, RunArgs};
use crate::lang::pick;
use crate::output::reason_text;
use crate::{exit, Failure};

/// The flag a filter field comes from.
pub fn flag_of_field(field: &'static str) -> &'static str {
    match field {
        "since" => "--since",
        "until" => "--until",
        "users" | "operators" => "--users",
        "min_duration" => "--min-duration",
        "max_duration" => "--max-duration",
        "min_client_messages" => "--min-client-messages",
        other => other,
    }
}

/// The chat run's settings: the same period and operators as the calls', `--min-client-messages`, `--language`,
/// `--dry-run`, `--concurrency`/`--max-concurrency` (as for calls) and the hidden `--lease-seconds`.
pub fn config(
    portal: &str,
    connection_id: &str,
    f: &FilterArgs,
    run: &RunArgs,
) -> Result<ChatExportConfig, Failure> {
    let filter = ChatFilter {
        since: f.since.and_then(|b| b.0),
        until: f.until.and_then(|b| b.0),
        operators: f.users.0.clone(),
        ..ChatFilter::default()
    };
    filter.validate().map_err(|e| {
        Failure::new(
            exit::USAGE,
            format!("{}: {}", flag_of_field(e.field), e.message),
        )
    })?;
    let mut c = ChatExportConfig::new(portal, connection_id);
    c.filter = filter;
    c.options = ChatOptions {
        language: run.language.clone(),
        min_client_messages: f.min_client_messages.max(1),
        ..ChatOptions::default()
    };
    c.dry_run = run.dry_run;
    c.concurrency = run.concurrency.setting();
    if let Some(give_up) = run.ledger_give_up {
        c.ledger_give_up = give_up;
    }
    if let Some(secs) = run.lease_seconds {
        c.lease = Duration::from_secs_f64(secs);
        c.portal_lease = Duration::from_secs_f64(secs);
    }
    Ok(c)
}

/// The chat run's part of `--json` (key `chats`). In a dry run `would_upload` and `would_upload_messages` say what
/// would be sent, and `messages` is 0.
pub fn json(s: &ChatSummary, connection_id: &str, dry_run: bool) -> Value {
    let (messages, would_messages) = match dry_run {
        true => (0, s.messages),
        false => (s.messages, 0),
    };
    json!({
        "connection_id": connection_id,
        "listed": s.listed,
        "uploaded": s.uploaded,
        "talks": s.talks,
        "messages": messages,
        "already_uploaded": s.already_uploaded,
        "reuploaded_after_crash": s.reuploaded_after_crash,
        "found_by_search": s.found_by_search,
        "skipped": s.skipped,
        "waiting": s.waiting,
        "failed": s.failed,
        "unsettled": s.unsettled,
        "bad_rows": s.bad_rows.len(),
        "would_upload": s.would_upload,
        "would_upload_messages": would_messages,
        "wall_time_secs": s.wall_time.as_secs_f64(),
        "stopped": s.stopped,
        "fatal": s.fatal,
    })
}

/// Why the chat run stopped on a fatal error, if it did.
pub fn fatal_reason(s: &ChatSummary) -> Option<&str> {
    s.fatal.then(|| s.stopped.as_deref().unwrap_or("stopped"))
}

/// Whether the chat run left sessions failed or held by another process.
pub fn some_failed(s: &ChatSummary) -> bool {
    s.failed_total() > 0 || s.unsettled > 0
}

/// The error that ends a run whose chat export stopped on a fatal error.
pub fn stopped(code: u8, reason: &str) -> Failure {
    let message = match code {
        exit::REFUSED => pick(
            "выгрузка чатов остановлена: Bitrix24 или SpeechSense отказали в доступе. Проверьте вебхук (права crm, \
             imopenlines), API-ключ и --chat-connection-id (b24sense check --chat-connection-id ID проверит \
             подключение); уже выгруженные сессии повторно не отправляются.",
            "the chat export stopped: Bitrix24 or SpeechSense refused access. Check the webhook (scopes crm, \
             imopenlines), the API key and --chat-connection-id (b24sense check --chat-connection-id ID tests the \
             connection); sessions already uploaded are never sent again.",
        ),
        _ => pick(
            "выгрузка чатов остановлена: Bitrix24, SpeechSense или журнал перестали отвечать. Запустите выгрузку \
             снова, когда они будут доступны; уже выгруженные сессии повторно не отправляются.",
            "the chat export stopped: Bitrix24, SpeechSense or the ledger stopped answering. Run the export again \
             when they are back; sessions already uploaded are never sent again.",
        ),
    };
    Failure::new(code, message).with_detail(reason)
}

/// One line of counts: `label`, the number, the reason in the run's language.
fn by_reason(label: &str, counts: &std::collections::BTreeMap<String, u64>) {
    for (reason, n) in counts {
        out!("{label}{n:>7}  {}", reason_text(reason));
    }
}

/// The chat run's section of the summary on stdout (after the calls' when they ran: `calls_ran`, which also
/// printed the REST counters and the shutdown note). `fatal`: the chat run stopped on an error, printed after.
pub fn print(s: &ChatSummary, stats: &Value, dry_run: bool, fatal: bool, calls_ran: bool) {
    let secs = s.wall_time.as_secs_f64();
    let listed = s.listed;
    let header = match (dry_run, fatal) {
        (true, true) => pick(
            format!("пробный прогон чатов остановлен через {secs:.1} с; найдено сессий: {listed}"),
            format!("chats dry run stopped after {secs:.1} s; {listed} sessions found"),
        ),
        (true, false) => pick(
            format!("пробный прогон, чаты (Открытые линии): найдено сессий {listed} за {secs:.1} с"),
            format!("dry run, chats (Open Lines): {listed} sessions found in {secs:.1} s"),
        ),
        (false, true) => pick(
            format!("выгрузка чатов остановлена через {secs:.1} с; найдено сессий: {listed}"),
            format!("chat export stopped after {secs:.1} s: {listed} sessions listed"),
        ),
        (false, false) => pick(
            format!("чаты (Открытые линии): выгрузка завершена за {secs:.1} с; найдено сессий: {listed}"),
            format!("chats (Open Lines) export finished in {secs:.1} s: {listed} sessions listed"),
        ),
    };
    out!("{header}");
    if dry_run {
        out!(
            "{}",
            pick(
                format!(
                    "  сессий к выгрузке   {:>7}  (сообщений: {})",
                    s.would_upload, s.messages
                ),
                format!(
                    "  would upload      {:>7} sessions, {} messages",
                    s.would_upload, s.messages
                ),
            )
        );
    } else {
        out!(
            "{}",
            pick(
                format!(
                    "  выгружено сессий    {:>7}  (разговоров: {}, сообщений: {})",
                    s.uploaded, s.talks, s.messages
                ),
                format!(
                    "  uploaded          {:>7} sessions  ({} talks, {} messages)",
                    s.uploaded, s.talks, s.messages
                ),
            )
        );
    }
    out!(
        "{}{:>7}",
        pick("  уже выгружено       ", "  already uploaded  "),
        s.already_uploaded
    );
    if s.reuploaded_after_crash > 0 {
        out!(
            "{}",
            pick(
                format!(
                    "  выгружено повторно после сбоя {:>3}  (возможны дубликаты, см. отчёт)",
                    s.reuploaded_after_crash
                ),
                format!(
                    "  re-uploaded after crash {:>3}  (possible duplicates, see the report)",
                    s.reuploaded_after_crash
                ),
            )
        );
    }
    by_reason(
        pick("  ждут закрытия       ", "  waiting           "),
        &s.waiting,
    );
    by_reason(
        pick("  пропущено           ", "  skipped           "),
        &s.skipped,
    );
    by_reason(
        pick("  не выгружено        ", "  failed            "),
        &s.failed,
    );
    if s.unsettled > 0 {
        out!(
            "{}{:>7}",
            pick("  заняты другим процессом", "  held by another process"),
            s.unsettled
        );
    }
    if !s.bad_rows.is_empty() {
        out!(
            "{}{:>7}",
            pick("  нечитаемых строк    ", "  unreadable rows   "),
            s.bad_rows.len()
        );
    }
    if !calls_ran {
        let rest = &stats["rest"];
        let (req, limited) = (&rest["requests"], &rest["rate_limited"]);
        out!(
            "{}",
            pick(
                format!("  REST Bitrix24       запросов {req} · отказов по лимиту {limited}"),
                format!("  Bitrix24 REST     {req} requests · {limited} rate-limit rejections"),
            )
        );
    }
    if let Some(talks) = stats
        .get("emulators")
        .and_then(|e| e.get("chat_talks_stored"))
    {
        out!(
            "{}",
            pick(
                format!("  SpeechSense         сохранено разговоров-чатов: {talks}"),
                format!("  SpeechSense       {talks} chat talks stored"),
            )
        );
    }
    if dry_run && !calls_ran {
        out!("{}", pick("ничего не выгружено", "nothing was uploaded"));
    }
    if fatal || dry_run {
        return;
    }
    if !calls_ran && s.stopped.as_deref() == Some("shutdown requested") {
        out!(
            "{}",
            pick(
                "  остановлено по сигналу (Ctrl-C): начатые выгрузки доделаны",
                "  stopped early: shutdown requested",
            )
        );
    }
    let failed = s.failed_total();
    if failed > 0 {
        out!(
            "{}",
            pick(
                format!(
                    "не выгружено сессий чатов: {failed}; запустите выгрузку снова, чтобы повторить их (выгруженные \
                     сессии второй раз не отправляются)"
                ),
                format!(
                    "{failed} chat sessions failed; run again to retry them (uploaded sessions are never sent twice)"
                ),
            )
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_counts_go_to_would_upload() {
        let s = ChatSummary {
            would_upload: 3,
            messages: 40,
            ..ChatSummary::default()
        };
        let v = json(&s, "c", true);
        assert_eq!(
            (
                v["would_upload"].as_u64(),
                v["would_upload_messages"].as_u64()
            ),
            (Some(3), Some(40))
        );
        assert_eq!(v["messages"], 0);
        let v = json(&s, "c", false);
        assert_eq!(v["messages"], 40);
    }

    #[test]
    fn fields_name_their_flags() {
        assert_eq!(flag_of_field("until"), "--until");
        assert_eq!(flag_of_field("users"), "--users");
    }
}

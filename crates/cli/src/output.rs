//! Printing a run's summary (text or JSON) and writing the per-call report file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use b24sense_bitrix24::ClientStats;
use b24sense_engine::chats::{ChatOutcome, ChatReport};
use b24sense_engine::{CallReport, DownloadAccounting, Summary};
use serde_json::{json, Value};

use crate::lang::pick;
use crate::{exit, Failure};

/// The summary as JSON, with the REST client's counters.
pub fn stats_json(summary: &Summary, rest: &ClientStats) -> Value {
    let mut v = serde_json::to_value(summary).unwrap_or_else(|_| json!({}));
    v["rest"] = rest_json(rest)["rest"].take();
    v
}

/// Only the REST client's counters (a run without calls), under `rest`.
pub fn rest_json(rest: &ClientStats) -> Value {
    json!({ "rest": {
        "requests": rest.requests,
        "rate_limited": rest.rate_limited,
        "retries": rest.retries,
        "downloads": rest.downloads,
        "download_bytes": rest.download_bytes,
        "portal_downloads_counted": rest.portal_downloads,
        "portal_downloads_uncounted": rest.uncounted_portal_downloads,
    }})
}

/// The `--report` file: one JSON object per call (`"kind": "call"`, call ID, outcome, reason, talk ID, seconds,
/// bytes) and, with chats, per Open Lines session (`"kind": "chat"`, session ID, outcome, reason, talk IDs,
/// messages), written as each settles, so a run of any size keeps none of them in memory and a killed run leaves
/// the lines so far.
pub struct ReportFile {
    state: Mutex<ReportState>,
}

struct ReportState {
    out: BufWriter<File>,
    /// The first write error; later lines are not attempted.
    error: Option<std::io::Error>,
}

impl ReportFile {
    /// Creates (truncates) the file up front, so a path that cannot be written is refused before the export starts.
    pub fn create(path: &Path) -> std::io::Result<ReportFile> {
        Ok(ReportFile {
            state: Mutex::new(ReportState {
                out: BufWriter::new(File::create(path)?),
                error: None,
            }),
        })
    }

    pub fn write(&self, report: &CallReport) {
        // The call's object with `"kind":"call"` put first (no intermediate `Value`).
        let line = serde_json::to_vec(report).map(|object| {
            let mut line = Vec::with_capacity(object.len() + 16);
            line.extend_from_slice(b"{\"kind\":\"call\",");
            line.extend_from_slice(object.get(1..).unwrap_or_default());
            line
        });
        self.write_line(line);
    }

    /// One chat session's line.
    pub fn write_chat(&self, report: &ChatReport) {
        self.write_line(serde_json::to_vec(&chat_line(report)));
    }

    fn write_line(&self, line: serde_json::Result<Vec<u8>>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.error.is_some() {
            return;
        }
        let written = line
            .map_err(std::io::Error::from)
            .and_then(|l| s.out.write_all(&l))
            .and_then(|()| s.out.write_all(b"\n"));
        if let Err(e) = written {
            s.error = Some(e);
        }
    }

    /// Flushes; the first error of the whole run, if any.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        s.out.flush()
    }
}

/// A chat session's report line: `kind`, `session_id`, `outcome` (`uploaded`, `already_uploaded`, `waiting`,
/// `skipped`, `failed`; in a dry run `would_upload` with its `parts`), `reason` and `detail` when not uploaded,
/// `talk_ids`, `messages`, `reuploaded_after_crash`.
pub fn chat_line(r: &ChatReport) -> Value {
    let mut v = json!({ "kind": "chat", "session_id": r.session_id, "messages": r.messages });
    match &r.outcome {
        ChatOutcome::Uploaded {
            talk_ids,
            reuploaded_after_crash,
        } => {
            v["outcome"] = json!("uploaded");
            v["talk_ids"] = json!(talk_ids);
            v["reuploaded_after_crash"] = json!(reuploaded_after_crash);
        }
        ChatOutcome::AlreadyUploaded => v["outcome"] = json!("already_uploaded"),
        ChatOutcome::Skipped { reason } => {
            v["outcome"] = json!("skipped");
            v["reason"] = json!(reason);
        }
        ChatOutcome::Waiting { reason } => {
            v["outcome"] = json!("waiting");
            v["reason"] = json!(reason);
        }
        ChatOutcome::Failed { reason, detail } => {
            v["outcome"] = json!("failed");
            v["reason"] = json!(reason);
            v["detail"] = json!(detail);
        }
        ChatOutcome::WouldUpload { parts } => {
            v["outcome"] = json!("would_upload");
            v["parts"] = json!(parts);
        }
    }
    v
}

fn mb(bytes: u64) -> String {
    format!("{:.1} {}", bytes as f64 / 1_000_000.0, pick("МБ", "MB"))
}

/// A skip or failure reason as the run's language names it (English: the ledger's own code, as `retry --reason`
/// takes it).
pub fn reason_text(code: &str) -> &str {
    if !crate::lang::is_ru() {
        return code;
    }
    match code {
        "no_recording" => "нет записи",
        "too_long" => "слишком длинный",
        "mono_recording" => "одноканальная запись",
        "already_uploaded" => "уже выгружен",
        "unsupported_audio" => "неподдерживаемый формат записи",
        "recording_unavailable" => "запись недоступна",
        "download_failed" => "не удалось скачать запись",
        "invalid_data" => "SpeechSense не принял данные",
        "upload_failed" => "не удалось выгрузить",
        "portal_error" => "ошибка портала",
        "in_doubt" => "исход выгрузки неизвестен",
        "interrupted" => "прервано",
        "session_open" => "сессия ещё открыта — выгрузится, когда закроется",
        "no_client_message" => "клиент не написал ни одного сообщения",
        "too_few_client_messages" => "меньше сообщений клиента, чем --min-client-messages",
        other => other,
    }
}

/// The error that ends a run stopped by a fatal error (the engine's English reason as its technical detail).
pub fn stopped(code: u8, reason: &str) -> Failure {
    let message = match code {
        exit::REFUSED => pick(
            "выгрузка остановлена: Bitrix24 или SpeechSense отказали в доступе. Проверьте вебхук, API-ключ и ID \
             подключения (b24sense check проверит ключ и подключение); уже выгруженные звонки повторно не \
             отправляются.",
            "the export stopped: Bitrix24 or SpeechSense refused access. Check the webhook, the API key and the \
             connection ID (b24sense check tests the key and the connection); calls already uploaded are never \
             sent again.",
        ),
        _ => pick(
            "выгрузка остановлена: Bitrix24, SpeechSense или журнал перестали отвечать. Запустите выгрузку снова, \
             когда они будут доступны; уже выгруженные звонки повторно не отправляются.",
            "the export stopped: Bitrix24, SpeechSense or the ledger stopped answering. Run the export again when \
             they are back; calls already uploaded are never sent again.",
        ),
    };
    Failure::new(code, message).with_detail(reason)
}

/// The run's summary on stdout: JSON, or lines in the run's language. `fatal`: the run was stopped by an error
/// (printed after this), so it neither "finished" nor says what to do next.
pub fn print_summary(summary: &Summary, stats: &Value, json: bool, dry_run: bool, fatal: bool) {
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(stats).unwrap_or_default()
        );
        return;
    }
    let secs = summary.wall_time.as_secs_f64();
    if dry_run {
        let w = summary.would_upload.clone().unwrap_or_default();
        if fatal {
            out!(
                "{}",
                pick(
                    format!(
                        "пробный прогон остановлен через {secs:.1} с; найдено звонков: {}",
                        summary.found
                    ),
                    format!(
                        "dry run stopped after {secs:.1} s; {} qualifying calls found",
                        summary.found
                    ),
                )
            );
            return;
        }
        out!(
            "{}",
            pick(
                format!(
                    "пробный прогон: найдено {} подходящих звонков за {secs:.1} с",
                    summary.found
                ),
                format!(
                    "dry run: {} qualifying calls found in {secs:.1} s",
                    summary.found
                ),
            )
        );
        out!(
            "{}",
            pick(
                format!(
                    "  будет выгружено     {:>7} звонков, {} минут записи",
                    w.calls, w.minutes
                ),
                format!(
                    "  would upload      {:>7} calls, {} minutes of audio",
                    w.calls, w.minutes
                ),
            )
        );
        out!(
            "{}{:>7}",
            pick("  уже выгружено       ", "  already uploaded  "),
            w.already_uploaded
        );
        out!(
            "{}{:>7}",
            pick("  ещё без записи      ", "  no recording yet  "),
            w.without_recording
        );
        out!("{}", pick("ничего не выгружено", "nothing was uploaded"));
        return;
    }
    out!(
        "{}",
        match fatal {
            true => pick(
                format!(
                    "выгрузка остановлена через {secs:.1} с; подходящих звонков: {}",
                    summary.found
                ),
                format!(
                    "export stopped after {secs:.1} s: {} qualifying calls",
                    summary.found
                ),
            ),
            false => pick(
                format!(
                    "выгрузка завершена за {secs:.1} с; подходящих звонков: {}",
                    summary.found
                ),
                format!(
                    "export finished in {secs:.1} s: {} qualifying calls",
                    summary.found
                ),
            ),
        }
    );
    out!(
        "{}",
        pick(
            format!(
                "  выгружено           {:>7}  (моно: {})",
                summary.uploaded, summary.uploaded_mono
            ),
            format!(
                "  uploaded          {:>7}  ({} mono)",
                summary.uploaded, summary.uploaded_mono
            ),
        )
    );
    if summary.reuploaded_after_crash > 0 {
        out!(
            "{}",
            pick(
                format!(
                    "  выгружено повторно после сбоя {:>3}  (возможны дубликаты, см. отчёт)",
                    summary.reuploaded_after_crash
                ),
                format!(
                    "  re-uploaded after crash {:>3}  (possible duplicates, see the report)",
                    summary.reuploaded_after_crash
                ),
            )
        );
    }
    for (reason, n) in &summary.skipped {
        let reason = reason_text(reason);
        out!(
            "{}{n:>7}  {reason}",
            pick("  пропущено           ", "  skipped           ")
        );
    }
    for (reason, n) in &summary.failed {
        let reason = reason_text(reason);
        out!(
            "{}{n:>7}  {reason}",
            pick("  не выгружено        ", "  failed            ")
        );
    }
    if summary.bad_rows > 0 {
        out!(
            "{}{:>7}",
            pick("  нечитаемых строк    ", "  unreadable rows   "),
            summary.bad_rows
        );
    }
    let (size, minutes, rate) = (
        mb(summary.bytes_uploaded),
        summary.seconds_uploaded / 60,
        summary.uploaded as f64 / secs.max(0.001),
    );
    out!(
        "{}",
        pick(
            format!("  записи              {size} · {minutes} мин · {rate:.1} выгрузок/с"),
            format!("  audio             {size} · {minutes} minutes · {rate:.1} uploads/s"),
        )
    );
    let rest = &stats["rest"];
    let (req, limited, downloads) = (&rest["requests"], &rest["rate_limited"], &rest["downloads"]);
    out!(
        "{}",
        pick(
            format!("  REST Bitrix24       запросов {req} · отказов по лимиту {limited} · скачиваний {downloads}"),
            format!("  Bitrix24 REST     {req} requests · {limited} rate-limit rejections · {downloads} downloads"),
        )
    );
    match summary.download_accounting {
        Some(DownloadAccounting::Counted) => out!(
            "{}",
            pick(
                "  скачивания с портала входят в его лимит запросов (узнано из отказа, запомнено для следующих \
                 запусков)",
                "  portal downloads  counted in its request limit (learned from a refusal, remembered for later runs)",
            )
        ),
        Some(DownloadAccounting::Uncounted) => out!(
            "{}",
            pick(
                "  скачивания с портала не входят в его лимит запросов",
                "  portal downloads  not counted in its request limit",
            )
        ),
        None => {}
    }
    if let Some(emu) = stats.get("emulators") {
        let (http, limited, sent) = (
            &emu["portal_http_requests"],
            &emu["portal_rate_limited"],
            mb(emu["portal_bytes_sent"].as_u64().unwrap_or(0)),
        );
        let talks = &emu["talks_stored"];
        out!(
            "{}",
            pick(
                format!("  эмулятор портала    HTTP-запросов {http} · отказов по лимиту {limited} · отдано {sent}"),
                format!("  emulated portal   {http} HTTP requests · {limited} rejected by its rate limit · {sent} sent"),
            )
        );
        out!(
            "{}",
            pick(
                format!("  SpeechSense         сохранено разговоров: {talks}"),
                format!("  SpeechSense       {talks} talks stored"),
            )
        );
    }
    if fatal {
        return; // the error, printed next, says why and what to do
    }
    match summary.stopped.as_deref() {
        None => {}
        Some("shutdown requested") => out!(
            "{}",
            pick(
                "  остановлено по сигналу (Ctrl-C): начатые выгрузки доделаны",
                "  stopped early: shutdown requested",
            )
        ),
        Some(reason) if crate::lang::is_ru() => {
            out!("  остановлено досрочно; причина, как её сообщила система:");
            out!("    {reason}");
        }
        Some(reason) => out!("  stopped early: {reason}"),
    }
    let failed = summary.failed_total();
    if failed > 0 {
        out!(
            "{}",
            pick(
                format!(
                    "не выгружено звонков: {failed}; запустите выгрузку снова, чтобы повторить их (выгруженные \
                     звонки второй раз не отправляются)"
                ),
                format!("{failed} calls failed; run again to retry them (uploaded calls are never sent twice)"),
            )
        );
    }
}

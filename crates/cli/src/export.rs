//! The `export` command (the demo runs exactly this against its emulators): calls to the two-channel audio
//! connection and, with `--chat-connection-id`, Open Lines chats to the chat connection — in one run, side by side,
//! on one Bitrix24 client (one REST request bucket), under one Ctrl-C, with one exit code.

use std::sync::Arc;
use std::time::Duration;

use b24sense_bitrix24::{
    Bitrix24Client, ClientConfig as Bitrix24Config, Credentials as Bitrix24Credentials, RatePlan,
};
use b24sense_core::CallFilter;
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::chats::adapters::SpeechSenseTextSink;
use b24sense_engine::chats::{ChatProgressFn, ChatReport, ChatSummary};
use b24sense_engine::{
    run_chat_export, run_export, EngineError, ExportConfig, ProgressEvent, ProgressFn, Summary,
};
use b24sense_speechsense::{ConnectionKind, SearchScope};
use b24sense_store::Store;

use crate::args::{self, FilterArgs, RatePlanArg, RunArgs};
use crate::{chats, exit, ledger, output, preflight, progress, Failure};

/// Where an export reads from and writes to.
pub struct ExportTarget {
    /// SpeechSense search scope for duplicate checks of in-doubt uploads, when configured (its connection ID is
    /// replaced by the connection searched).
    pub search: Option<SearchScope>,
    pub webhook: b24sense_bitrix24::WebhookUrl,
    pub portal_key: String,
    pub endpoint: String,
    /// The two-channel audio connection calls go to; `None`: no calls.
    pub connection_id: Option<String>,
    /// The chat connection Open Lines sessions go to; `None`: no chats.
    pub chat_connection_id: Option<String>,
    pub api_key: String,
}

/// Extra numbers the demo prints (from its emulators).
pub type DemoStats = Box<dyn FnOnce(&mut serde_json::Value) + Send>;

pub fn call_filter(f: &FilterArgs) -> Result<CallFilter, Failure> {
    let filter = CallFilter {
        since: f.since.and_then(|b| b.0),
        until: f.until.and_then(|b| b.0),
        users: f.users.0.clone(),
        min_duration: f.min_duration,
        max_duration: f.max_duration,
        call_types: f.direction.clone(),
    };
    filter.validate().map_err(|e| {
        let flag = chats::flag_of_field(e.field);
        Failure::new(exit::USAGE, format!("{flag}: {}", e.message))
    })?;
    Ok(filter)
}

/// All three IDs, or none: a partial scope cannot search.
pub fn search_scope(
    a: &args::SearchArgs,
    connection_id: &str,
) -> Result<Option<SearchScope>, Failure> {
    let ids = [
        ("--organization-id", &a.organization_id),
        ("--space-id", &a.space_id),
        ("--project-id", &a.project_id),
    ];
    let given: Vec<_> = ids
        .iter()
        .filter(|(_, v)| v.as_deref().is_some_and(|v| !v.trim().is_empty()))
        .collect();
    if given.is_empty() {
        return Ok(None);
    }
    if let Some((flag, _)) = ids
        .iter()
        .find(|(_, v)| v.as_deref().is_none_or(|v| v.trim().is_empty()))
    {
        return Err(Failure::new(
            exit::USAGE,
            format!("{flag}: missing; duplicate checks need --organization-id, --space-id and --project-id together"),
        ));
    }
    let get = |v: &Option<String>| v.as_deref().unwrap_or_default().trim().to_string();
    Ok(Some(SearchScope {
        organization_id: get(&a.organization_id),
        space_id: get(&a.space_id),
        project_id: get(&a.project_id),
        connection_id: connection_id.to_string(),
    }))
}

async fn open_ledger(run: &RunArgs) -> Result<Store, Failure> {
    let store = match run
        .database_schema
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        None => crate::open_store(&run.database).await?,
        Some(schema) => {
            let url = run.database.clone().unwrap_or_default();
            Store::open_postgres_schema(&url, schema.trim())
                .await
                .map_err(|e| {
                    Failure::new(
                        exit::UNAVAILABLE,
                        format!("--database-schema: cannot open the ledger: {e}"),
                    )
                })?
        }
    };
    // A PostgreSQL ledger's recovery journal lives in the data directory (docs/ledger-faults.md).
    Ok(ledger::with_recovery(store))
}

/// The `export` command; the demo calls exactly this with its emulators' addresses.
pub async fn export_command(
    target: ExportTarget,
    filter_args: &FilterArgs,
    run: &RunArgs,
    extra_stats: Option<DemoStats>,
) -> Result<u8, Failure> {
    // Every setting is checked before anything is opened or asked.
    let call_config = match &target.connection_id {
        Some(id) => {
            let mut config = ExportConfig::new(target.portal_key.clone(), id.clone());
            config.filter = call_filter(filter_args)?;
            config.mono_policy = run.mono_policy.clone();
            config.language = run.language.clone();
            config.concurrency = run.concurrency.setting();
            config.dry_run = run.dry_run;
            if let Some(give_up) = run.ledger_give_up {
                config.ledger_give_up = give_up;
            }
            if let Some(secs) = run.lease_seconds {
                config.lease = Duration::from_secs_f64(secs);
                config.portal_lease = Duration::from_secs_f64(secs);
            }
            Some(config)
        }
        None => None,
    };
    let chat_config = match &target.chat_connection_id {
        Some(id) => Some(chats::config(&target.portal_key, id, filter_args, run)?),
        None => None,
    };
    let (calls_on, chats_on) = (call_config.is_some(), chat_config.is_some());
    if !calls_on && !chats_on {
        return Err(Failure::new(
            exit::USAGE,
            "--connection-id: missing; give --connection-id, --chat-connection-id or both",
        ));
    }
    let store = open_ledger(run).await?;
    let rate = match run.rate_plan {
        RatePlanArg::Standard => RatePlan::STANDARD,
        RatePlanArg::Enterprise => RatePlan::ENTERPRISE,
    };
    let bitrix = Bitrix24Client::new(
        Bitrix24Credentials::Webhook(target.webhook.clone()),
        Bitrix24Config {
            rate,
            ..Bitrix24Config::default()
        },
    )
    .map_err(|e| Failure::new(exit::USAGE, format!("--bitrix24-webhook: {e}")))?;
    let speech = preflight::speechsense_client(target.endpoint.clone(), target.api_key)?;

    // Refuse early and clearly (wrong key, wrong connection or a connection of the wrong type, endpoint down)
    // before touching the portal; then one cheap request to the portal (down, webhook refused, scopes missing)
    // before listing anything.
    if !run.dry_run {
        let wanted = [
            (&target.connection_id, ConnectionKind::TwoChannelAudio),
            (&target.chat_connection_id, ConnectionKind::Chat),
        ];
        for (id, kind) in wanted {
            if let Some(id) = id {
                preflight::speechsense(&speech, &target.endpoint, id, kind).await?;
            }
        }
    }
    preflight::portal(
        &target.webhook,
        &preflight::needed_scopes(calls_on, chats_on),
    )
    .await?;

    let report = match &run.report {
        Some(path) => Some(Arc::new(output::ReportFile::create(path).map_err(|e| {
            Failure::new(exit::USAGE, format!("--report {}: {e}", path.display()))
        })?)),
        None => None,
    };
    let quiet = run.json;
    let progress = progress::Progress::new(quiet, calls_on, chats_on);
    let callback = {
        let bar = progress.callback(quiet);
        let report = report.clone();
        let f: ProgressFn = Arc::new(move |event: &ProgressEvent| {
            bar(event);
            if let (Some(file), ProgressEvent::Settled(r)) = (&report, event) {
                file.write(r);
            }
        });
        f
    };
    let chat_callback = {
        let line = progress.chat_callback(quiet);
        let report = report.clone();
        let f: ChatProgressFn = Arc::new(move |r: &ChatReport| {
            line(r);
            if let Some(file) = &report {
                file.write_chat(r);
            }
        });
        f
    };
    let shutdown = crate::shutdown_on_signals();
    let portal = target.portal_key.clone();
    let mut params = serde_json::json!({
        "connection_id": target.connection_id, "dry_run": run.dry_run, "language": run.language,
    });
    if let Some(c) = &call_config {
        params["filter"] = serde_json::json!(c.filter);
        params["concurrency"] = serde_json::json!(c.concurrency);
    }
    if let Some(c) = &chat_config {
        params["chat_connection_id"] = serde_json::json!(c.connection_id);
        params["chat_filter"] = serde_json::json!(c.filter);
        params["min_client_messages"] = serde_json::json!(c.options.min_client_messages);
    }
    let run_id = match run.dry_run {
        true => None,
        false => store
            .start_run(&portal, &params)
            .await
            .map_err(|e| tracing::warn!(error = %e, "could not record the run"))
            .ok(),
    };
    // One source, one client, one request bucket for both runs.
    let source = Arc::new(Bitrix24Source::new(bitrix.clone()));
    let calls = {
        let (source, store, shutdown) = (source.clone(), store.clone(), shutdown.clone());
        let sink = Arc::new(SpeechSenseSink::new(speech.clone(), target.search.clone()));
        async move {
            match call_config {
                Some(c) => Some(run_export(source, sink, store, c, callback, shutdown).await),
                None => None,
            }
        }
    };
    let chats_run = {
        let (source, store, shutdown) = (source.clone(), store.clone(), shutdown.clone());
        let sink = Arc::new(SpeechSenseTextSink::new(speech, target.search));
        async move {
            match chat_config {
                Some(c) => {
                    Some(run_chat_export(source, sink, store, c, chat_callback, shutdown).await)
                }
                None => None,
            }
        }
    };
    let (call_result, chat_result) = tokio::join!(calls, chats_run);
    progress.finish(quiet);
    if let Some(id) = run_id {
        record_run(&store, id, call_result.as_ref(), chat_result.as_ref()).await;
    }

    let (summary, call_fatal) = match call_result {
        None => (None, None),
        Some(Ok(s)) => (Some(s), None),
        Some(Err(EngineError::Stopped { reason, summary })) => (Some(*summary), Some(reason)),
        Some(Err(e @ EngineError::Config(_))) => {
            return Err(Failure::new(exit::USAGE, e.to_string()))
        }
        Some(Err(e)) => return Err(output::stopped(exit::UNAVAILABLE, &e.to_string())),
    };
    let chat_summary = match chat_result {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e @ EngineError::Config(_))) => {
            return Err(Failure::new(exit::USAGE, e.to_string()))
        }
        Some(Err(e)) => return Err(chats::stopped(exit::UNAVAILABLE, &e.to_string())),
    };
    if let (Some(path), Some(file)) = (&run.report, &report) {
        file.finish().map_err(|e| {
            Failure::new(
                exit::UNAVAILABLE,
                format!("--report {}: {e}", path.display()),
            )
        })?;
    }
    let mut stats = match &summary {
        Some(s) => output::stats_json(s, &bitrix.stats()),
        None => output::rest_json(&bitrix.stats()),
    };
    if let (Some(s), Some(id)) = (&chat_summary, &target.chat_connection_id) {
        stats["chats"] = chats::json(s, id, run.dry_run);
    }
    if let Some(extra) = extra_stats {
        extra(&mut stats);
    }
    let chat_fatal = chat_summary.as_ref().and_then(chats::fatal_reason);
    if run.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&stats).unwrap_or_default()
        );
    } else {
        if let Some(s) = &summary {
            output::print_summary(s, &stats, false, run.dry_run, call_fatal.is_some());
        }
        if let Some(s) = &chat_summary {
            let fatal = chat_fatal.is_some();
            chats::print(s, &stats, run.dry_run, fatal, summary.is_some());
        }
    }

    let code = exit_code(
        summary.as_ref(),
        call_fatal.as_deref(),
        chat_summary.as_ref(),
        shutdown.is_cancelled(),
    );
    let call_failure = call_fatal.map(|reason| output::stopped(fatal_code(&reason), &reason));
    let chat_failure = chat_fatal.map(|reason| chats::stopped(fatal_code(reason), reason));
    match (call_failure, chat_failure) {
        (Some(calls), Some(chats)) => {
            crate::hygiene::print_failure(&calls);
            Err(Failure { code, ..chats })
        }
        (Some(f), None) | (None, Some(f)) => Err(Failure { code, ..f }),
        (None, None) => Ok(code),
    }
}

/// The run's row in the ledger's journal (what `status` shows as the last run).
async fn record_run(
    store: &Store,
    id: i64,
    calls: Option<&Result<Summary, EngineError>>,
    chats: Option<&Result<ChatSummary, EngineError>>,
) {
    let (mut status, mut summary) = match calls {
        None => ("finished", serde_json::json!({})),
        Some(Ok(s)) if s.stopped.is_some() => {
            ("stopped", serde_json::to_value(s).unwrap_or_default())
        }
        Some(Ok(s)) => ("finished", serde_json::to_value(s).unwrap_or_default()),
        Some(Err(EngineError::Stopped { summary, .. })) => {
            ("failed", serde_json::to_value(summary).unwrap_or_default())
        }
        Some(Err(e)) => ("failed", serde_json::json!({ "error": e.to_string() })),
    };
    match chats {
        None => {}
        Some(Ok(s)) => {
            if s.fatal {
                status = "failed";
            } else if s.stopped.is_some() && status == "finished" {
                status = "stopped";
            }
            summary["chats"] = chats::json(s, "", false);
        }
        Some(Err(e)) => {
            status = "failed";
            summary["chats"] = serde_json::json!({ "error": e.to_string() });
        }
    }
    if let Err(e) = store.finish_run(id, status, &summary).await {
        tracing::warn!(error = %e, "could not record the run");
    }
}

/// The run's exit code: a fatal error of either run first (the calls' before the chats'), then an interruption,
/// then calls or sessions failed or held by another process.
fn exit_code(
    calls: Option<&Summary>,
    call_fatal: Option<&str>,
    chats: Option<&ChatSummary>,
    interrupted: bool,
) -> u8 {
    if let Some(reason) = call_fatal.or(chats.and_then(chats::fatal_reason)) {
        return fatal_code(reason);
    }
    if interrupted {
        return exit::INTERRUPTED;
    }
    // Calls another process kept holding are not done either.
    let calls_failed = calls.is_some_and(|s| s.failed_total() > 0 || s.unsettled > 0);
    if calls_failed || chats.is_some_and(chats::some_failed) {
        return exit::SOME_FAILED;
    }
    exit::OK
}

/// A fatal reason's code: a refusal of credentials or connection (or of the connection's type), else an outage.
fn fatal_code(reason: &str) -> u8 {
    let r = reason.to_ascii_lowercase();
    let refused = [
        "api key",
        "credentials",
        "access",
        "connection id",
        "not found",
        "permission",
        "unauthenticated",
    ]
    .iter()
    .any(|k| r.contains(k));
    if refused || ConnectionKind::named_in(reason).is_some() {
        exit::REFUSED
    } else {
        exit::UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fatal_chat_run_fails_the_whole_run() {
        let ok = Summary::default();
        let mut chats = ChatSummary::default();
        assert_eq!(exit_code(Some(&ok), None, Some(&chats), false), exit::OK);
        chats.waiting.insert("session_open".into(), 2);
        assert_eq!(exit_code(Some(&ok), None, Some(&chats), false), exit::OK);
        chats.failed.insert("upload_failed".into(), 1);
        assert_eq!(
            exit_code(None, None, Some(&chats), false),
            exit::SOME_FAILED
        );
        assert_eq!(
            exit_code(Some(&ok), None, Some(&chats), true),
            exit::INTERRUPTED
        );
        chats.fatal = true;
        chats.stopped = Some("SpeechSense: the API key was refused".into());
        assert_eq!(
            exit_code(Some(&ok), None, Some(&chats), true),
            exit::REFUSED
        );
        chats.stopped = Some("Bitrix24: listing Open Lines sessions: timed out".into());
        assert_eq!(
            exit_code(Some(&ok), None, Some(&chats), false),
            exit::UNAVAILABLE
        );
        // The calls' fatal error comes first.
        assert_eq!(
            exit_code(Some(&ok), Some("invalid api key"), Some(&chats), false),
            exit::REFUSED
        );
        assert_eq!(
            fatal_code("refused: connection c-1 is a chat connection"),
            exit::REFUSED
        );
    }
}

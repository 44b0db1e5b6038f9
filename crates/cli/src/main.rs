//! `b24sense` — the command-line front end. It only parses flags, builds the clients, the ledger and the engine,
//! and prints what happened; all the work lives in the library crates.

// First: its `out!`/`err!` macros are used by the modules below.
#[macro_use]
mod hygiene;
mod args;
mod completions;
mod demo;
mod demo_serve;
mod emulate;
mod keys;
mod lang;
mod ledger;
mod log_escape;
mod output;
mod preflight;
mod progress;
mod serve;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use b24sense_bitrix24::{
    Bitrix24Client, ClientConfig as Bitrix24Config, Credentials as Bitrix24Credentials, RatePlan,
};
use b24sense_core::CallFilter;
use b24sense_engine::adapters::{Bitrix24Source, SpeechSenseSink};
use b24sense_engine::{run_export, EngineError, ExportConfig, ProgressEvent, ProgressFn, Summary};
use b24sense_store::Store;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command, FilterArgs, RatePlanArg, RunArgs};

/// Exit codes, documented in the README.
pub mod exit {
    /// Everything qualifying was exported (or skipped for a reason).
    pub const OK: u8 = 0;
    /// The run finished but some calls failed (see the summary / report).
    pub const SOME_FAILED: u8 = 1;
    /// Bad input: a flag, a setting or the ledger location is wrong.
    pub const USAGE: u8 = 2;
    /// Bitrix24 or SpeechSense refused the credentials or the connection.
    pub const REFUSED: u8 = 3;
    /// A service or the database could not be reached, or the run was stopped.
    pub const UNAVAILABLE: u8 = 4;
    /// Interrupted by a signal.
    pub const INTERRUPTED: u8 = 130;
}

/// An error that ends the command, with its exit code: a message in the run's language saying what to do, and
/// the raw technical detail (often English text of a library or a server), printed on its own line.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub detail: Option<String>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Failure {
        self.detail = Some(detail.into());
        self
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lang::init(cli.lang);
    hygiene::quiet_broken_pipe_panics();
    init_tracing(cli.verbose);
    let serving = match &cli.command {
        Command::Serve(_) => true,
        Command::Demo(a) => a.serve,
        _ => false,
    };
    match runtime(serving) {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            hygiene::print_failure(
                &Failure::new(
                    exit::UNAVAILABLE,
                    lang::pick(
                        "не удалось запустить среду выполнения",
                        "cannot start the async runtime",
                    ),
                )
                .with_detail(e.to_string()),
            );
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

/// `serve` and `demo --serve` (many portals at once) get a worker thread per core; everything else exports one
/// portal, on the engine's export runtime (one worker thread, one malloc arena: `b24sense_engine::runtime`).
fn runtime(serving: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if serving {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        b24sense_engine::runtime::export_runtime()
    }
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Export(a) => {
            let a = *a;
            let search = match search_scope(&a.search, &a.speechsense.connection_id) {
                Ok(s) => s,
                Err(f) => {
                    hygiene::print_failure(&f);
                    return ExitCode::from(f.code);
                }
            };
            let target = ExportTarget {
                search,
                portal_key: a
                    .run
                    .portal_key
                    .clone()
                    .unwrap_or_else(|| a.bitrix24_webhook.host().to_string()),
                webhook: a.bitrix24_webhook,
                endpoint: a.speechsense.speechsense_endpoint,
                connection_id: a.speechsense.connection_id,
                api_key: a.speechsense.api_key,
            };
            export_command(target, &a.filter, &a.run, None).await
        }
        Command::Check(a) => preflight::check_command(a).await,
        Command::Status(a) => ledger::status(a).await,
        Command::Retry(a) => ledger::retry(a).await,
        Command::Demo(a) if a.serve => demo_serve::run(*a).await,
        Command::Demo(a) => demo::run(*a).await,
        Command::Emulate(e) => emulate::run(e).await,
        Command::Serve(a) => serve::run(*a).await,
        Command::Keys(k) => keys::run(k).await,
        Command::Completions { shell } => completions::completions(shell),
        Command::Man { dir } => completions::man(dir.as_deref()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            hygiene::print_failure(&f);
            ExitCode::from(f.code)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,b24sense=info",
        _ => "debug,h2=info,hyper=info,tower=info,sqlx=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(hygiene::stderr_colour());
    // Values are escaped (log_escape): a request field cannot start a forged line.
    // B24SENSE_LOG_FORMAT=json: one JSON object per line (for `serve` under a log collector).
    if std::env::var("B24SENSE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")) {
        fmt.json().with_writer(log_escape::JsonSafeStderr).init();
    } else {
        fmt.with_writer(std::io::stderr)
            .fmt_fields(log_escape::EscapedFields::default())
            .init();
    }
}

/// Where an export reads from and writes to.
pub struct ExportTarget {
    /// SpeechSense search scope for duplicate checks of in-doubt uploads, when configured.
    pub search: Option<b24sense_speechsense::SearchScope>,
    pub webhook: b24sense_bitrix24::WebhookUrl,
    pub portal_key: String,
    pub endpoint: String,
    pub connection_id: String,
    pub api_key: String,
}

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
        let flag = match e.field {
            "max_duration" => "--max-duration",
            "until" => "--until",
            other => other,
        };
        Failure::new(exit::USAGE, format!("{flag}: {}", e.message))
    })?;
    Ok(filter)
}

/// All three IDs, or none: a partial scope cannot search.
fn search_scope(
    a: &args::SearchArgs,
    connection_id: &str,
) -> Result<Option<b24sense_speechsense::SearchScope>, Failure> {
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
    Ok(Some(b24sense_speechsense::SearchScope {
        organization_id: get(&a.organization_id),
        space_id: get(&a.space_id),
        project_id: get(&a.project_id),
        connection_id: connection_id.to_string(),
    }))
}

pub async fn open_store(database: &Option<String>) -> Result<Store, Failure> {
    let database = match database {
        Some(d) => {
            hygiene::check_database_dir(d)?;
            d.clone()
        }
        None => default_database()?,
    };
    Store::open(&database).await.map_err(|e| {
        Failure::new(
            exit::UNAVAILABLE,
            format!("--database: cannot open the ledger: {e}"),
        )
    })
}

pub fn default_database() -> Result<String, Failure> {
    let dir = dirs::data_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/share")))
        .ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                "--database: no data directory on this system; pass sqlite:PATH",
            )
        })?;
    Ok(format!(
        "sqlite:{}",
        dir.join("b24sense").join("ledger.db").display()
    ))
}

/// Shutdown on SIGINT/SIGTERM: the first signal stops taking new calls and lets in-flight uploads finish; a second
/// one exits at once (the ledger stays consistent either way: it is written before and after each upload).
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            wait_for_signal().await;
            count += 1;
            if count == 1 {
                err!(
                    "{}",
                    lang::pick(
                        "остановка: доделываю начатые выгрузки (Ctrl-C ещё раз — выйти сразу)",
                        "stopping: finishing uploads in flight (press Ctrl-C again to quit at once)"
                    )
                );
                t.cancel();
            } else {
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
        }
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Extra numbers the demo prints (from its emulators).
pub type DemoStats = Box<dyn FnOnce(&mut serde_json::Value) + Send>;

/// The `export` command; the demo calls exactly this with its emulators' addresses.
pub async fn export_command(
    target: ExportTarget,
    filter_args: &FilterArgs,
    run: &RunArgs,
    extra_stats: Option<DemoStats>,
) -> Result<u8, Failure> {
    let filter = call_filter(filter_args)?;
    let store = match run
        .database_schema
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        None => open_store(&run.database).await?,
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
    let store = ledger::with_recovery(store);

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

    let mut config = ExportConfig::new(target.portal_key, target.connection_id);
    config.filter = filter;
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

    // Refuse early and clearly (wrong key, wrong connection, endpoint down) before touching the portal; then one
    // cheap request to the portal (down, webhook refused, scopes missing) before listing anything.
    if !run.dry_run {
        preflight::speechsense(&speech, &target.endpoint, &config.connection_id).await?;
    }
    preflight::portal(&target.webhook).await?;

    let report = match &run.report {
        Some(path) => Some(Arc::new(output::ReportFile::create(path).map_err(|e| {
            Failure::new(exit::USAGE, format!("--report {}: {e}", path.display()))
        })?)),
        None => None,
    };
    let quiet = run.json;
    let progress = progress::Progress::new(quiet);
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
    let shutdown = shutdown_on_signals();
    let portal = config.portal.clone();
    let params = serde_json::json!({
        "filter": config.filter, "connection_id": config.connection_id, "dry_run": config.dry_run,
        "concurrency": config.concurrency, "language": config.language,
    });
    let run_id = match run.dry_run {
        true => None,
        false => store
            .start_run(&portal, &params)
            .await
            .map_err(|e| tracing::warn!(error = %e, "could not record the run"))
            .ok(),
    };
    let source = Arc::new(Bitrix24Source::new(bitrix.clone()));
    let sink = Arc::new(SpeechSenseSink::new(speech, target.search));
    let result = run_export(
        source,
        sink,
        store.clone(),
        config,
        callback,
        shutdown.clone(),
    )
    .await;
    progress.finish(quiet);
    if let Some(id) = run_id {
        let (status, summary) = match &result {
            Ok(s) if s.stopped.is_some() => {
                ("stopped", serde_json::to_value(s).unwrap_or_default())
            }
            Ok(s) => ("finished", serde_json::to_value(s).unwrap_or_default()),
            Err(EngineError::Stopped { summary, .. }) => {
                ("failed", serde_json::to_value(summary).unwrap_or_default())
            }
            Err(e) => ("failed", serde_json::json!({ "error": e.to_string() })),
        };
        if let Err(e) = store.finish_run(id, status, &summary).await {
            tracing::warn!(error = %e, "could not record the run");
        }
    }

    let (summary, fatal) = match result {
        Ok(s) => (s, None),
        Err(EngineError::Stopped { reason, summary }) => (*summary, Some(reason)),
        Err(e @ EngineError::Config(_)) => return Err(Failure::new(exit::USAGE, e.to_string())),
        Err(e) => return Err(output::stopped(exit::UNAVAILABLE, &e.to_string())),
    };
    if let (Some(path), Some(file)) = (&run.report, &report) {
        file.finish().map_err(|e| {
            Failure::new(
                exit::UNAVAILABLE,
                format!("--report {}: {e}", path.display()),
            )
        })?;
    }
    let mut stats = output::stats_json(&summary, &bitrix.stats());
    if let Some(extra) = extra_stats {
        extra(&mut stats);
    }
    output::print_summary(&summary, &stats, run.json, run.dry_run, fatal.is_some());

    Ok(exit_code(
        &summary,
        fatal.as_deref(),
        shutdown.is_cancelled(),
    ))
    .and_then(|code| match fatal {
        Some(reason) => Err(output::stopped(code, &reason)),
        None => Ok(code),
    })
}

fn exit_code(summary: &Summary, fatal: Option<&str>, interrupted: bool) -> u8 {
    match fatal {
        Some(reason) if is_refusal(reason) => exit::REFUSED,
        Some(_) => exit::UNAVAILABLE,
        None if interrupted => exit::INTERRUPTED,
        // Calls another process kept holding are not done either.
        None if summary.failed_total() > 0 || summary.unsettled > 0 => exit::SOME_FAILED,
        None => exit::OK,
    }
}

/// Whether a fatal reason is a refusal of credentials or connection (rather than an outage).
fn is_refusal(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "api key",
        "credentials",
        "access",
        "connection id",
        "not found",
        "permission",
        "unauthenticated",
    ]
    .iter()
    .any(|k| r.contains(k))
}

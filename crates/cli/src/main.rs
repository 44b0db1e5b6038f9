//! `b24sense` — the command-line front end. It only parses flags, builds the clients, the ledger and the engine,
//! and prints what happened; all the work lives in the library crates.

// First: its `out!`/`err!` macros are used by the modules below.
#[macro_use]
mod hygiene;
mod args;
mod chats;
mod completions;
mod demo;
mod demo_serve;
mod emulate;
mod export;
mod keys;
mod lang;
mod ledger;
mod log_escape;
mod output;
mod preflight;
mod progress;
mod serve;

use std::process::ExitCode;

use b24sense_store::Store;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command};

pub use crate::export::{export_command, DemoStats, ExportTarget};

/// Exit codes, documented in the README.
pub mod exit {
    /// Everything qualifying was exported (or skipped for a reason).
    pub const OK: u8 = 0;
    /// The run finished but some calls or chat sessions failed (see the summary / report).
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
        Command::Export(a) => export(*a).await,
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

/// `export`: the flags made into a target (the connections given, the search scope), then [`export_command`].
async fn export(a: args::ExportArgs) -> Result<u8, Failure> {
    let connections = a.speechsense.connections()?;
    let searched = connections
        .calls
        .as_deref()
        .or(connections.chats.as_deref());
    let search = export::search_scope(&a.search, searched.unwrap_or_default())?;
    let target = ExportTarget {
        search,
        portal_key: a
            .run
            .portal_key
            .clone()
            .unwrap_or_else(|| a.bitrix24_webhook.host().to_string()),
        webhook: a.bitrix24_webhook,
        endpoint: a.speechsense.speechsense_endpoint,
        connection_id: connections.calls,
        chat_connection_id: connections.chats,
        api_key: a.speechsense.api_key,
    };
    export_command(target, &a.filter, &a.run, None).await
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
pub fn shutdown_on_signals() -> CancellationToken {
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

pub async fn wait_for_signal() {
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

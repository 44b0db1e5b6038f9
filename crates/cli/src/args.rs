//! Command-line interface: flags, environment variables and their validation.
//!
//! Every value is checked here, before anything runs, so bad input is refused with a message naming the flag and
//! nothing is uploaded or written.

use std::path::PathBuf;

use b24sense_bitrix24::WebhookUrl;
use b24sense_core::filter::parse_user_ids;
use b24sense_core::{CallType, MonoPolicy, TimeBound};
use b24sense_engine::concurrency::{Concurrency, DEFAULT_CEILING};
use b24sense_speechsense::Lang;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_SPEECHSENSE_ENDPOINT: &str = "https://api.speechsense.yandexcloud.net:443";

#[derive(Debug, Parser)]
#[command(
    name = "b24sense",
    version,
    about = "Export Bitrix24 calls (recordings + CRM metadata) into Yandex SpeechSense — once and only once.",
    long_about = None,
)]
pub struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Language of every message: ru or en. Default: from the locale (LC_ALL, LC_MESSAGES, LANG: ru… → ru, else en).
    #[arg(long, global = true, env = "B24SENSE_LANG", value_parser = lang_parser())]
    pub lang: Option<Lang>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export qualifying calls (and, with --chat-connection-id, Open Lines chats) from a Bitrix24 portal into
    /// SpeechSense.
    Export(Box<ExportArgs>),
    /// Check a SpeechSense API key and connection IDs (calls, chats) and their types without uploading anything.
    Check(CheckArgs),
    /// Show the ledger: calls by state and reason, the last run, calls in doubt.
    Status(StatusArgs),
    /// Make failed calls eligible again (the next export retries them).
    Retry(RetryArgs),
    /// Run the whole export against built-in emulators of Bitrix24 and SpeechSense (nothing leaves this machine).
    Demo(Box<DemoArgs>),
    /// Serve an emulator on a local port until interrupted (for trying b24sense by hand).
    #[command(subcommand)]
    Emulate(EmulateCommand),
    /// Run the Bitrix24 application server: install handler, settings page, events, continuous sync.
    Serve(Box<crate::serve::ServeArgs>),
    /// The key that encrypts stored secrets: generate a new one, rotate every secret to it, check them.
    #[command(subcommand)]
    Keys(crate::keys::KeysCommand),
    /// Print a shell completion script on stdout (bash, zsh, fish).
    ///
    /// E.g. `b24sense completions bash > ~/.local/share/bash-completion/completions/b24sense`; the Debian package
    /// installs them for every user.
    Completions {
        /// The shell to complete in: bash, zsh or fish (elvish and powershell work too).
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, e.g. `b24sense man | man -l -`.
    Man {
        /// Instead, write b24sense.1 and one page per subcommand (b24sense-export.1, …) into this existing directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct SpeechSenseArgs {
    /// SpeechSense gRPC endpoint; an http:// address is used without TLS (local emulator).
    #[arg(long, env = "B24SENSE_SPEECHSENSE_ENDPOINT", default_value = DEFAULT_SPEECHSENSE_ENDPOINT, value_parser = parse_endpoint)]
    pub speechsense_endpoint: String,
    /// ID of the SpeechSense connection (two-channel audio) the calls go to. Without it, give
    /// --chat-connection-id: only chats are exported. Empty = not given.
    #[arg(long, env = "B24SENSE_CONNECTION_ID", value_parser = parse_connection_id)]
    pub connection_id: Option<String>,
    /// ID of the SpeechSense chat connection: also export finished Open Lines chat sessions, in the same run
    /// (alone, without --connection-id: only chats). Empty = not given.
    #[arg(long, env = "B24SENSE_CHAT_CONNECTION_ID", value_parser = parse_connection_id)]
    pub chat_connection_id: Option<String>,
    /// Secret part of the service account's API key (scope yc.speech-sense.use).
    #[arg(long, env = "B24SENSE_API_KEY", hide_env_values = true, value_parser = parse_api_key)]
    pub api_key: String,
}

/// The connections an export or a check is given: calls, chats, or both.
pub struct Connections {
    pub calls: Option<String>,
    pub chats: Option<String>,
}

impl SpeechSenseArgs {
    /// The connection IDs given (empty ones are not); at least one is needed.
    pub fn connections(&self) -> Result<Connections, crate::Failure> {
        let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let c = Connections {
            calls: given(&self.connection_id),
            chats: given(&self.chat_connection_id),
        };
        if c.calls.is_none() && c.chats.is_none() {
            return Err(crate::Failure::new(
                crate::exit::USAGE,
                crate::lang::pick(
                    "--connection-id: не указан. Укажите ID подключения SpeechSense для звонков (--connection-id), \
                     для чатов Открытых линий (--chat-connection-id) или оба.",
                    "--connection-id: missing. Give the ID of a SpeechSense connection for calls (--connection-id), \
                     for Open Lines chats (--chat-connection-id), or both.",
                ),
            ));
        }
        Ok(c)
    }
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Load calls (and chat sessions, by their start) since this date (YYYY-MM-DD, read in the portal's time zone,
    /// or RFC 3339). Empty = all calls.
    #[arg(long, env = "B24SENSE_SINCE", value_name = "DATE", value_parser = |s: &str| parse_bound("--since", s))]
    pub since: Option<DateBound>,
    /// Load calls up to and including this date (YYYY-MM-DD or RFC 3339). Empty = no upper bound.
    #[arg(long, env = "B24SENSE_UNTIL", value_name = "DATE", value_parser = |s: &str| parse_bound("--until", s))]
    pub until: Option<DateBound>,
    /// Bitrix24 user IDs of the operators whose calls (and chat sessions) to load, e.g. 1,5,7. Empty = all users.
    #[arg(long, env = "B24SENSE_USERS", value_name = "IDS", value_parser = |s: &str| parse_users("--users", s), default_value = "")]
    pub users: UserList,
    /// Minimal conversation length in seconds (30 or more recommended).
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = |s: &str| parse_seconds("--min-duration", s), allow_hyphen_values = true)]
    pub min_duration: u64,
    /// Maximal conversation length in seconds.
    #[arg(long, value_name = "SECONDS", value_parser = |s: &str| parse_seconds("--max-duration", s), allow_hyphen_values = true)]
    pub max_duration: Option<u64>,
    /// Call directions to load (repeatable or comma-separated): outgoing, incoming, redirected, callback. Default: all.
    #[arg(long, value_name = "DIRECTION", value_delimiter = ',', value_parser = parse_direction)]
    pub direction: Vec<CallType>,
    /// Chats: skip sessions in which the client wrote fewer than N messages (reason too_few_client_messages).
    #[arg(long, env = "B24SENSE_MIN_CLIENT_MESSAGES", value_name = "N", default_value = "1",
          value_parser = parse_min_client_messages)]
    pub min_client_messages: u32,
}

/// A parsed `--since`/`--until`: a date, or `None` when given empty (no bound, as when not given at all).
#[derive(Debug, Clone, Copy, Default)]
pub struct DateBound(pub Option<TimeBound>);

/// A parsed `--users` list (a newtype so clap does not treat it as repeated values).
#[derive(Debug, Clone, Default)]
pub struct UserList(pub Vec<u64>);

/// Optional SpeechSense IDs that make `Search` possible: an upload left in doubt by a crash or a lost response is then
/// looked up by the call's ID instead of being uploaded again.
#[derive(Debug, Args, Default)]
pub struct SearchArgs {
    /// SpeechSense organization ID; with --space-id and --project-id, uploads left in doubt are looked up instead
    /// of being sent again.
    #[arg(long, env = "B24SENSE_ORGANIZATION_ID")]
    pub organization_id: Option<String>,
    /// SpeechSense space ID (with --organization-id and --project-id).
    #[arg(long, env = "B24SENSE_SPACE_ID")]
    pub space_id: Option<String>,
    /// SpeechSense project ID (with --organization-id and --space-id).
    #[arg(long, env = "B24SENSE_PROJECT_ID")]
    pub project_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Ledger database (as for export).
    #[arg(long, env = "B24SENSE_DATABASE_URL", value_parser = parse_database)]
    pub database: Option<String>,
    /// Only this portal (its ledger key, e.g. the webhook host).
    #[arg(long)]
    pub portal: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Retry failed calls (required: says what is retried).
    #[arg(long, required = true)]
    pub failed: bool,
    /// Only calls that failed with this reason (e.g. download_failed, upload_failed).
    #[arg(long, value_parser = parse_fail_reason)]
    pub reason: Option<String>,
    /// Ledger database (as for export).
    #[arg(long, env = "B24SENSE_DATABASE_URL", value_parser = parse_database)]
    pub database: Option<String>,
    /// Only this portal.
    #[arg(long)]
    pub portal: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Incoming webhook of a portal administrator: https://PORTAL/rest/USER_ID/SECRET/ (scopes telephony, crm, user, disk).
    #[arg(long, env = "B24SENSE_BITRIX24_WEBHOOK", hide_env_values = true, value_parser = parse_webhook)]
    pub bitrix24_webhook: WebhookUrl,
    #[command(flatten)]
    pub speechsense: SpeechSenseArgs,
    #[command(flatten)]
    pub search: SearchArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Ledger database: sqlite:PATH or postgres://… Default: a SQLite file in the user's data directory.
    #[arg(long, env = "B24SENSE_DATABASE_URL", value_parser = parse_database)]
    pub database: Option<String>,
    #[command(flatten)]
    pub concurrency: ConcurrencyArgs,
    /// Recognition language sent with every talk.
    #[arg(long, default_value = "ru-RU", value_parser = parse_language)]
    pub language: String,
    /// What to do with one-channel recordings: upload, skip, or route:<one-channel connection ID>.
    #[arg(long, default_value = "upload", value_parser = parse_mono_policy)]
    pub mono_policy: MonoPolicy,
    /// Bitrix24 plan's REST limits: standard (2 req/s, burst 50) or enterprise (5 req/s, burst 250).
    #[arg(long, value_enum, default_value = "standard")]
    pub rate_plan: RatePlanArg,
    /// List what would be exported (count, total minutes) and upload nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write one JSON line per call (call ID, outcome, reason, talk ID) to this file.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Ledger key of the portal (default: the webhook's host). Keep it when the portal is renamed.
    #[arg(long)]
    pub portal_key: Option<String>,
    /// How long to wait for a ledger that refuses writes (disk full, read-only, locked, unreachable) before
    /// ending with its outcomes in the recovery journal: 90s, 10m, 1h (default 10m; see docs/ledger-faults.md).
    #[arg(long, env = "B24SENSE_LEDGER_GIVE_UP", value_name = "DURATION", value_parser = crate::ledger::parse_give_up)]
    pub ledger_give_up: Option<std::time::Duration>,
    /// Lease length in seconds for calls and the portal (hidden: tests and crash drills use a few seconds).
    #[arg(long, hide = true, value_parser = parse_lease)]
    pub lease_seconds: Option<f64>,
    /// PostgreSQL schema holding the ledger's tables (hidden: test isolation, databases shared with other apps).
    #[arg(long, hide = true, env = "B24SENSE_DATABASE_SCHEMA")]
    pub database_schema: Option<String>,
}

/// How many calls are downloaded and uploaded at once (export, demo and serve).
#[derive(Debug, Args)]
pub struct ConcurrencyArgs {
    /// Pin the calls downloaded and uploaded at once to N. Default: adaptive — from 8, more while throughput
    /// rises and latency holds, fewer on RESOURCE_EXHAUSTED, UNAVAILABLE or rising latency.
    #[arg(long, value_name = "N", value_parser = parse_concurrency)]
    pub concurrency: Option<usize>,
    /// Ceiling of the adaptive concurrency (each call in flight holds at most one 1 MiB chunk).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CEILING, value_parser = parse_concurrency,
          conflicts_with = "concurrency")]
    pub max_concurrency: usize,
}

impl ConcurrencyArgs {
    pub fn setting(&self) -> Concurrency {
        match self.concurrency {
            Some(n) => Concurrency::Pinned(n),
            None => Concurrency::adaptive_up_to(self.max_concurrency),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RatePlanArg {
    Standard,
    Enterprise,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub speechsense: SpeechSenseArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Calls in the emulated portal.
    #[arg(long, default_value = "300", value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub calls: u32,
    /// Operators (Bitrix24 users) in the emulated portal.
    #[arg(long, default_value = "12", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub operators: u32,
    /// Open Lines chat sessions in the emulated portal, exported to the emulated chat connection (0: calls only).
    #[arg(long, default_value = "24", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub chats: u32,
    /// Seed of the generated portal.
    #[arg(long, default_value = "2026")]
    pub seed: u64,
    /// Instead of exporting: also start the application server, install the application in the emulated portal
    /// and print one URL that opens its settings page inside a Bitrix24-like frame (runs until Ctrl-C).
    #[arg(long)]
    pub serve: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum EmulateCommand {
    /// A Bitrix24 portal (REST API, webhook auth, recordings) on 127.0.0.1.
    Bitrix24 {
        /// Port on 127.0.0.1 to serve the portal on (0: any free port).
        #[arg(long, default_value = "8124")]
        port: u16,
        /// Calls in the generated portal.
        #[arg(long, default_value = "300")]
        calls: usize,
        /// Operators (Bitrix24 users) in the generated portal.
        #[arg(long, default_value = "12")]
        users: usize,
        /// Seed of the generated portal: the same seed gives the same calls.
        #[arg(long, default_value = "2026")]
        seed: u64,
        /// Portal downloads (`/rest/download.json`) do not count in the emulated request limit (by default they do).
        #[arg(long)]
        uncounted_downloads: bool,
    },
    /// Yandex SpeechSense's TalkService (gRPC, plaintext) on 127.0.0.1.
    Speechsense {
        /// Port on 127.0.0.1 to serve SpeechSense on (0: any free port).
        #[arg(long, default_value = "8125")]
        port: u16,
        /// API key the emulator accepts.
        #[arg(long, default_value = "test-api-key")]
        api_key: String,
    },
}

/// Empty or blank: no bound (the README's "empty = all calls", also for an empty environment variable).
fn parse_bound(flag: &'static str, s: &str) -> Result<DateBound, String> {
    if s.trim().is_empty() {
        return Ok(DateBound(None));
    }
    TimeBound::parse(flag, s)
        .map(|b| DateBound(Some(b)))
        .map_err(|e| e.message)
}

fn parse_users(flag: &'static str, s: &str) -> Result<UserList, String> {
    parse_user_ids(flag, s).map(UserList).map_err(|e| e.message)
}

fn parse_seconds(_flag: &'static str, s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{t:?} is negative; give a number of seconds ≥ 0"));
    }
    t.parse::<u64>()
        .map_err(|_| format!("{t:?} is not a whole number of seconds"))
}

fn parse_direction(s: &str) -> Result<CallType, String> {
    CallType::parse_name(s).ok_or_else(|| {
        format!("{s:?} is not a call direction; use outgoing, incoming, redirected or callback")
    })
}

fn parse_webhook(s: &str) -> Result<WebhookUrl, String> {
    WebhookUrl::parse(s).map_err(|e| e.to_string())
}

fn parse_endpoint(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s.trim()).map_err(|e| {
        format!("{s:?} is not a URL ({e}); expected e.g. {DEFAULT_SPEECHSENSE_ENDPOINT}")
    })?;
    match url.scheme() {
        "https" | "http" if url.host_str().is_some() => Ok(s.trim().to_string()),
        other => Err(format!(
            "scheme {other:?} is not supported; use https:// (or http:// for a local emulator)"
        )),
    }
}

/// A connection ID; empty (a blank environment variable) = not given, which [`SpeechSenseArgs::connections`] sorts out.
fn parse_connection_id(s: &str) -> Result<String, String> {
    let t = s.trim();
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("may contain only letters, digits, '-' and '_'".into());
    }
    Ok(t.to_string())
}

fn parse_min_client_messages(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?} is not a whole number ≥ 1 (a session without a client message is never uploaded)"
        )),
    }
}

fn parse_api_key(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if t.chars().any(char::is_whitespace) {
        // Never echo the value: it is a secret.
        return Err("contains whitespace; paste only the secret part of the API key".into());
    }
    Ok(t.to_string())
}

pub(crate) fn parse_database(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.starts_with("sqlite:") || t.starts_with("postgres://") || t.starts_with("postgresql://") {
        Ok(t.to_string())
    } else {
        Err("use sqlite:PATH or postgres://USER@HOST/DB".into())
    }
}

fn parse_lease(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if (0.5..=86_400.0).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0.5 and 86400"
        )),
    }
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=256) => Ok(n),
        _ => Err(format!("{s:?} is not between 1 and 256")),
    }
}

/// `--lang ru|en`: the language of user-facing texts (the one type the settings page uses too).
fn lang_parser() -> impl TypedValueParser<Value = Lang> {
    PossibleValuesParser::new(["ru", "en"]).map(|s| if s == "en" { Lang::En } else { Lang::Ru })
}

fn parse_language(s: &str) -> Result<String, String> {
    let t = s.trim();
    let ok = !t.is_empty()
        && t.split(',').all(|tag| {
            let tag = tag.trim();
            let mut parts = tag.split('-');
            let lang = parts.next().unwrap_or_default();
            (2..=3).contains(&lang.len())
                && lang.chars().all(|c| c.is_ascii_alphabetic())
                && parts.all(|p| {
                    (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric())
                })
        });
    if ok {
        Ok(t.to_string())
    } else {
        Err(format!(
            "{t:?} is not a language tag such as ru-RU or \"ru-RU, kk-KZ\""
        ))
    }
}

fn parse_fail_reason(s: &str) -> Result<String, String> {
    s.parse::<b24sense_core::FailReason>()
        .map(|r| r.as_str().to_string())
}

fn parse_mono_policy(s: &str) -> Result<MonoPolicy, String> {
    MonoPolicy::parse(s).ok_or_else(|| format!("{s:?}: use upload, skip or route:<connection ID>"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag and argument of every command, hidden ones included, says what it is for.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let has_help = arg
                    .get_help()
                    .or(arg.get_long_help())
                    .is_some_and(|h| !h.to_string().trim().is_empty());
                if !has_help {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "b24sense", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn validators() {
        assert!(parse_seconds("--min-duration", "-5")
            .unwrap_err()
            .contains("negative"));
        assert_eq!(parse_seconds("--min-duration", "30"), Ok(30));
        assert!(parse_language("ru-RU").is_ok());
        assert!(parse_language("ru-RU, kk-KZ").is_ok());
        assert!(parse_language("русский").is_err());
        assert!(parse_api_key("a b").unwrap_err().contains("whitespace"));
        assert!(!parse_api_key("se cret").unwrap_err().contains("se cret"));
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_database("mysql://x").is_err());
        assert_eq!(parse_connection_id(" "), Ok(String::new()));
        assert!(parse_connection_id("a b").is_err());
        assert_eq!(parse_min_client_messages("3"), Ok(3));
        assert!(parse_min_client_messages("0").is_err());
        assert!(parse_min_client_messages("-1").is_err());
        for empty in ["", "  "] {
            assert!(parse_bound("--since", empty).unwrap().0.is_none());
            assert!(parse_users("--users", empty).unwrap().0.is_empty());
        }
        assert!(parse_bound("--since", "2025-01-01").unwrap().0.is_some());
        assert!(parse_bound("--since", "soon").is_err());
    }

    #[test]
    fn concurrency_is_adaptive_unless_pinned() {
        #[derive(Debug, Parser)]
        struct Flags {
            #[command(flatten)]
            c: ConcurrencyArgs,
        }
        let parse = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("b24sense").chain(args.iter().copied()))
                .map(|f| f.c.setting())
        };
        assert_eq!(parse(&[]).unwrap(), Concurrency::default());
        assert_eq!(
            parse(&["--concurrency", "3"]).unwrap(),
            Concurrency::Pinned(3)
        );
        assert_eq!(
            parse(&["--max-concurrency", "64"]).unwrap(),
            Concurrency::Adaptive {
                initial: 8,
                ceiling: 64
            }
        );
        assert_eq!(
            parse(&["--max-concurrency", "2"]).unwrap(),
            Concurrency::Adaptive {
                initial: 2,
                ceiling: 2
            }
        );
        assert!(parse(&["--concurrency", "3", "--max-concurrency", "64"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
    }
}

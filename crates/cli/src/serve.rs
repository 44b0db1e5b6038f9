//! `b24sense serve`: the Bitrix24 application server (crate `b24sense-web`) behind an HTTPS reverse proxy.

use std::net::SocketAddr;
use std::time::Duration;

use b24sense_bitrix24::RatePlan;
use b24sense_store::SecretKey;
use b24sense_web::{AppServer, ConnectionLimits, WebConfig};
use clap::Args;
use secrecy::SecretString;
use url::Url;

use crate::args::{RatePlanArg, DEFAULT_SPEECHSENSE_ENDPOINT};
use crate::lang::pick;
use crate::{exit, open_store, Failure};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (put an HTTPS reverse proxy in front of it).
    #[arg(long, env = "B24SENSE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The public https:// URL Bitrix24 and browsers reach this server at; the handler is <URL>app, the
    /// install URL <URL>install, events go to <URL>events.
    #[arg(long, env = "B24SENSE_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Url,
    /// The application's client_id (Developer resources → local application, or the Market partner area).
    #[arg(long, env = "B24SENSE_CLIENT_ID")]
    pub client_id: String,
    /// The application's client_secret.
    #[arg(long, env = "B24SENSE_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: String,
    /// SpeechSense gRPC endpoint.
    #[arg(long, env = "B24SENSE_SPEECHSENSE_ENDPOINT", default_value = DEFAULT_SPEECHSENSE_ENDPOINT)]
    pub speechsense_endpoint: String,
    /// Database: sqlite:PATH or postgres://… (portals, settings, the ledger).
    #[arg(long, env = "B24SENSE_DATABASE_URL")]
    pub database: Option<String>,
    /// Calls in flight per portal (adaptive unless pinned).
    #[command(flatten)]
    pub concurrency: crate::args::ConcurrencyArgs,
    /// Seconds between catch-up passes for portals with continuous sync.
    #[arg(long, default_value = "300")]
    pub sync_interval: u64,
    /// Hours during which continuous sync keeps checking for a recording Bitrix24 has not attached yet (first
    /// check after 2 minutes, then with doubling spacing, at most hourly); after that the call is `no_recording`.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u64).range(1..=720))]
    pub recording_horizon: u64,
    /// Bitrix24 plan's REST limits: standard (2 req/s, burst 50) or enterprise (5 req/s, burst 250).
    #[arg(long, value_enum, default_value = "standard")]
    pub rate_plan: RatePlanArg,
    /// Seconds between keep-alive passes that refresh the tokens of idle installations.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub token_keepalive_interval: u64,
    /// Days after a token rotation at which an idle installation's tokens are refreshed (refresh tokens may
    /// expire after 28 days: keep it well below).
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub token_keepalive_age: u64,
    /// Seconds without a heartbeat after which a running export is taken for one whose server is gone: it is
    /// shown as interrupted and resumed (the heartbeat beats every 10 s at most).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(40..=3600))]
    pub run_stale_after: u64,
    /// Allowed OAuth servers (host or host:port): an install is proven by exchanging its refresh token at one of
    /// them, and an installation's server_endpoint must be one of them.
    #[arg(long = "oauth-server", env = "B24SENSE_OAUTH_SERVERS", value_delimiter = ',', default_values_t = b24sense_web::DEFAULT_OAUTH_SERVERS.map(String::from))]
    pub oauth_servers: Vec<String>,
    /// Seconds a connection has to send a whole request header (also the longest a kept-alive connection may
    /// sit idle between requests).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_timeout: u64,
    /// Seconds a request has to send its whole body.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout: u64,
    /// Seconds without a byte moving either way after which a connection is closed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout: u64,
    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub max_connections: u64,
    /// For local emulators only: accept a plain http:// --public-url and portals over http (e.g. the Bitrix24
    /// emulator of `b24sense emulate bitrix24`). Never on a server Bitrix24 reaches from the internet.
    #[arg(long)]
    pub allow_http_portals: bool,
}

fn parse_public_url(s: &str) -> Result<Url, String> {
    let mut u = Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    if !matches!(u.scheme(), "https" | "http") {
        return Err("must be an https:// URL".into());
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

pub async fn run(a: ServeArgs) -> Result<u8, Failure> {
    // First the key: without it nothing secret can be stored or read.
    let key = SecretKey::from_env().map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    if key.has_previous() {
        let (id, old) = (key.id(), SecretKey::OLD_ENV);
        err!(
            "{}",
            pick(
                format!(
                    "b24sense serve: идёт смена ключа: секреты записываются под ключом {id}, ключ из {old} ещё \
                     читается; выполните `b24sense keys rotate` и перезапустите без него"
                ),
                format!(
                    "b24sense serve: key rotation under way: secrets are written under key {id}, the one in {old} \
                     is still read; run `b24sense keys rotate`, then restart without it"
                ),
            )
        );
    }
    if a.public_url.scheme() != "https" && !a.allow_http_portals {
        return Err(Failure::new(
            exit::USAGE,
            pick(
                "--public-url: Bitrix24 открывает приложения только по https://; для локального эмулятора \
                 добавьте --allow-http-portals",
                "--public-url: Bitrix24 needs an https:// handler URL; for a local emulator add \
                 --allow-http-portals",
            ),
        ));
    }
    // Outcomes a failing ledger could not take are journaled (PostgreSQL: in the data directory) and imported by
    // the portal's next run.
    let store = crate::ledger::with_recovery(open_store(&a.database).await?);
    let mut config = WebConfig::new(
        a.public_url.clone(),
        a.client_id,
        SecretString::from(a.client_secret),
        a.speechsense_endpoint,
    );
    // Debug builds only: a task that panics while the secrets are loaded, for the canary test (what a panic
    // prints must carry no secret).
    #[cfg(debug_assertions)]
    if std::env::var_os("B24SENSE_TEST_PANIC").is_some() {
        let secret = config.client_secret.clone();
        tokio::spawn(async move { panic!("B24SENSE_TEST_PANIC; client secret {secret:?}") });
    }
    config.concurrency = a.concurrency.setting();
    config.sync_interval = Duration::from_secs(a.sync_interval.max(10));
    config.late_recordings.horizon = Duration::from_secs(a.recording_horizon * 3600);
    config.allow_http_portals = a.allow_http_portals;
    config.oauth_servers = a.oauth_servers;
    config.keepalive_interval = Duration::from_secs(a.token_keepalive_interval);
    config.keepalive_age = Duration::from_secs(a.token_keepalive_age * 86_400);
    config.run_stale_after = Duration::from_secs(a.run_stale_after);
    config.connections = ConnectionLimits {
        header_timeout: Duration::from_secs(a.header_timeout),
        body_timeout: Duration::from_secs(a.body_timeout),
        idle_timeout: Duration::from_secs(a.idle_timeout),
        max_connections: a.max_connections as usize,
    };
    config.rate = match a.rate_plan {
        RatePlanArg::Standard => RatePlan::STANDARD,
        RatePlanArg::Enterprise => RatePlan::ENTERPRISE,
    };
    let server =
        AppServer::new(config, store, key).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, format!("--listen {}: {e}", a.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    let url = &a.public_url;
    err!(
        "{}",
        pick(
            format!("b24sense serve: слушаю {addr}; обработчик {url}app, установка {url}install"),
            format!("b24sense serve: listening on {addr}; handler {url}app, install {url}install"),
        )
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    #[cfg(unix)]
    {
        let s = shutdown.clone();
        tokio::spawn(async move {
            if let Ok(mut t) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                t.recv().await;
                s.cancel();
            }
        });
    }
    server
        .serve(listener, shutdown)
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    Ok(exit::OK)
}

//! `b24sense demo --serve`: the application as a user sees it, with nothing to set up. Both emulators and the
//! application server start on loopback, the application is installed in the emulated portal (its install POST,
//! `BX24.installFinish()`, `ONAPPINSTALL`, as a portal does), and one URL is printed: the emulated portal's page
//! that opens the application's settings page in its frame. Runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{ConnectionKind, SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_store::SecretKey;
use b24sense_web::{AppServer, WebConfig};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::args::DemoArgs;
use crate::lang::{self, pick, Lang};
use crate::{exit, Failure};

/// How long the server has to stop after Ctrl-C before the demo exits anyway.
const STOP_LIMIT: Duration = Duration::from_secs(10);

pub async fn run(a: DemoArgs) -> Result<u8, Failure> {
    let failed = |what: &str, e: String| {
        Failure::new(
            exit::UNAVAILABLE,
            pick(
                format!("демо не запустилось: {what}"),
                format!("the demo could not start: {what}"),
            ),
        )
        .with_detail(e)
    };
    let portal = PortalConfig {
        seed: a.seed,
        calls: a.calls as usize,
        users: a.operators as usize,
        ..PortalConfig::default()
    };
    let emu = Bitrix24Emulator::start(portal).await.map_err(|e| {
        failed(
            pick("эмулятор Bitrix24", "the Bitrix24 emulator"),
            e.to_string(),
        )
    })?;
    let speech_config = SpeechSenseConfig::default();
    let api_key = speech_config.api_keys[0].clone();
    let connection_id = speech_config
        .connection_id(ConnectionKind::TwoChannelAudio)
        .unwrap_or_default()
        .to_string();
    let speech = SpeechSenseEmulator::start(speech_config)
        .await
        .map_err(|e| {
            failed(
                pick("эмулятор SpeechSense", "the SpeechSense emulator"),
                e.to_string(),
            )
        })?;

    // A fresh database per demo unless one is given; the key of its stored secrets lives only in this process.
    let tmp = tempfile::tempdir().map_err(|e| {
        failed(
            pick("временный каталог", "a temporary directory"),
            e.to_string(),
        )
    })?;
    let database = a
        .run
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", tmp.path().join("demo.db").display()));
    let store = crate::open_store(&Some(database)).await?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| {
            failed(
                pick("порт сервера приложения", "the application server's port"),
                e.to_string(),
            )
        })?;
    let addr = listener.local_addr().map_err(|e| {
        failed(
            pick("порт сервера приложения", "the application server's port"),
            e.to_string(),
        )
    })?;
    let base = format!("http://{addr}/");
    let (client_id, client_secret) = emu.app_credentials();
    let mut config = WebConfig::new(
        url::Url::parse(&base).map_err(|e| failed("URL", e.to_string()))?,
        client_id.to_string(),
        SecretString::from(client_secret.to_string()),
        speech.endpoint(),
    );
    config.allow_http_portals = true;
    config.oauth_servers = vec![format!("127.0.0.1:{}", emu.addr().port())];
    // The emulator serves a stand-in for the BX24 SDK: nothing is loaded from outside the machine.
    config.bitrix24_sdk = emu.sdk_url();
    config.concurrency = a.run.concurrency.setting();
    let server = AppServer::new(config, store, SecretKey::generate()).map_err(|e| {
        failed(
            pick("сервер приложения", "the application server"),
            e.to_string(),
        )
    })?;
    let stop = CancellationToken::new();
    let mut serving = tokio::spawn(server.serve(listener, stop.clone()));

    let lang = match lang::current() {
        Lang::Ru => "ru",
        Lang::En => "en",
    };
    let install = emu.install_app(&format!("{base}install"), lang).await;
    match install {
        Ok(i) if i.installed => {}
        Ok(i) => {
            stop.cancel();
            return Err(failed(
                pick(
                    "установка приложения в эмулированный портал",
                    "installing the application in the emulated portal",
                ),
                format!(
                    "HTTP {}: {}",
                    i.status,
                    i.body.chars().take(300).collect::<String>()
                ),
            ));
        }
        Err(e) => {
            stop.cancel();
            return Err(failed(
                pick(
                    "установка приложения в эмулированный портал",
                    "installing the application in the emulated portal",
                ),
                e.to_string(),
            ));
        }
    }
    let url = emu.app_frame_url(&format!("{base}app"), lang);
    print_ready(&url, &connection_id, &api_key, a.calls);

    tokio::select! {
        _ = crate::wait_for_signal() => {}
        r = &mut serving => {
            // The server ended by itself: say why.
            let detail = match r {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "stopped".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(failed(pick("сервер приложения", "the application server"), detail));
        }
    }
    stop.cancel();
    err!("{}", pick("демо: остановка", "demo: stopping"));
    // The server's tasks end with the token; do not wait forever for one that does not.
    let _ = tokio::time::timeout(STOP_LIMIT, serving).await;
    drop(emu);
    drop(speech);
    drop(tmp);
    Ok(exit::OK)
}

fn print_ready(url: &str, connection_id: &str, api_key: &str, calls: u32) {
    out!(
        "{}",
        pick(
            format!(
                "Демо готово: эмулированный портал ({calls} звонков) с установленным приложением, эмулятор \
                 SpeechSense и сервер приложения — всё на этой машине."
            ),
            format!(
                "The demo is ready: an emulated portal ({calls} calls) with the application installed, a SpeechSense \
                 emulator and the application server — all on this machine."
            ),
        )
    );
    out!("");
    out!("{}", pick("Откройте в браузере:", "Open in a browser:"));
    out!("  {url}");
    out!("");
    out!(
        "{}",
        pick(
            "В «Настройках» нажмите «Редактировать» и укажите:",
            "Under Settings, press Edit and enter:"
        )
    );
    out!(
        "  {} {connection_id}",
        pick("ID подключения:", "Connection ID:")
    );
    out!("  {} {api_key}", pick("API-ключ:      ", "API key:      "));
    out!(
        "{}",
        pick(
            "затем нажмите «Проверить подключение», «Сохранить» и «Запустить выгрузку». Остановить демо: Ctrl-C.",
            "then press Check connection, Save and Start export. Stop the demo: Ctrl-C.",
        )
    );
}

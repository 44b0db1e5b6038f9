//! `b24sense emulate bitrix24|speechsense`: one emulator on a local port until Ctrl-C, printing on start what a
//! user needs — its address, its credentials and IDs, and ready `export`/`serve` command lines.

use std::net::SocketAddr;

use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{ConnectionKind, SpeechSenseConfig, SpeechSenseEmulator};

use crate::args::EmulateCommand;
use crate::lang::pick;
use crate::{exit, Failure};

/// Where `emulate speechsense` listens by default (the `emulate bitrix24` hints point there).
const SPEECHSENSE_PORT: u16 = 8125;

pub async fn run(cmd: EmulateCommand) -> Result<u8, Failure> {
    match cmd {
        EmulateCommand::Bitrix24 {
            port,
            calls,
            users,
            seed,
            uncounted_downloads,
        } => {
            let config = PortalConfig {
                seed,
                calls,
                users,
                count_downloads: !uncounted_downloads,
                ..PortalConfig::default()
            };
            let emu = Bitrix24Emulator::start_on(config, SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .map_err(|e| cannot_start("Bitrix24", port, e))?;
            print_bitrix24(&emu);
            wait_for_stop().await;
            emu.shutdown();
        }
        EmulateCommand::Speechsense { port, api_key } => {
            let config = SpeechSenseConfig {
                api_keys: vec![api_key],
                ..SpeechSenseConfig::default()
            };
            let emu =
                SpeechSenseEmulator::start_on(config, SocketAddr::from(([127, 0, 0, 1], port)))
                    .await
                    .map_err(|e| cannot_start("SpeechSense", port, e))?;
            print_speechsense(&emu);
            wait_for_stop().await;
            drop(emu);
        }
    }
    Ok(exit::OK)
}

fn cannot_start(which: &str, port: u16, e: std::io::Error) -> Failure {
    Failure::new(
        exit::UNAVAILABLE,
        pick(
            format!(
                "не удалось запустить эмулятор {which} на 127.0.0.1:{port}. Порт занят? Укажите другой: --port N \
                 (0 — любой свободный)."
            ),
            format!(
                "cannot start the {which} emulator on 127.0.0.1:{port}. Is the port taken? Choose another with \
                 --port N (0: any free port)."
            ),
        ),
    )
    .with_detail(e.to_string())
}

fn print_bitrix24(emu: &Bitrix24Emulator) {
    let c = emu.config();
    let base = emu.base_url();
    let webhook = emu.webhook_url();
    let (client_id, client_secret) = emu.app_credentials();
    let oauth = format!("127.0.0.1:{}", emu.addr().port());
    let (calls, chats, users, seed) = (c.calls, c.open_lines.sessions, c.users, c.seed);
    out!(
        "{}",
        pick(
            format!(
                "Эмулятор Bitrix24: звонков {calls}, сессий Открытых линий {chats}, операторов {users}, seed {seed}"
            ),
            format!(
                "Bitrix24 emulator: {calls} calls, {chats} Open Lines chat sessions, {users} operators, seed {seed}"
            ),
        )
    );
    out!("  {} {base}", pick("адрес:          ", "address:       "));
    out!(
        "  {} {webhook}",
        pick("вебхук:         ", "webhook URL:   ")
    );
    out!(
        "  {} client_id {client_id}, client_secret {client_secret}, OAuth {oauth}",
        pick("приложение:     ", "application:   ")
    );
    out!(
        "  {} {base}_emulator/stats",
        pick("статистика:     ", "stats:         ")
    );
    out!("");
    out!(
        "{}",
        pick(
            format!(
                "Выгрузка из него (в другом окне: b24sense emulate speechsense, порт {SPEECHSENSE_PORT}):"
            ),
            format!(
                "Export from it (in another terminal: b24sense emulate speechsense, port {SPEECHSENSE_PORT}):"
            ),
        )
    );
    let speech = SpeechSenseConfig::default();
    let connection = speech
        .connection_id(ConnectionKind::TwoChannelAudio)
        .unwrap_or("conn-two-channel");
    let chat = speech
        .connection_id(ConnectionKind::Chat)
        .unwrap_or("conn-chat");
    out!(
        "  b24sense export --bitrix24-webhook {webhook} --speechsense-endpoint http://127.0.0.1:{SPEECHSENSE_PORT} \
         --connection-id {connection} --chat-connection-id {chat} --api-key {key}",
        key = speech.api_keys[0]
    );
    out!(
        "{}",
        pick(
            "Сервер приложения для него (установить приложение в портал и открыть страницу настроек проще всего \
             через b24sense demo --serve):",
            "The application server for it (the easiest way to install the application and open its settings page \
             is b24sense demo --serve):",
        )
    );
    out!(
        "  B24SENSE_SECRET_KEY=$(b24sense keys generate) b24sense serve --allow-http-portals \
         --public-url http://127.0.0.1:8080/ --listen 127.0.0.1:8080 --client-id {client_id} \
         --client-secret {client_secret} --oauth-server {oauth} \
         --speechsense-endpoint http://127.0.0.1:{SPEECHSENSE_PORT}"
    );
    out!("{}", pick("Остановить: Ctrl-C.", "Stop: Ctrl-C."));
}

/// How a connection kind is named to the user.
pub fn kind_name(kind: ConnectionKind) -> &'static str {
    match kind {
        ConnectionKind::TwoChannelAudio => pick(
            "двухканальное аудио — для звонков",
            "two-channel audio — for calls",
        ),
        ConnectionKind::OneChannelAudio => pick(
            "одноканальное аудио — для моно-записей (--mono-policy route:ID)",
            "one-channel audio — for mono recordings (--mono-policy route:ID)",
        ),
        ConnectionKind::Chat => pick("чаты", "chats"),
    }
}

fn print_speechsense(emu: &SpeechSenseEmulator) {
    let config = emu.config();
    let endpoint = emu.endpoint();
    let key = config.api_keys.first().cloned().unwrap_or_default();
    out!(
        "{}",
        pick(
            "Эмулятор SpeechSense (gRPC без TLS)",
            "SpeechSense emulator (gRPC, plaintext)"
        )
    );
    out!("  {} {endpoint}", pick("адрес:       ", "endpoint:   "));
    out!("  {} {key}", pick("API-ключ:    ", "API key:    "));
    out!("  {}", pick("подключения:", "connections:"));
    for c in &config.connections {
        out!("    {:<18} {}", c.id, kind_name(c.kind));
    }
    let connection = config
        .connection_id(ConnectionKind::TwoChannelAudio)
        .unwrap_or("conn-two-channel")
        .to_string();
    let chat = config
        .connection_id(ConnectionKind::Chat)
        .unwrap_or("conn-chat")
        .to_string();
    out!("");
    out!(
        "{}",
        pick(
            "Проверка ключа и подключения:",
            "Check the key and the connection:"
        )
    );
    out!(
        "  b24sense check --speechsense-endpoint {endpoint} --connection-id {connection} --chat-connection-id {chat} \
         --api-key {key}"
    );
    out!(
        "{}",
        pick(
            "Выгрузка в него (в другом окне: b24sense emulate bitrix24 — он печатает свой вебхук):",
            "Export into it (in another terminal: b24sense emulate bitrix24, which prints its webhook):",
        )
    );
    out!(
        "  b24sense export --bitrix24-webhook WEBHOOK_URL --speechsense-endpoint {endpoint} \
         --connection-id {connection} --chat-connection-id {chat} --api-key {key}"
    );
    out!("{}", pick("Остановить: Ctrl-C.", "Stop: Ctrl-C."));
}

/// Until Ctrl-C or SIGTERM.
pub async fn wait_for_stop() {
    crate::wait_for_signal().await;
}

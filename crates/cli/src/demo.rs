//! `b24sense demo`: the export against built-in emulators (`--serve`: the application instead, see `demo_serve`).

use b24sense_bitrix24::WebhookUrl;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, OpenLinesConfig, PortalConfig};
use b24sense_emulators::speechsense::{ConnectionKind, SpeechSenseConfig, SpeechSenseEmulator};
use serde_json::json;

use crate::args::DemoArgs;
use crate::lang::pick;
use crate::{exit, export_command, ExportTarget, Failure};

/// Starts both emulators on free loopback ports and runs `export` against them — the same code path as a real export:
/// the calls to the two-channel audio connection and (unless `--chats 0`) the Open Lines chats to the chat one.
pub async fn run(a: DemoArgs) -> Result<u8, Failure> {
    let portal = PortalConfig {
        seed: a.seed,
        calls: a.calls as usize,
        users: a.operators as usize,
        open_lines: OpenLinesConfig {
            sessions: a.chats as usize,
            ..OpenLinesConfig::default()
        },
        ..PortalConfig::default()
    };
    let bitrix = Bitrix24Emulator::start(portal).await.map_err(|e| {
        Failure::new(
            exit::UNAVAILABLE,
            pick(
                "не удалось запустить эмулятор Bitrix24",
                "cannot start the Bitrix24 emulator",
            ),
        )
        .with_detail(e.to_string())
    })?;
    let speech_config = SpeechSenseConfig::default();
    let api_key = speech_config.api_keys[0].clone();
    let connection_id = speech_config.connections[0].id.clone();
    let chat_connection_id = match a.chats {
        0 => None,
        _ => speech_config
            .connection_id(ConnectionKind::Chat)
            .map(str::to_string),
    };
    let speech = SpeechSenseEmulator::start(speech_config)
        .await
        .map_err(|e| {
            Failure::new(
                exit::UNAVAILABLE,
                pick(
                    "не удалось запустить эмулятор SpeechSense",
                    "cannot start the SpeechSense emulator",
                ),
            )
            .with_detail(e.to_string())
        })?;
    if !a.run.json {
        let (calls, chats, portal, endpoint) =
            (a.calls, a.chats, bitrix.base_url(), speech.endpoint());
        err!(
            "{}",
            pick(
                format!(
                    "демо: эмулированный портал (звонков: {calls}, сессий Открытых линий: {chats}) на {portal} · \
                     эмулятор SpeechSense на {endpoint}"
                ),
                format!(
                    "demo: emulated portal with {calls} calls and {chats} Open Lines chats at {portal} · SpeechSense \
                     emulator at {endpoint}"
                ),
            )
        );
    }

    // A fresh ledger per demo unless one is given, so every demo shows a full export.
    let tmp = tempfile::tempdir().map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    let mut run = a.run;
    if run.database.is_none() {
        run.database = Some(format!(
            "sqlite:{}",
            tmp.path().join("demo-ledger.db").display()
        ));
    }
    let webhook = WebhookUrl::parse(&bitrix.webhook_url())
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    let target = ExportTarget {
        search: None,
        portal_key: run
            .portal_key
            .clone()
            .unwrap_or_else(|| "demo.bitrix24.local".to_string()),
        webhook,
        endpoint: speech.endpoint(),
        connection_id: Some(connection_id.clone()),
        chat_connection_id: chat_connection_id.clone(),
        api_key,
    };
    let extra: crate::DemoStats = Box::new(move |v: &mut serde_json::Value| {
        let portal = bitrix.stats();
        let talks = speech.talks();
        let on = |c: &str| talks.iter().filter(|t| t.connection_id == c).count();
        v["emulators"] = json!({
            "portal_http_requests": portal.http_requests,
            "portal_rate_limited": portal.rate_limited,
            "portal_bytes_sent": portal.bytes_sent,
            "portal_requests_by_method": portal.by_method,
            "talks_stored": on(&connection_id),
        });
        if let Some(chat) = &chat_connection_id {
            v["emulators"]["chat_talks_stored"] = json!(on(chat));
        }
    });
    export_command(target, &a.filter, &run, Some(extra)).await
}

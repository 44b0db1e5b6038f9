//! `b24sense demo`: the export against built-in emulators (`--serve`: the application instead, see `demo_serve`).

use b24sense_bitrix24::WebhookUrl;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use serde_json::json;

use crate::args::DemoArgs;
use crate::lang::pick;
use crate::{exit, export_command, ExportTarget, Failure};

/// Starts both emulators on free loopback ports and runs `export` against them — the same code path as a real export.
pub async fn run(a: DemoArgs) -> Result<u8, Failure> {
    let portal = PortalConfig {
        seed: a.seed,
        calls: a.calls as usize,
        users: a.operators as usize,
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
        let (calls, portal, endpoint) = (a.calls, bitrix.base_url(), speech.endpoint());
        err!(
            "{}",
            pick(
                format!("демо: эмулированный портал ({calls} звонков) на {portal} · эмулятор SpeechSense на {endpoint}"),
                format!("demo: emulated portal with {calls} calls at {portal} · SpeechSense emulator at {endpoint}"),
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
        connection_id,
        api_key,
    };
    let extra: crate::DemoStats = Box::new(move |v: &mut serde_json::Value| {
        let portal = bitrix.stats();
        v["emulators"] = json!({
            "portal_http_requests": portal.http_requests,
            "portal_rate_limited": portal.rate_limited,
            "portal_bytes_sent": portal.bytes_sent,
            "portal_requests_by_method": portal.by_method,
            "talks_stored": speech.talk_count(),
        });
    });
    export_command(target, &a.filter, &run, Some(extra)).await
}

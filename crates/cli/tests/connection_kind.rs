//! The real `b24sense` binary tells a two-channel audio connection from a chat or one-channel one: `check` refuses
//! the wrong type with a message naming what was given and what is needed, and `export` refuses it before it lists
//! or uploads anything.

use std::process::Output;

use assert_cmd::Command;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{
    Code, ConnectionKind, SpeechSenseConfig, SpeechSenseEmulator,
};

/// Exit code of a refusal (wrong key, wrong connection).
const REFUSED: i32 = 3;

struct Services {
    portal: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    key: String,
    dir: tempfile::TempDir,
}

async fn services() -> Services {
    let portal = Bitrix24Emulator::start(PortalConfig {
        calls: 20,
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let config = SpeechSenseConfig::default();
    let key = config.api_keys[0].clone();
    let speech = SpeechSenseEmulator::start(config).await.unwrap();
    Services {
        portal,
        speech,
        key,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Services {
    /// The emulator's connection of this type.
    fn connection(&self, kind: ConnectionKind) -> String {
        self.speech
            .config()
            .connection_id(kind)
            .expect("the default emulator has one connection of each type")
            .to_string()
    }

    fn command(&self, sub: &str, connection_id: &str) -> Command {
        let mut cmd = Command::cargo_bin("b24sense").unwrap();
        cmd.env_clear()
            .env("HOME", self.dir.path())
            .arg(sub)
            .args(["--speechsense-endpoint", &self.speech.endpoint()])
            .args(["--connection-id", connection_id])
            .args(["--api-key", &self.key]);
        cmd
    }
}

/// Runs a command off the async runtime (the emulators live on it).
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_two_channel_and_refuses_chat_and_mono() {
    let s = services().await;
    let ok = run({
        let mut c = s.command("check", &s.connection(ConnectionKind::TwoChannelAudio));
        c.args(["--lang", "ru"]);
        c
    })
    .await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        text(&ok).contains("Успешный запрос к SpeechSense"),
        "{}",
        text(&ok)
    );

    let chat = s.connection(ConnectionKind::Chat);
    let mono = s.connection(ConnectionKind::OneChannelAudio);
    let cases = [
        (
            chat.as_str(),
            "ru",
            format!("Подключение {chat} — для чатов; для звонков нужно подключение для двухканального аудио."),
        ),
        (
            mono.as_str(),
            "en",
            format!("Connection {mono} is for one-channel audio; calls need a connection for two-channel audio."),
        ),
    ];
    for (connection, lang, expected) in cases {
        let out = run({
            let mut c = s.command("check", connection);
            c.args(["--lang", lang]);
            c
        })
        .await;
        assert_eq!(
            out.status.code(),
            Some(REFUSED),
            "{connection}: {}",
            text(&out)
        );
        let printed = text(&out);
        assert!(printed.contains(&expected), "{connection}: {printed}");
        assert_eq!(
            printed.matches(&expected).count(),
            1,
            "said once: {printed}"
        );
    }
    assert_eq!(s.speech.talk_count(), 0, "a check never creates a talk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_a_chat_connection_is_refused_before_anything_is_uploaded() {
    let s = services().await;
    let chat = s.connection(ConnectionKind::Chat);
    let out = run({
        let mut c = s.command("export", &chat);
        c.args(["--bitrix24-webhook", &s.portal.webhook_url()])
            .args([
                "--database",
                &format!("sqlite:{}", s.dir.path().join("ledger.db").display()),
            ])
            .args(["--portal-key", "kind-portal"]);
        c
    })
    .await;
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(REFUSED), "{printed}");
    // The message names the connection given, its type and the type needed (in the run's language).
    assert!(printed.contains(&chat), "{printed}");
    assert!(
        printed.contains("для чатов; для звонков нужно подключение для двухканального аудио")
            || printed.contains("is for chats; calls need a connection for two-channel audio"),
        "{printed}"
    );
    assert!(!printed.contains("finished"), "{printed}");
    // Nothing was uploaded: SpeechSense saw only the refused check, and no call was listed or downloaded.
    assert_eq!(s.speech.talk_count(), 0);
    let calls = s.speech.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].method, calls[0].code),
        ("UploadAsStream", Code::InvalidArgument)
    );
    let portal = s.portal.stats();
    assert_eq!(portal.downloads, 0, "{portal:?}");
    assert!(
        !portal.by_method.contains_key("voximplant.statistic.get"),
        "{portal:?}"
    );
}

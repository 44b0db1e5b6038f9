//! What the chat tests of the real binary share: the emulators (a portal with Open Lines, SpeechSense with its
//! three connections), the binary's runs against them, and the emulated portal's sessions as the oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use b24sense_emulators::bitrix24::{
    Bitrix24Emulator, ChatSessionInfo, OpenLinesConfig, PortalConfig,
};
use b24sense_emulators::speechsense::{
    ConnectionKind, SpeechSenseConfig, SpeechSenseEmulator, StoredTalk,
};
use serde_json::Value;

pub const CALLS: &str = "conn-two-channel";
pub const CHATS: &str = "conn-chat";
pub const MONO: &str = "conn-mono";

pub struct World {
    pub portal: Bitrix24Emulator,
    pub speech: SpeechSenseEmulator,
    pub key: String,
    pub dir: tempfile::TempDir,
}

pub async fn world(calls: usize, sessions: usize, upload_latency: Duration) -> World {
    let portal = Bitrix24Emulator::start(PortalConfig {
        calls,
        seed: 17,
        open_lines: OpenLinesConfig {
            sessions,
            ..OpenLinesConfig::default()
        },
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let config = SpeechSenseConfig {
        upload_latency,
        ..SpeechSenseConfig::default()
    };
    assert_eq!(config.connection_id(ConnectionKind::Chat), Some(CHATS));
    assert_eq!(
        config.connection_id(ConnectionKind::TwoChannelAudio),
        Some(CALLS)
    );
    let key = config.api_keys[0].clone();
    let speech = SpeechSenseEmulator::start(config).await.unwrap();
    World {
        portal,
        speech,
        key,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// Client messages the talk will hold (text or a file).
pub fn client_messages(s: &ChatSessionInfo) -> usize {
    s.messages
        .iter()
        .filter(|(_, role, _, text, file)| {
            *role == "client" && (!text.trim().is_empty() || file.is_some())
        })
        .count()
}

impl World {
    /// `b24sense export` against the emulators (no connection flag: the caller gives them).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("b24sense"));
        cmd.env_clear()
            .env("HOME", self.dir.path())
            .arg("export")
            .args(["--bitrix24-webhook", &self.portal.webhook_url()])
            .args(["--speechsense-endpoint", &self.speech.endpoint()])
            .args(["--api-key", &self.key])
            .args(["--database", &format!("sqlite:{}", self.db().display())])
            .args(["--portal-key", "chat-portal"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    /// Runs the export to its end, off the async runtime (the emulators live on it).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs `--json` and reads the summary; panics unless the exit code is `code`.
    pub async fn json(&self, args: &[&str], code: i32) -> Value {
        let out = self.run(&[args, &["--json"][..]].concat()).await;
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    }

    /// Session IDs the portal would have uploaded now: closed, with at least `min` client messages.
    pub fn expected(&self, min: usize) -> BTreeSet<u64> {
        self.portal
            .chat_sessions()
            .iter()
            .filter(|s| s.completed && client_messages(s) >= min)
            .map(|s| s.session_id)
            .collect()
    }

    /// Chat talks stored, by the session ID in their fields.
    pub fn chat_talks(&self) -> BTreeMap<u64, Vec<StoredTalk>> {
        let mut by_session: BTreeMap<u64, Vec<StoredTalk>> = BTreeMap::new();
        for t in self.speech.talks() {
            if t.connection_id != CHATS {
                continue;
            }
            let id = t.fields["session_id"].parse().unwrap();
            by_session.entry(id).or_default().push(t);
        }
        by_session
    }

    pub fn talks_on(&self, connection: &str) -> usize {
        self.speech
            .talks()
            .iter()
            .filter(|t| t.connection_id == connection)
            .count()
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn report_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Session IDs of the report's chat lines with this outcome.
pub fn sessions_with(lines: &[Value], outcome: &str) -> BTreeSet<u64> {
    lines
        .iter()
        .filter(|l| l["kind"] == "chat" && l["outcome"] == outcome)
        .map(|l| l["session_id"].as_u64().unwrap())
        .collect()
}

/// Spawns an export writing its output to `<dir>/<log>.out|.err`.
pub fn spawn(w: &World, args: &[&str], log: &str) -> Child {
    let out = std::fs::File::create(w.dir.path().join(format!("{log}.out"))).unwrap();
    let err = std::fs::File::create(w.dir.path().join(format!("{log}.err"))).unwrap();
    w.command(args)
        .env("RUST_LOG", "warn")
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

pub fn log(w: &World, log: &str) -> String {
    std::fs::read_to_string(w.dir.path().join(format!("{log}.err"))).unwrap_or_default()
}

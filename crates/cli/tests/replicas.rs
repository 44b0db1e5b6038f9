//! Several replicas of the real `b24sense` binary on one PostgreSQL ledger (isolated in a schema of its own) and one
//! emulated portal: one holds the portal lease at a time, the holder is killed mid-run, another takes over (at once:
//! it finds the holder's process gone on this machine); every recorded call arrives exactly once and the portal
//! never answers "rate limited".
//!
//! Needs the machine's PostgreSQL at 127.0.0.1:5432, database `test`, user `postgres` (as CI provides).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use b24sense_core::LedgerState;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use b24sense_store::Store;
use common::{until, wait};

const DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";
const PORTAL: &str = "replica-portal";

struct World {
    portal: Bitrix24Emulator,
    speech: SpeechSenseEmulator,
    key: String,
    connection: String,
    schema: String,
    dir: tempfile::TempDir,
}

impl World {
    fn spawn(&self, log: &str) -> Child {
        let out = std::fs::File::create(self.dir.path().join(format!("{log}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("{log}.err"))).unwrap();
        Command::new(assert_cmd::cargo::cargo_bin("b24sense"))
            .env_clear()
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "warn")
            .env("B24SENSE_DATABASE_SCHEMA", &self.schema)
            .arg("export")
            .args(["--bitrix24-webhook", &self.portal.webhook_url()])
            .args(["--speechsense-endpoint", &self.speech.endpoint()])
            .args(["--connection-id", &self.connection])
            .args(["--api-key", &self.key])
            .args(["--database", DATABASE])
            .args(["--portal-key", PORTAL, "--json"])
            .args(["--lease-seconds", "4", "--concurrency", "2"])
            .args(["--organization-id", "org-1", "--space-id", "space-1"])
            .args(["--project-id", "project-1"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap()
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{log}.err"))).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_portal_holder_killed_exactly_once_and_never_rate_limited() {
    let started = Instant::now();
    let portal = Bitrix24Emulator::start(PortalConfig {
        calls: 120,
        seed: 7,
        // More Disk-only recordings: their downloads go through the portal's request bucket.
        disk_only_share: 0.3,
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let config = SpeechSenseConfig {
        upload_latency: Duration::from_millis(150),
        ..SpeechSenseConfig::default()
    };
    let key = config.api_keys[0].clone();
    let connection = config.connections[0].id.clone();
    let speech = SpeechSenseEmulator::start(config).await.unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("replicas_{}_{}", std::process::id(), nanos % 1_000_000_000);
    let w = World {
        portal,
        speech,
        key,
        connection,
        schema,
        dir: tempfile::tempdir().unwrap(),
    };
    let recorded: BTreeSet<u64> = w
        .portal
        .call_rows()
        .iter()
        .filter_map(|r| r["ID"].as_str()?.parse::<u64>().ok())
        .filter(|id| w.portal.recording(*id).is_some())
        .collect();

    // The first replica takes the portal; the two others start while it works and wait for its lease.
    let mut holder = w.spawn("r1");
    until(Duration::from_secs(20), "the first uploads", || {
        w.speech.talk_count() >= 5
    })
    .await;
    let mut r2 = w.spawn("r2");
    let mut r3 = w.spawn("r3");
    until(Duration::from_secs(20), "more uploads", || {
        w.speech.talk_count() >= 25
    })
    .await;
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder is still running"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let at_kill = w.speech.talk_count();
    assert!(at_kill < recorded.len(), "killed mid-run");

    let s2 = wait(&mut r2, Duration::from_secs(45), "replica 2").await;
    let s3 = wait(&mut r3, Duration::from_secs(45), "replica 3").await;
    assert!(s2.success(), "{}", w.log("r2"));
    assert!(s3.success(), "{}", w.log("r3"));
    for r in ["r2", "r3"] {
        assert!(
            w.log(r).contains("waiting for its lease"),
            "{r} waited for the portal instead of calling it alongside the holder: {}",
            w.log(r)
        );
    }

    // Exactly once: one talk per recorded call, and the ledger names exactly those talks.
    let mut talks: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for t in w.speech.talks() {
        let call: u64 = t.fields.get("id").and_then(|v| v.parse().ok()).unwrap();
        talks.entry(call).or_default().push(t.id);
    }
    assert_eq!(talks.keys().copied().collect::<BTreeSet<_>>(), recorded);
    for (call, ids) in &talks {
        assert_eq!(ids.len(), 1, "call {call} has {} talks", ids.len());
    }
    let store = Store::open_postgres_schema(DATABASE, &w.schema)
        .await
        .unwrap();
    let ledger = store
        .entries(PORTAL, &[LedgerState::Uploaded], 100_000)
        .await
        .unwrap();
    assert_eq!(ledger.len(), recorded.len());
    for e in &ledger {
        assert_eq!(talks[&e.call_id], vec![e.talk_id.clone().unwrap()]);
    }
    let left = store
        .entries(
            PORTAL,
            &[
                LedgerState::Pending,
                LedgerState::Uploading,
                LedgerState::Failed,
            ],
            100,
        )
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    let stats = w.portal.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert!(started.elapsed() < Duration::from_secs(58));
    store.close().await;
}

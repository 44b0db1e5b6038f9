//! A dry run over sockets reports each session as it would go — `WouldUpload` with its parts and messages, sessions
//! the ledger holds uploaded as such — and writes nothing.

use std::collections::BTreeMap;

use b24sense_emulators::speechsense::SpeechSenseConfig;
use b24sense_engine::chats::{run_chat_export, ChatOutcome};
use tokio_util::sync::CancellationToken;

use super::collector;
use super::emu::{Emu, PORTAL};
use crate::support::test_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_each_session_it_would_upload_and_those_uploaded_already() {
    let emu = Emu::start(24, SpeechSenseConfig::default()).await;
    let (store, _dir) = test_store().await;
    let oracle = emu.portal.chat_sessions();
    let open: Vec<u64> = oracle
        .iter()
        .filter(|s| !s.completed)
        .map(|s| s.session_id)
        .collect();
    let real = run_chat_export(
        emu.source.clone(),
        emu.sink(false),
        store.clone(),
        emu.config(),
        std::sync::Arc::new(|_| {}),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(real.uploaded > 0 && !real.fatal, "{real:?}");
    // A session closes after the real run: the dry run would send it, and only it.
    assert!(emu.portal.close_chat_session(open[0]));
    let before = store.chat_ledger_page(PORTAL, None, 10_000).await.unwrap();
    let talks = emu.chat_talks().len();

    let mut c = emu.config();
    c.dry_run = true;
    let (progress, seen) = collector();
    let dry = run_chat_export(
        emu.source.clone(),
        emu.sink(false),
        store.clone(),
        c,
        progress,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(!dry.fatal, "{:?}", dry.stopped);
    let seen = seen.lock().unwrap().clone();
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &seen {
        let kind = match r.outcome {
            ChatOutcome::WouldUpload { .. } => "would_upload",
            ChatOutcome::AlreadyUploaded => "already_uploaded",
            ChatOutcome::Waiting { .. } => "waiting",
            ChatOutcome::Skipped { .. } => "skipped",
            ChatOutcome::Uploaded { .. } => "uploaded",
            ChatOutcome::Failed { .. } => "failed",
        };
        *kinds.entry(kind).or_default() += 1;
    }
    println!("dry run after a real one: {kinds:?}");
    assert_eq!(seen.len(), oracle.len(), "one report per session: {seen:?}");
    let would: Vec<_> = seen
        .iter()
        .filter(|r| matches!(r.outcome, ChatOutcome::WouldUpload { .. }))
        .collect();
    assert_eq!(would.len(), 1, "{seen:?}");
    assert_eq!(would[0].session_id, open[0]);
    assert!(matches!(would[0].outcome, ChatOutcome::WouldUpload { parts } if parts >= 1));
    assert!(would[0].messages > 0);
    assert_eq!(
        (dry.would_upload, dry.messages),
        (1, would[0].messages),
        "{dry:?}"
    );
    assert_eq!(kinds.get("already_uploaded").copied(), Some(real.uploaded));
    assert_eq!(dry.already_uploaded, real.uploaded);
    assert_eq!((dry.uploaded, kinds.get("uploaded")), (0, None));
    // Nothing written, nothing sent.
    let after = store.chat_ledger_page(PORTAL, None, 10_000).await.unwrap();
    assert_eq!(before, after, "a dry run writes no ledger row");
    assert_eq!(emu.chat_talks().len(), talks);
}

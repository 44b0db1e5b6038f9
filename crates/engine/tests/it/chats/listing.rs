//! Continuous sync over sockets: each session handled and reported once per run, and the listing's high-water
//! mark kept by full runs too, so that the next incremental run lists only sessions after it.

use std::collections::{BTreeMap, BTreeSet};

use b24sense_emulators::speechsense::SpeechSenseConfig;
use b24sense_engine::chats::{
    run_chat_export, ChatExportConfig, ChatOutcome, ChatReport, ChatSummary,
};
use b24sense_store::{ListedSession, Store};
use tokio_util::sync::CancellationToken;

use super::collector;
use super::emu::{Emu, PORTAL};
use crate::support::test_store;

async fn run(emu: &Emu, store: &Store, c: ChatExportConfig) -> (ChatSummary, Vec<ChatReport>) {
    let (progress, seen) = collector();
    let s = run_chat_export(
        emu.source.clone(),
        emu.sink(true),
        store.clone(),
        c,
        progress,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(!s.fatal, "{:?}", s.stopped);
    let seen = seen.lock().unwrap().clone();
    (s, seen)
}

/// Reports per session: each at most once.
fn once_each(reports: &[ChatReport]) -> BTreeMap<u64, usize> {
    let mut per = BTreeMap::new();
    for r in reports {
        *per.entry(r.session_id).or_default() += 1;
    }
    let twice: Vec<(&u64, &usize)> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "sessions reported more than once: {twice:?}"
    );
    per
}

/// Every row unfinished and no mark (a run that registered the listing and died before the mark moved, or a mark
/// kept under another filter): the incremental run reads them all again by ID, and its listing, from the start,
/// reaches each of them again — handled once, reported once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_taken_up_by_id_is_not_handled_again_when_the_listing_reaches_it() {
    let emu = Emu::start(24, SpeechSenseConfig::default()).await;
    let (store, _dir) = test_store().await;
    let oracle = emu.portal.chat_sessions();
    let listed: Vec<ListedSession> = oracle
        .iter()
        .map(|s| ListedSession {
            session_id: s.session_id,
            activity_id: s.activity_id,
        })
        .collect();
    store.register_chats(PORTAL, &listed).await.unwrap();
    let mut c = emu.config();
    c.incremental = true;
    let (s, reports) = run(&emu, &store, c).await;
    let (from_listing, by_id) = emu.source.take_counts();
    println!(
        "{} sessions: {by_id} read by ID, {from_listing} listed, {} reports",
        oracle.len(),
        reports.len()
    );
    assert_eq!(
        by_id as usize,
        oracle.len(),
        "every unfinished row read again"
    );
    let per = once_each(&reports);
    assert_eq!(per.len(), oracle.len(), "every session reported");
    let waiting: u64 = s.waiting.values().sum();
    let skipped: u64 = s.skipped.values().sum();
    assert_eq!(
        s.uploaded + skipped + waiting + s.failed_total(),
        oracle.len() as u64,
        "{s:?}"
    );
    assert_eq!(s.listed as usize, oracle.len(), "{s:?}");
    let talks = emu.chat_talks();
    let distinct: BTreeSet<&(String, String)> = talks.iter().collect();
    assert_eq!(distinct.len(), talks.len(), "no part twice");
    assert_eq!(talks.len() as u64, s.talks);
}

/// A full run keeps the listing's mark like an incremental one: the next incremental run reads only the rows it
/// holds unfinished (the open sessions) again by ID and lists no old session; a session that closed meanwhile goes
/// out then, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_keeps_the_mark_so_the_next_incremental_run_lists_no_old_session() {
    let emu = Emu::start(40, SpeechSenseConfig::default()).await;
    let (store, _dir) = test_store().await;
    let oracle = emu.portal.chat_sessions();
    let open: Vec<u64> = oracle
        .iter()
        .filter(|s| !s.completed)
        .map(|s| s.session_id)
        .collect();
    assert!(!open.is_empty());
    let (full, _) = run(&emu, &store, emu.config()).await;
    let (listed, _) = emu.source.take_counts();
    assert_eq!(listed as usize, oracle.len());
    assert_eq!(full.waiting.get("session_open"), Some(&(open.len() as u64)));

    assert!(emu.portal.close_chat_session(open[0]));
    let mut c = emu.config();
    c.incremental = true;
    let (next, reports) = run(&emu, &store, c).await;
    let (listed, by_id) = emu.source.take_counts();
    println!(
        "after a full run of {} sessions: {listed} listed, {by_id} read by ID",
        oracle.len()
    );
    assert_eq!(
        listed, 0,
        "the incremental run lists no session the full run saw"
    );
    assert_eq!(
        by_id as usize,
        open.len(),
        "only the open ones are read again"
    );
    once_each(&reports);
    assert_eq!(next.uploaded, 1, "{next:?}");
    assert!(reports
        .iter()
        .any(|r| r.session_id == open[0] && matches!(r.outcome, ChatOutcome::Uploaded { .. })));
    assert_eq!(
        next.waiting.get("session_open").copied().unwrap_or(0),
        open.len() as u64 - 1
    );
    let talks = emu.chat_talks();
    let distinct: BTreeSet<&(String, String)> = talks.iter().collect();
    assert_eq!(distinct.len(), talks.len(), "no part twice across runs");
    assert_eq!(talks.len() as u64, full.talks + next.talks);
}

//! The chat export against in-memory fakes: exactly once across runs, open sessions waiting, skip reasons, the
//! in-doubt rule with and without a search, long sessions in parts. The ledger is [`test_store`]'s (SQLite, or
//! PostgreSQL when CI runs the suite with `B24SENSE_TEST_LEDGER=postgres`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24sense_core::chat::{
    ChatActivity, ChatFilter, ChatHistory, ChatLine, ChatMessage, ChatRole, ChatSession, ChatUser,
};
use b24sense_core::{CrmInfo, CrmRef, ErrorClass, LedgerState, TalkFields};
use b24sense_engine::chats::{
    run_chat_export, ChatExportConfig, ChatOutcome, ChatProgressFn, ChatReport, ChatSource,
    ChatSummary, SessionPage, TextSink,
};
use b24sense_engine::ports::Classified;
use b24sense_engine::retry::Backoff;
use b24sense_store::{ListedSession, Store};
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use tokio_util::sync::CancellationToken;

use crate::support::test_store;

/// A session whose parts were stored under another cut.
mod cuts;
/// A dry run over sockets: a report per session, the ledger read and not written.
mod dry_run;
/// The emulators and a counting source for the tests over sockets.
mod emu;
/// A ledger that fails mid-run: claims whose answer was lost, a full disk.
mod ledger_faults;
/// Continuous sync over sockets: once per run, the mark kept by full runs.
mod listing;
/// The run's pace: requests per session and uploads in flight.
mod pace;

const PORTAL: &str = "chats.bitrix24.ru";
const CONNECTION: &str = "chat-connection";

#[derive(Debug, thiserror::Error)]
#[error("fake failure ({0:?})")]
pub struct FakeError(ErrorClass);

impl Classified for FakeError {
    fn class(&self) -> ErrorClass {
        self.0
    }
}

fn start() -> DateTime<FixedOffset> {
    FixedOffset::east_opt(3 * 3600)
        .unwrap()
        .with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
        .unwrap()
}

/// Session `id` (activity `id + 1000`): the operator 5 and, unless `client_messages` is 0, the client 900.
pub(crate) fn session(id: u64, completed: bool, client_messages: usize) -> ChatSession {
    let activity = ChatActivity {
        activity_id: id + 1000,
        session_id: id,
        line_id: Some("1".into()),
        connector: Some("livechat".into()),
        user_code: Some(format!("livechat|1|{id}|900")),
        responsible_id: Some(5),
        start: start(),
        end: completed.then(start),
        completed,
        crm: Some(CrmRef {
            kind: b24sense_core::CrmEntityType::Contact,
            id: 77,
        }),
        last_updated: None,
    };
    let mut messages = vec![ChatLine {
        id: 1,
        author_id: 5,
        role: ChatRole::Operator,
        date: Some(start()),
        text: "Здравствуйте! 👋".into(),
        files: vec![],
    }];
    for i in 0..client_messages {
        messages.push(ChatLine {
            id: 2 + i as u64,
            author_id: 900,
            role: ChatRole::Client,
            date: Some(start() + chrono::Duration::seconds(10 + i as i64)),
            text: format!("вопрос {i}"),
            files: vec![],
        });
    }
    let users = BTreeMap::from([
        (5, user(5, "Анна", false)),
        (900, user(900, "Клиент", true)),
    ]);
    let history = ChatHistory {
        chat_id: Some(id + 500),
        session_id: Some(id),
        messages,
        users,
        crm: None,
        user_code: None,
    };
    ChatSession { activity, history }
}

fn user(id: u64, name: &str, connector: bool) -> ChatUser {
    ChatUser {
        id,
        name: Some(name.into()),
        bot: false,
        connector,
    }
}

/// A portal's Open Lines: sessions by activity ID; counts history requests.
#[derive(Default)]
pub struct FakeChats {
    sessions: Mutex<BTreeMap<u64, ChatSession>>,
    pub(crate) history_requests: AtomicU32,
    histories_read: AtomicU32,
    /// The records asked for, one entry per `crm_names` call.
    pub(crate) names_asked: Mutex<Vec<Vec<CrmRef>>>,
}

impl FakeChats {
    pub(crate) fn with(sessions: Vec<ChatSession>) -> Arc<FakeChats> {
        let f = FakeChats::default();
        for s in sessions {
            f.sessions.lock().unwrap().insert(s.activity.activity_id, s);
        }
        Arc::new(f)
    }

    fn close(&self, session_id: u64) {
        for s in self.sessions.lock().unwrap().values_mut() {
            if s.activity.session_id == session_id {
                s.activity.completed = true;
            }
        }
    }
}

impl ChatSource for FakeChats {
    type Error = FakeError;

    async fn list_sessions(&self, f: &ChatFilter, after: u64) -> Result<SessionPage, FakeError> {
        let sessions: Vec<ChatActivity> = self
            .sessions
            .lock()
            .unwrap()
            .range(after + 1..)
            .map(|(_, s)| s.activity.clone())
            .filter(|a| f.include_open || a.completed)
            .collect();
        Ok(SessionPage {
            last_id: sessions.last().map(|a| a.activity_id),
            sessions,
            exhausted: true,
            bad_rows: vec![],
        })
    }

    async fn sessions_by_id(&self, ids: &[u64]) -> Result<SessionPage, FakeError> {
        let all = self.sessions.lock().unwrap();
        let sessions = ids
            .iter()
            .filter_map(|id| all.get(id))
            .map(|s| s.activity.clone())
            .collect();
        Ok(SessionPage {
            sessions,
            exhausted: true,
            ..SessionPage::default()
        })
    }

    async fn histories(
        &self,
        acts: &[ChatActivity],
    ) -> Result<BTreeMap<u64, Result<ChatSession, String>>, FakeError> {
        assert!(acts.len() <= 50, "{} histories in one request", acts.len());
        self.history_requests.fetch_add(1, Ordering::SeqCst);
        self.histories_read
            .fetch_add(acts.len() as u32, Ordering::SeqCst);
        let all = self.sessions.lock().unwrap();
        Ok(acts
            .iter()
            .map(|a| {
                let s = all.get(&a.activity_id).cloned().ok_or("gone".to_string());
                (a.session_id, s)
            })
            .collect())
    }

    /// Every contact is called `Контакт <id>`.
    async fn crm_names(&self, crm: &[CrmRef]) -> Result<HashMap<CrmRef, CrmInfo>, FakeError> {
        self.names_asked.lock().unwrap().push(crm.to_vec());
        Ok(crm
            .iter()
            .map(|r| {
                let info = CrmInfo {
                    entity: r.clone(),
                    title: None,
                    name: Some("Контакт".into()),
                    last_name: Some(r.id.to_string()),
                };
                (r.clone(), info)
            })
            .collect())
    }
}

/// What the next `UploadText` does.
#[derive(Debug, Clone, Copy)]
pub enum Next {
    /// Stores the talk and answers.
    Accept,
    /// Stores the talk, then the answer is lost.
    StoreThenLose,
    /// Fails before anything is stored.
    Refuse(ErrorClass),
}

/// A chat connection: stored talks (ID, fields, messages), scripted failures, a search when `searchable`.
#[derive(Default)]
pub struct FakeText {
    pub talks: Mutex<Vec<(String, TalkFields, Vec<ChatMessage>)>>,
    script: Mutex<VecDeque<Next>>,
    searchable: bool,
}

impl FakeText {
    pub(crate) fn new(searchable: bool, script: &[Next]) -> Arc<FakeText> {
        Arc::new(FakeText {
            searchable,
            script: Mutex::new(script.iter().copied().collect()),
            ..FakeText::default()
        })
    }

    fn store(&self, fields: &TalkFields, messages: &[ChatMessage]) -> String {
        let mut talks = self.talks.lock().unwrap();
        let id = format!("talk-{}", talks.len() + 1);
        talks.push((id.clone(), fields.clone(), messages.to_vec()));
        id
    }

    fn count_for(&self, session: u64) -> usize {
        let talks = self.talks.lock().unwrap();
        talks
            .iter()
            .filter(|t| t.1["id"] == session.to_string())
            .count()
    }
}

impl TextSink for FakeText {
    type Error = FakeError;

    async fn upload_text(
        &self,
        connection_id: &str,
        fields: &TalkFields,
        messages: &[ChatMessage],
    ) -> Result<String, FakeError> {
        assert_eq!(connection_id, CONNECTION);
        for m in messages {
            let ok = ["operator_id", "client_id", "bot_id"]
                .iter()
                .any(|k| fields.get(*k) == Some(&m.user_id));
            assert!(ok, "user_id {} is no role of the talk", m.user_id);
        }
        match self.script.lock().unwrap().pop_front() {
            Some(Next::StoreThenLose) => {
                self.store(fields, messages);
                Err(FakeError(ErrorClass::InDoubt))
            }
            Some(Next::Refuse(class)) => Err(FakeError(class)),
            Some(Next::Accept) | None => Ok(self.store(fields, messages)),
        }
    }

    async fn find_talks(
        &self,
        _: &str,
        session: u64,
        part: u32,
    ) -> Result<Option<Vec<String>>, FakeError> {
        if !self.searchable {
            return Ok(None);
        }
        let talks = self.talks.lock().unwrap();
        Ok(Some(
            talks
                .iter()
                .filter(|t| t.1["id"] == session.to_string() && t.1["part"] == part.to_string())
                .map(|t| t.0.clone())
                .collect(),
        ))
    }
}

pub(crate) fn config() -> ChatExportConfig {
    let mut c = ChatExportConfig::new(PORTAL, CONNECTION);
    c.backoff = Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    };
    c.search_settle = Duration::from_millis(40);
    c.poll = Duration::from_millis(20);
    c
}

pub(crate) fn collector() -> (ChatProgressFn, Arc<Mutex<Vec<ChatReport>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    (
        Arc::new(move |r: &ChatReport| keep.lock().unwrap().push(r.clone())),
        seen,
    )
}

pub(crate) async fn run(
    source: &Arc<FakeChats>,
    sink: &Arc<FakeText>,
    store: &Store,
    config: ChatExportConfig,
) -> ChatSummary {
    let (progress, _) = collector();
    let s = run_chat_export(
        source.clone(),
        sink.clone(),
        store.clone(),
        config,
        progress,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(!s.fatal, "{:?}", s.stopped);
    s
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn every_session_goes_out_once_across_runs_and_skips_say_why() {
    let (store, _dir) = test_store().await;
    let source = FakeChats::with(vec![
        session(1, true, 2),
        session(2, true, 0),
        session(3, true, 1),
        session(4, false, 3),
    ]);
    let sink = FakeText::new(false, &[]);
    let first = run(&source, &sink, &store, config()).await;
    assert_eq!((first.listed, first.uploaded, first.talks), (4, 2, 2));
    assert_eq!(
        first.messages,
        3 + 2,
        "operator greeting and the client's messages"
    );
    assert_eq!(first.skipped, counts(&[("no_client_message", 1)]));
    assert_eq!(first.waiting, counts(&[("session_open", 1)]));
    // One history request for the three finished sessions; the open one's history is not read.
    assert_eq!(source.history_requests.load(Ordering::SeqCst), 1);
    assert_eq!(source.histories_read.load(Ordering::SeqCst), 3);
    let skipped = store.chat_entry(PORTAL, 2).await.unwrap().unwrap();
    assert_eq!(
        (skipped.state, skipped.reason.as_deref()),
        (LedgerState::Skipped, Some("no_client_message"))
    );
    let open = store.chat_entry(PORTAL, 4).await.unwrap().unwrap();
    assert_eq!(
        (open.state, open.reason.as_deref()),
        (LedgerState::Pending, Some("session_open"))
    );
    // The talk carries the session: its `id`, its roles, its messages in order.
    // (Uploads overlap: session 3's talk may have been stored first.)
    let (talk_id, fields, messages) = sink
        .talks
        .lock()
        .unwrap()
        .iter()
        .find(|t| t.1["id"] == "1")
        .cloned()
        .unwrap();
    assert_eq!(fields["client_id"], "CONTACT_77");
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["Здравствуйте! 👋", "вопрос 0", "вопрос 1"]);
    let row = store.chat_entry(PORTAL, 1).await.unwrap().unwrap();
    assert_eq!(row.talk_ids, vec![talk_id]);

    let second = run(&source, &sink, &store, config()).await;
    assert_eq!((second.uploaded, second.already_uploaded), (0, 2));
    assert_eq!(sink.talks.lock().unwrap().len(), 2, "nothing sent twice");
    assert_eq!(second.waiting, counts(&[("session_open", 1)]));
}

#[tokio::test]
async fn an_open_session_waits_and_goes_out_once_it_closed() {
    let (store, _dir) = test_store().await;
    let source = FakeChats::with(vec![session(1, true, 1), session(2, false, 1)]);
    let sink = FakeText::new(false, &[]);
    let mut c = config();
    c.incremental = true;
    let first = run(&source, &sink, &store, c.clone()).await;
    assert_eq!((first.uploaded, first.waiting.len()), (1, 1));
    assert_eq!(sink.count_for(2), 0, "an open session is not uploaded");

    // Still open: a continuous sync reads it again by ID (the cursor is past it) and leaves it waiting.
    let again = run(&source, &sink, &store, c.clone()).await;
    assert_eq!((again.uploaded, again.waiting.len()), (0, 1));
    assert_eq!(sink.count_for(2), 0);

    source.close(2);
    let closed = run(&source, &sink, &store, c.clone()).await;
    assert_eq!(closed.uploaded, 1);
    assert_eq!(sink.count_for(2), 1);
    let row = store.chat_entry(PORTAL, 2).await.unwrap().unwrap();
    assert_eq!((row.state, row.reason), (LedgerState::Uploaded, None));
    let last = run(&source, &sink, &store, c).await;
    assert_eq!(last.uploaded + last.waiting.len() as u64, 0);
    assert_eq!(sink.talks.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_lost_answer_is_found_by_search_and_not_sent_again() {
    let (store, _dir) = test_store().await;
    let source = FakeChats::with(vec![session(1, true, 1)]);
    let sink = FakeText::new(true, &[Next::StoreThenLose]);
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!(
        (s.uploaded, s.found_by_search, s.reuploaded_after_crash),
        (1, 1, 0)
    );
    assert_eq!(sink.count_for(1), 1);
    let row = store.chat_entry(PORTAL, 1).await.unwrap().unwrap();
    assert_eq!(row.talk_ids, vec!["talk-1".to_string()]);
    assert!(!row.reuploaded_after_crash);
}

#[tokio::test]
async fn a_lost_answer_without_search_is_sent_again_and_flagged() {
    let (store, _dir) = test_store().await;
    let source = FakeChats::with(vec![session(1, true, 1)]);
    let sink = FakeText::new(false, &[Next::StoreThenLose]);
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!((s.uploaded, s.reuploaded_after_crash), (1, 1));
    assert_eq!(sink.count_for(1), 2, "the duplicate is known");
    let row = store.chat_entry(PORTAL, 1).await.unwrap().unwrap();
    assert!(row.reuploaded_after_crash);
    assert_eq!(row.talk_ids, vec!["talk-2".to_string()]);
}

/// A run killed after marking a session `uploading`: its talk may or may not be stored.
pub(crate) async fn crashed_mid_upload(store: &Store, sink: &FakeText, stored: bool) {
    store
        .register_chats(
            PORTAL,
            &[ListedSession {
                session_id: 1,
                activity_id: 1001,
            }],
        )
        .await
        .unwrap();
    let lease = Duration::from_millis(100);
    let claim = store
        .claim_chat(PORTAL, 1, "dead", lease)
        .await
        .unwrap()
        .unwrap();
    assert!(store.mark_chat_uploading(&claim, 1, lease).await.unwrap());
    if stored {
        let fields =
            TalkFields::from([("id".to_string(), "1".into()), ("part".into(), "1".into())]);
        sink.store(&fields, &[]);
    }
    tokio::time::sleep(lease * 2).await;
}

#[tokio::test]
async fn a_crashed_upload_is_resolved_by_search_either_way() {
    for stored in [true, false] {
        let (store, _dir) = test_store().await;
        let source = FakeChats::with(vec![session(1, true, 1)]);
        let sink = FakeText::new(true, &[]);
        crashed_mid_upload(&store, &sink, stored).await;
        let s = run(&source, &sink, &store, config()).await;
        assert_eq!(s.uploaded, 1);
        assert_eq!(
            s.reuploaded_after_crash, 0,
            "a search decided it (stored: {stored})"
        );
        assert_eq!(sink.count_for(1), 1, "stored: {stored}");
        assert_eq!(s.found_by_search, u64::from(stored));
    }
}

#[tokio::test]
async fn a_crashed_upload_without_search_is_sent_again_and_flagged() {
    let (store, _dir) = test_store().await;
    let source = FakeChats::with(vec![session(1, true, 1)]);
    let sink = FakeText::new(false, &[]);
    crashed_mid_upload(&store, &sink, true).await;
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!((s.uploaded, s.reuploaded_after_crash), (1, 1));
    assert_eq!(sink.count_for(1), 2);
    assert!(
        store
            .chat_entry(PORTAL, 1)
            .await
            .unwrap()
            .unwrap()
            .reuploaded_after_crash
    );
}

#[tokio::test]
async fn a_long_session_goes_out_in_parts_and_a_lost_part_is_not_repeated() {
    let (store, _dir) = test_store().await;
    let source = FakeChats::with(vec![session(1, true, 60)]);
    // Part 1 goes through; part 2 is stored and its answer lost (the search finds it); part 3 is refused once.
    let retry = Next::Refuse(ErrorClass::Retryable { after: None });
    let sink = FakeText::new(true, &[Next::Accept, Next::StoreThenLose, retry]);
    let mut c = config();
    c.options.max_request_bytes = 3_000;
    let s = run(&source, &sink, &store, c.clone()).await;
    let row = store.chat_entry(PORTAL, 1).await.unwrap().unwrap();
    assert!(row.parts >= 3, "{} parts", row.parts);
    assert_eq!(row.talk_ids.len() as u32, row.parts);
    assert_eq!(sink.count_for(1) as u32, row.parts, "each part once");
    assert_eq!((s.uploaded, s.talks), (1, u64::from(row.parts)));
    assert_eq!((s.found_by_search, s.reuploaded_after_crash), (1, 0));
    assert_eq!(s.messages, 61);
    // In order, numbered.
    let talks = sink.talks.lock().unwrap();
    let parts: Vec<String> = talks.iter().map(|t| t.1["part"].clone()).collect();
    let want: Vec<String> = (1..=row.parts).map(|p| p.to_string()).collect();
    assert_eq!(parts, want);
    assert!(talks.iter().all(|t| t.1["parts"] == row.parts.to_string()));
    let ts: Vec<DateTime<Utc>> = talks
        .iter()
        .flat_map(|t| t.2.iter().map(|m| m.timestamp))
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn a_refused_talk_fails_with_its_reason_and_a_dry_run_writes_nothing() {
    let (store, _dir) = test_store().await;
    let source = FakeChats::with(vec![session(1, true, 1), session(2, true, 2)]);
    let sink = FakeText::new(false, &[]);
    let mut dry = config();
    dry.dry_run = true;
    let d = run(&source, &sink, &store, dry).await;
    assert_eq!((d.would_upload, d.messages, d.uploaded), (2, 2 + 3, 0));
    assert!(store.chat_entry(PORTAL, 1).await.unwrap().is_none());
    assert!(sink.talks.lock().unwrap().is_empty());

    let sink = FakeText::new(false, &[Next::Refuse(ErrorClass::Permanent)]);
    let (progress, seen) = collector();
    let s = run_chat_export(
        source.clone(),
        sink.clone(),
        store.clone(),
        config(),
        progress,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((s.uploaded, s.failed_total()), (1, 1));
    // Sessions go out a few at a time: whichever asked first was refused.
    let seen = seen.lock().unwrap().clone();
    let refused: Vec<u64> = seen
        .iter()
        .filter(|r| matches!(&r.outcome, ChatOutcome::Failed { reason, .. } if reason == "invalid_data"))
        .map(|r| r.session_id)
        .collect();
    assert_eq!(refused.len(), 1, "{seen:?}");
    let failed = store.chat_entry(PORTAL, refused[0]).await.unwrap().unwrap();
    assert_eq!(
        (failed.state, failed.reason.as_deref(), failed.attempts),
        (LedgerState::Failed, Some("invalid_data"), 1)
    );
    assert_eq!(sink.talks.lock().unwrap().len(), 1);
}

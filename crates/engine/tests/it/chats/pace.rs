//! The chat run's pace against the fakes: CRM names read once per listing page (not per history batch), and
//! uploads overlapping under the adaptive limit the calls use, or exactly the pinned number.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use b24sense_core::chat::{ChatMessage, ChatSession};
use b24sense_core::{CrmRef, TalkFields};
use b24sense_engine::chats::{run_chat_export, TextSink};
use tokio_util::sync::CancellationToken;

use super::{collector, config, run, session, FakeChats, FakeError, FakeText};
use crate::support::test_store;

fn contact(id: u64) -> CrmRef {
    CrmRef {
        kind: b24sense_core::CrmEntityType::Contact,
        id,
    }
}

#[tokio::test]
async fn crm_names_are_read_once_per_listing_page_not_per_history_batch() {
    let (store, _dir) = test_store().await;
    // 120 finished sessions (three history batches) of two CRM owners; session 110's activity has no owner and
    // only its history names one.
    let mut sessions: Vec<ChatSession> = (1..=120).map(|i| session(i, true, 1)).collect();
    for s in sessions.iter_mut() {
        s.activity.crm = Some(contact(70 + s.activity.session_id % 2));
    }
    sessions[109].activity.crm = None;
    sessions[109].history.crm = Some(contact(5));
    let source = FakeChats::with(sessions);
    let sink = FakeText::new(false, &[]);
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!(s.uploaded, 120);
    assert_eq!(source.history_requests.load(Ordering::SeqCst), 3);
    let asked = source.names_asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![vec![contact(70), contact(71)], vec![contact(5)]],
        "the page's owners once, deduplicated; then only the record a history alone named"
    );
    let talks = sink.talks.lock().unwrap();
    let name_of = |id: &str| {
        talks
            .iter()
            .find(|t| t.1["id"] == id)
            .map(|t| (t.1["client_id"].clone(), t.1["client_name"].clone()))
            .unwrap()
    };
    assert_eq!(name_of("1"), ("CONTACT_71".into(), "Контакт 71".into()));
    assert_eq!(name_of("110"), ("CONTACT_5".into(), "Контакт 5".into()));
}

#[tokio::test]
async fn uploads_overlap_under_the_adaptive_limit_and_pinning_holds_it() {
    // A sink that takes a while per talk and records how many were in flight at once.
    #[derive(Default)]
    struct Slow {
        now: AtomicU32,
        peak: AtomicU32,
        inner: FakeText,
    }
    impl TextSink for Slow {
        type Error = FakeError;
        async fn upload_text(
            &self,
            connection_id: &str,
            fields: &TalkFields,
            messages: &[ChatMessage],
        ) -> Result<String, FakeError> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            self.inner
                .upload_text(connection_id, fields, messages)
                .await
        }
        async fn find_talks(
            &self,
            c: &str,
            session: u64,
            part: u32,
        ) -> Result<Option<Vec<String>>, FakeError> {
            self.inner.find_talks(c, session, part).await
        }
    }
    for (setting, most) in [
        (b24sense_engine::Concurrency::default(), 32),
        (b24sense_engine::Concurrency::Pinned(3), 3),
    ] {
        let (store, _dir) = test_store().await;
        let source = FakeChats::with((1..=150).map(|i| session(i, true, 1)).collect());
        let sink = Arc::new(Slow::default());
        let mut c = config();
        c.concurrency = setting;
        let (progress, _) = collector();
        let s = run_chat_export(
            source.clone(),
            sink.clone(),
            store.clone(),
            c,
            progress,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(s.uploaded, 150);
        let peak = sink.peak.load(Ordering::SeqCst);
        assert!(peak <= most, "{peak} in flight under {setting:?}");
        assert!(s.concurrency.peak as u32 >= peak, "{:?}", s.concurrency);
        match setting {
            b24sense_engine::Concurrency::Pinned(n) => {
                assert!(
                    peak > 1,
                    "pinned at {n}: uploads still overlap ({peak} at once)"
                );
                assert_eq!((s.concurrency.increases, s.concurrency.decreases), (0, 0));
            }
            b24sense_engine::Concurrency::Adaptive { initial, .. } => {
                assert!(
                    peak as usize > initial,
                    "the limit climbed past its start ({peak} at once): {:?}",
                    s.concurrency
                );
            }
        }
    }
}

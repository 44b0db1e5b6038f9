//! Progress records: the listing cursor and the journal of runs (the CLI's and the application server's).

use std::time::Duration;

use b24sense_store::Error;
use serde_json::json;

use crate::fixture::{Fx, P};

pub(crate) async fn cursor_only_moves_forward(fx: &Fx) {
    let store = fx.store().await;
    assert_eq!(store.cursor(P, "f1").await.unwrap(), None);
    store.set_cursor(P, "f1", 10).await.unwrap();
    assert_eq!(store.cursor(P, "f1").await.unwrap(), Some(10));
    store.set_cursor(P, "f1", 5).await.unwrap();
    assert_eq!(store.cursor(P, "f1").await.unwrap(), Some(10));
    store.set_cursor(P, "f1", 25).await.unwrap();
    assert_eq!(store.cursor(P, "f1").await.unwrap(), Some(25));
    store.set_cursor(P, "f2", 3).await.unwrap();
    store.set_cursor("other", "f1", 1).await.unwrap();
    assert_eq!(store.cursor(P, "f2").await.unwrap(), Some(3));
    assert_eq!(store.cursor("other", "f1").await.unwrap(), Some(1));
    assert_eq!(store.cursor(P, "f1").await.unwrap(), Some(25));
}

pub(crate) async fn runs_are_journaled(fx: &Fx) {
    let store = fx.store().await;
    assert!(store.last_run(None).await.unwrap().is_none());
    let params = json!({"from": "2026-03-01", "filter": {"min_duration": 10}});
    let r1 = store.start_run(P, &params).await.unwrap();
    let run = store.last_run(Some(P)).await.unwrap().unwrap();
    assert_eq!((run.id, run.portal.as_str(), &run.params), (r1, P, &params));
    assert!(run.finished_at.is_none() && run.status.is_none() && run.summary.is_none());
    let summary = json!({"uploaded": 3, "failed": {"download_failed": 1}});
    store.finish_run(r1, "completed", &summary).await.unwrap();
    let run = store.last_run(None).await.unwrap().unwrap();
    assert_eq!(
        (run.status.as_deref(), run.summary.as_ref()),
        (Some("completed"), Some(&summary))
    );
    assert!(run.finished_at.unwrap() >= run.started_at);

    let r2 = store.start_run("other", &json!({})).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(store.last_run(None).await.unwrap().unwrap().id, r2);
    assert_eq!(store.last_run(Some(P)).await.unwrap().unwrap().id, r1);
    assert!(store.last_run(Some("nobody")).await.unwrap().is_none());
    assert!(matches!(
        store.finish_run(r2 + 100, "x", &json!(null)).await,
        Err(Error::Data(_))
    ));
}

/// The application server's journal: progress with a heartbeat, which runs need resuming, and one winner
/// when replicas take an interrupted run over.
pub(crate) async fn web_runs_journal_progress_and_are_taken_over_once(fx: &Fx) {
    let store = fx.store().await;
    let stale = Duration::from_secs(3600);
    assert!(store.last_run_progress(P, stale).await.unwrap().is_none());
    // A CLI run (no progress) is not the application's.
    store.start_run(P, &json!({})).await.unwrap();
    assert!(store.last_run_progress(P, stale).await.unwrap().is_none());

    let first = json!({"running": true, "settled": 0});
    let r1 = store
        .start_web_run(P, &json!({"trigger": "page"}), &first)
        .await
        .unwrap();
    let run = store.last_run_progress(P, stale).await.unwrap().unwrap();
    assert_eq!(
        (run.id, run.status.as_deref(), &run.progress, run.stale),
        (r1, None, &first, false)
    );
    let beat = run.updated_at;
    let later = json!({"running": true, "settled": 7});
    assert!(store.set_run_progress(r1, &later).await.unwrap());
    let run = store.last_run_progress(P, stale).await.unwrap().unwrap();
    assert_eq!(run.progress, later);
    assert!(run.updated_at >= beat);
    // A live heartbeat: nothing to resume, and no one can take it over.
    assert!(store.runs_to_resume(stale).await.unwrap().is_empty());
    assert!(!store.take_over_run(r1, stale, &json!({})).await.unwrap());

    // The heartbeat stops (a crash): stale after the limit, resumable, taken over exactly once.
    fx.raw(&format!(
        "UPDATE runs SET updated_at = '2000-01-01T00:00:00Z' WHERE id = {r1}"
    ))
    .await
    .unwrap();
    let run = store.last_run_progress(P, stale).await.unwrap().unwrap();
    assert!(run.stale);
    let due = store.runs_to_resume(stale).await.unwrap();
    assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r1]);
    let marked = json!({"interrupted": true});
    let takers: Vec<_> = (0..4)
        .map(|_| {
            let (store, marked) = (store.clone(), marked.clone());
            tokio::spawn(async move { store.take_over_run(r1, stale, &marked).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in takers {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    let run = store.last_run_progress(P, stale).await.unwrap().unwrap();
    assert_eq!(
        (run.status.as_deref(), &run.progress, run.stale),
        (Some("interrupted"), &marked, false)
    );
    assert!(
        !store.set_run_progress(r1, &later).await.unwrap(),
        "taken over: no more writes"
    );
    assert!(store.runs_to_resume(stale).await.unwrap().is_empty());

    // A run stopped by a shutdown is resumable at once; only the portal's latest run counts.
    let r2 = store.start_web_run(P, &json!({}), &first).await.unwrap();
    store
        .finish_web_run(
            r2,
            "shutdown",
            &json!({"uploaded": 1}),
            &json!({"interrupted": true}),
        )
        .await
        .unwrap();
    let r3 = store
        .start_web_run("other", &json!({}), &first)
        .await
        .unwrap();
    store
        .finish_web_run(r3, "finished", &json!({}), &json!({"finished": true}))
        .await
        .unwrap();
    let due = store.runs_to_resume(stale).await.unwrap();
    assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r2]);
    assert!(store.take_over_run(r2, stale, &marked).await.unwrap());
    assert!(store.runs_to_resume(stale).await.unwrap().is_empty());
    let r4 = store.start_web_run(P, &json!({}), &first).await.unwrap();
    store
        .finish_web_run(r4, "shutdown", &json!({}), &first)
        .await
        .unwrap();
    let r5 = store.start_web_run(P, &json!({}), &first).await.unwrap();
    store
        .finish_web_run(r5, "finished", &json!({}), &first)
        .await
        .unwrap();
    assert!(
        store.runs_to_resume(stale).await.unwrap().is_empty(),
        "an older shutdown run is history"
    );
    assert!(matches!(
        store
            .finish_web_run(r5 + 100, "finished", &json!({}), &first)
            .await,
        Err(Error::Data(_))
    ));
}

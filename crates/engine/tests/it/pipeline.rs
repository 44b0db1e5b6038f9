//! The pipeline's logic against fakes: routing, batching, retries, in-doubt handling, policies, re-runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use b24sense_core::{
    CallFilter, Container, ErrorClass, FailReason, LedgerState, MonoPolicy, Outcome, SkipReason,
};
use b24sense_engine::report::no_progress;
use b24sense_engine::retry::Backoff;
use b24sense_engine::{run_export, EngineError, ExportConfig};
use b24sense_store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::fakes::{call, wav, Download, FakeSink, FakeSource, Upload};
use crate::support::{collector, store_taken_over_from, test_store, Ran};

fn config() -> ExportConfig {
    let mut c = ExportConfig::new("fake.bitrix24.test", "conn-1");
    c.backoff = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(5),
    };
    c.concurrency = b24sense_engine::Concurrency::Pinned(4);
    c
}

async fn run(
    source: &Arc<FakeSource>,
    sink: &Arc<FakeSink>,
    store: &Store,
    config: ExportConfig,
) -> Ran {
    let (progress, calls) = collector();
    let summary = run_export(
        source.clone(),
        sink.clone(),
        store.clone(),
        config,
        progress,
        CancellationToken::new(),
    )
    .await
    .expect("run completes");
    Ran::new(summary, &calls)
}

#[tokio::test]
async fn exports_every_recorded_call_once_and_rerun_uploads_nothing() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(300));
    let sink = Arc::new(FakeSink::default());
    let s = run(&source, &sink, &store, config()).await;

    let recorded = source.calls.iter().filter(|c| c.has_recording()).count() as u64;
    assert_eq!(s.found, 300);
    assert_eq!(s.uploaded, recorded);
    assert_eq!(s.skipped.get("no_recording").copied(), Some(300 - recorded));
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    let per_call = sink.per_call();
    assert_eq!(per_call.len() as u64, recorded);
    assert!(per_call.values().all(|n| *n == 1), "no duplicates");

    // Audio arrives byte for byte, from the direct URL or from Disk.
    for talk in sink.talks() {
        let id: u64 = talk.fields["id"].parse().unwrap();
        let call = source.calls.iter().find(|c| c.id == id).unwrap();
        let url = call
            .call_record_url
            .clone()
            .unwrap_or_else(|| FakeSource::disk_url(call.record_file_id.unwrap()));
        assert_eq!(talk.audio, source.audio_of(&url), "call {id}");
        assert_eq!(talk.container, Container::Wav);
        assert_eq!(
            talk.fields["operator_name"],
            format!("Op{} Test", id % 3 + 1)
        );
    }

    // Listing 300 calls in pages of 120 = 3 requests; names looked up once per page at most; Disk-only calls
    // (every 7th, minus every 35th) resolved in batches.
    assert_eq!(source.list_requests.load(Ordering::SeqCst), 3);
    assert!(source.lookup_requests.load(Ordering::SeqCst) <= 3);
    let disk_only = source
        .calls
        .iter()
        .filter(|c| c.call_record_url.is_none() && c.record_file_id.is_some())
        .count();
    let resolved: usize = source.resolved_ids.lock().unwrap().iter().sum();
    assert_eq!(resolved, disk_only);

    let again = run(&source, &sink, &store, config()).await;
    assert_eq!(again.uploaded, 0, "a re-run uploads nothing");
    assert_eq!(
        again.skipped.get("already_uploaded").copied(),
        Some(recorded)
    );
    assert_eq!(sink.talks().len() as u64, recorded);
}

#[tokio::test]
async fn filters_are_passed_to_the_source() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(60));
    let sink = Arc::new(FakeSink::default());
    let mut c = config();
    c.filter = CallFilter {
        users: vec![2],
        ..Default::default()
    };
    let s = run(&source, &sink, &store, c).await;
    assert_eq!(s.found, 20);
    assert!(sink.talks().iter().all(|t| t.fields["operator_id"] == "2"));
}

#[tokio::test]
async fn retryable_upload_failures_are_retried_without_duplicates() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(4));
    let retry = Upload::Fail(ErrorClass::Retryable { after: None });
    let sink = Arc::new(FakeSink::with_script(&[retry, retry], false));
    let mut c = config();
    c.concurrency = b24sense_engine::Concurrency::Pinned(1);
    let s = run(&source, &sink, &store, c).await;
    assert_eq!(s.uploaded, 4);
    assert_eq!(
        sink.uploads.load(Ordering::SeqCst),
        6,
        "two failed attempts + four successes"
    );
    assert!(sink.per_call().values().all(|n| *n == 1));
}

#[tokio::test]
async fn retries_are_bounded_and_reported() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(1));
    let retry = Upload::Fail(ErrorClass::Retryable { after: None });
    let sink = Arc::new(FakeSink::with_script(&[retry; 10], false));
    let mut c = config();
    c.max_attempts = 3;
    let s = run(&source, &sink, &store, c).await;
    assert_eq!(s.failed.get("upload_failed").copied(), Some(1));
    assert_eq!(sink.uploads.load(Ordering::SeqCst), 3);
    let entry = store.entry("fake.bitrix24.test", 1).await.unwrap().unwrap();
    assert_eq!(entry.reason.as_deref(), Some("upload_failed"));
    // The next run retries the failed call.
    let s2 = run(&source, &sink, &store, config()).await;
    assert_eq!(s2.uploaded, 0, "scripted failures continue");
    sink.script.lock().unwrap().clear();
    let s3 = run(&source, &sink, &store, config()).await;
    assert_eq!(s3.uploaded, 1);
}

#[tokio::test]
async fn in_doubt_upload_with_search_records_the_existing_talk() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(3));
    let sink = Arc::new(FakeSink::with_script(&[Upload::StoreThenInDoubt], true));
    let mut c = config();
    c.concurrency = b24sense_engine::Concurrency::Pinned(1);
    let s = run(&source, &sink, &store, c).await;
    assert_eq!(s.uploaded, 3);
    assert_eq!(s.reuploaded_after_crash, 0);
    assert!(
        sink.per_call().values().all(|n| *n == 1),
        "found by search, not uploaded again"
    );
}

#[tokio::test]
async fn in_doubt_upload_without_search_is_reuploaded_and_flagged() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(1));
    let sink = Arc::new(FakeSink::with_script(&[Upload::StoreThenInDoubt], false));
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!(s.uploaded, 1);
    assert_eq!(
        s.reuploaded_after_crash, 1,
        "the possible duplicate is reported, never silent"
    );
    assert_eq!(sink.talks().len(), 2);
    let entry = store.entry("fake.bitrix24.test", 1).await.unwrap().unwrap();
    assert!(entry.reuploaded_after_crash);
}

#[tokio::test]
async fn fatal_sink_error_stops_the_run() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(50));
    let sink = Arc::new(FakeSink::with_script(
        &[Upload::Fail(ErrorClass::Fatal); 50],
        false,
    ));
    let err = run_export(
        source.clone(),
        sink.clone(),
        store.clone(),
        config(),
        no_progress(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    match err {
        EngineError::Stopped { reason, summary } => {
            assert!(reason.contains("SpeechSense"), "{reason}");
            assert_eq!(summary.uploaded, 0);
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert!(
        sink.uploads.load(Ordering::SeqCst) <= 8,
        "stops taking new calls after the first fatal error"
    );
}

#[tokio::test]
async fn fatal_listing_error_stops_before_anything_is_uploaded() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource {
        fatal_listing: true,
        ..FakeSource::portal(5)
    });
    let sink = Arc::new(FakeSink::default());
    let err = run_export(
        source,
        sink.clone(),
        store,
        config(),
        no_progress(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("INVALID_CREDENTIALS"), "{err}");
    assert_eq!(sink.talks().len(), 0);
}

#[tokio::test]
async fn dead_direct_url_falls_back_to_disk() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(2));
    source.set_download(&FakeSource::rec_url(1), Download::Dead);
    let sink = Arc::new(FakeSink::default());
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!(s.uploaded, 2);
    let talk = sink
        .talks()
        .into_iter()
        .find(|t| t.fields["id"] == "1")
        .unwrap();
    assert_eq!(talk.audio, source.audio_of(&FakeSource::disk_url(9001)));
    assert_eq!(source.resolve_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn vanished_recording_is_reported() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(1));
    source.set_download(&FakeSource::rec_url(1), Download::Dead);
    source.set_download(&FakeSource::disk_url(9001), Download::Dead);
    let sink = Arc::new(FakeSink::default());
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!(s.failed.get("recording_unavailable").copied(), Some(1));
    assert!(sink.talks().is_empty());
}

#[tokio::test]
async fn download_broken_midway_is_retried_and_never_stored_partially() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(1));
    let audio = source.audio_of(&FakeSource::rec_url(1));
    source.set_download(
        &FakeSource::rec_url(1),
        Download::BreaksMidway(audio.clone(), 2),
    );
    let sink = Arc::new(FakeSink::default());
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!(s.uploaded, 1);
    assert_eq!(sink.talks().len(), 1);
    assert_eq!(sink.talks()[0].audio, audio);
}

#[tokio::test]
async fn a_header_spread_over_many_pieces_is_probed_and_uploaded_whole() {
    // A 3.5 KB `LIST` chunk before `fmt `: the fake download yields 1,000-byte pieces, so the probe must join four of
    // them before it knows the channels, and the upload must still carry every byte once, in order.
    let plain = wav(2, 4000, 7);
    let mut audio = plain[..12].to_vec();
    audio.extend(b"LIST");
    audio.extend(3500u32.to_le_bytes());
    audio.extend((0..3500u32).map(|i| (i % 251) as u8));
    audio.extend(&plain[12..]);
    let riff_size = (audio.len() - 8) as u32;
    audio[4..8].copy_from_slice(&riff_size.to_le_bytes());

    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(1));
    source.set_download(&FakeSource::rec_url(1), Download::Bytes(audio.clone()));
    let sink = Arc::new(FakeSink::default());
    let s = run(&source, &sink, &store, config()).await;
    assert_eq!(s.uploaded, 1, "{:?}", s.failed);
    let talk = &sink.talks()[0];
    assert_eq!(talk.container, Container::Wav);
    assert_eq!(
        talk.connection_id, "conn-1",
        "stereo, from the fmt chunk after the LIST chunk"
    );
    assert_eq!(talk.audio, audio);
}

/// Calls without a recording are skipped without a lease each: the ones that arrive together are settled in one
/// ledger statement (they were a statement per call, a third of the ledger's work on a typical portal).
#[tokio::test]
async fn calls_without_a_recording_are_skipped_a_page_at_a_time() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource {
        calls: (1..=500).map(|id| call(id, None, None)).collect(),
        ..FakeSource::default()
    });
    let sink = Arc::new(FakeSink::default());
    let before = store.statements();
    let s = run(&source, &sink, &store, config()).await;
    let statements = store.statements() - before;
    assert_eq!(s.skipped.get("no_recording").copied(), Some(500));
    assert_eq!(s.calls.len(), 500, "each call reported once");
    let counts = store.counts(None).await.unwrap();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].state, LedgerState::Skipped);
    assert!(
        statements < 100,
        "500 calls without a recording took {statements} ledger statements"
    );
}

#[tokio::test]
async fn mono_policies() {
    for (policy, expect_uploaded, expect_conn) in [
        (MonoPolicy::Upload, true, "conn-1"),
        (MonoPolicy::Skip, false, ""),
        (MonoPolicy::Route("conn-mono".into()), true, "conn-mono"),
    ] {
        let (store, _dir) = test_store().await;
        let source = Arc::new(FakeSource::portal(1));
        source.set_download(&FakeSource::rec_url(1), Download::Bytes(wav(1, 4000, 1)));
        let sink = Arc::new(FakeSink::default());
        let mut c = config();
        c.mono_policy = policy.clone();
        let s = run(&source, &sink, &store, c).await;
        if expect_uploaded {
            assert_eq!(s.uploaded, 1, "{policy:?}");
            assert_eq!(sink.talks()[0].connection_id, expect_conn);
            assert_eq!(s.uploaded_mono, u64::from(policy == MonoPolicy::Upload));
        } else {
            assert_eq!(s.skipped.get("mono_recording").copied(), Some(1));
            assert!(sink.talks().is_empty());
        }
    }
}

#[tokio::test]
async fn unsupported_audio_and_too_long_recordings() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(2));
    source.set_download(
        &FakeSource::rec_url(1),
        Download::Bytes(b"<html>not audio</html>".to_vec()),
    );
    let sink = Arc::new(FakeSink::default());
    let mut c = config();
    c.max_recording = Duration::from_secs(30); // the calls say 45 s
    let s = run(&source, &sink, &store, c).await;
    assert_eq!(s.failed.get("unsupported_audio").copied(), Some(1));
    assert_eq!(s.skipped.get("too_long").copied(), Some(1));
    assert!(sink.talks().is_empty());
    let outcomes: Vec<Outcome> = s.calls.iter().map(|c| c.outcome.clone()).collect();
    assert!(outcomes.contains(&Outcome::Skipped {
        reason: SkipReason::TooLong
    }));
    assert!(outcomes.iter().any(|o| matches!(
        o,
        Outcome::Failed {
            reason: FailReason::UnsupportedAudio,
            ..
        }
    )));
}

#[tokio::test]
async fn dry_run_counts_and_writes_nothing() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(50));
    let sink = Arc::new(FakeSink::default());
    let mut c = config();
    c.dry_run = true;
    let s = run(&source, &sink, &store, c).await;
    let w = s.would_upload.clone().unwrap();
    assert_eq!(w.calls, 40);
    assert_eq!(w.without_recording, 10);
    assert_eq!(w.minutes, (40 * 45u64).div_ceil(60));
    assert!(sink.talks().is_empty());
    assert!(
        store
            .entry("fake.bitrix24.test", 1)
            .await
            .unwrap()
            .is_none(),
        "nothing written to the ledger"
    );
}

#[tokio::test]
async fn shutdown_before_start_uploads_nothing_and_keeps_calls_pending() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(10));
    let sink = Arc::new(FakeSink::default());
    let token = CancellationToken::new();
    token.cancel();
    let s = run_export(source, sink.clone(), store, config(), no_progress(), token)
        .await
        .unwrap();
    assert_eq!(s.uploaded, 0);
    assert_eq!(s.stopped.as_deref(), Some("shutdown requested"));
}

#[tokio::test]
async fn a_long_upload_keeps_its_lease() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(1));
    let sink = Arc::new(FakeSink {
        delay: Duration::from_millis(1500),
        ..FakeSink::default()
    });
    let mut c = config();
    c.lease = Duration::from_millis(400);
    let run = tokio::spawn(run_export(
        source,
        sink.clone(),
        store.clone(),
        c,
        no_progress(),
        CancellationToken::new(),
    ));
    // Well past the original lease, while the upload is still running, another worker must not get the call.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(sink.talks().len(), 0, "the upload is still running");
    let thief = store
        .claim(
            "fake.bitrix24.test",
            1,
            "other-worker",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(thief.is_none(), "the lease was renewed during the upload");
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.uploaded, 1);
    let entry = store.entry("fake.bitrix24.test", 1).await.unwrap().unwrap();
    assert_eq!(entry.talk_id.as_deref(), Some("aud00001"));
}

/// An outcome reached without an upload, for a call another process holds: the run claims it once that lease runs
/// out, and another process takes it over before the commit. The commit is fenced off, and the run that lost the
/// call must not report it (the new holder does): no settled call, nothing counted, the ledger row the winner's.
#[tokio::test]
async fn a_call_taken_over_before_its_direct_settlement_is_not_reported_by_the_loser() {
    let (store, _dir) = store_taken_over_from("loser", "winner").await;
    let source = Arc::new(FakeSource {
        calls: vec![call(1, None, None)],
        ..FakeSource::default()
    });
    let sink = Arc::new(FakeSink::default());
    // Held for a moment by someone else, so the call cannot be settled in one statement and is claimed instead.
    store
        .register("fake.bitrix24.test", &source.calls)
        .await
        .unwrap();
    let other = store
        .claim(
            "fake.bitrix24.test",
            1,
            "other-worker",
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert!(other.is_some(), "the call is free before the run");
    let mut c = config();
    c.worker_id = "loser".into();
    c.poll = Duration::from_millis(20);
    let s = run(&source, &sink, &store, c).await;

    assert_eq!(s.found, 1);
    assert!(
        s.calls.is_empty(),
        "the loser reports nothing: {:?}",
        s.calls
    );
    assert!(s.skipped.is_empty(), "nothing counted: {:?}", s.skipped);
    let entry = store.entry("fake.bitrix24.test", 1).await.unwrap().unwrap();
    assert_eq!(entry.state, LedgerState::Pending, "{entry:?}");
    assert_eq!(entry.lease_owner.as_deref(), Some("winner"), "{entry:?}");
}

#[tokio::test]
async fn a_stopped_run_holds_no_call_and_the_next_run_takes_the_rest_at_once() {
    let (store, _dir) = test_store().await;
    let source = Arc::new(FakeSource::portal(60));
    let recorded = (1..=60).filter(|id| id % 5 != 0).count(); // every 5th call has no recording
    let sink = Arc::new(FakeSink {
        delay: Duration::from_millis(40),
        ..FakeSink::default()
    });
    let token = CancellationToken::new();
    let stopped = tokio::spawn(run_export(
        source.clone(),
        sink.clone(),
        store.clone(),
        config(),
        no_progress(),
        token.clone(),
    ));
    // Stop once a few uploads are done: the resolver has claimed calls ahead of the workers by then.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.talks().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no uploads");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    token.cancel();
    let first = stopped.await.unwrap().unwrap();
    assert_eq!(first.stopped.as_deref(), Some("shutdown requested"));
    assert!((first.uploaded as usize) < recorded, "stopped mid-way");

    let all = [
        LedgerState::Pending,
        LedgerState::Uploading,
        LedgerState::Uploaded,
        LedgerState::Skipped,
        LedgerState::Failed,
    ];
    let rows = store
        .entries("fake.bitrix24.test", &all, 1_000)
        .await
        .unwrap();
    let held: Vec<u64> = rows
        .iter()
        .filter(|e| e.lease_owner.is_some())
        .map(|e| e.call_id)
        .collect();
    assert!(
        held.is_empty(),
        "calls still leased after the run: {held:?}"
    );
    assert!(
        rows.iter().all(|e| e.state != LedgerState::Uploading),
        "nothing was in doubt: every upload either finished or never reached its half-close"
    );

    // With the default 60 s lease, a call left held would make the next run wait for minutes.
    let second = tokio::time::timeout(
        Duration::from_secs(20),
        run(&source, &sink, &store, config()),
    )
    .await
    .expect("the next run does not wait for leases");
    assert_eq!(
        first.uploaded as usize + second.summary.uploaded as usize,
        recorded
    );
    assert_eq!(sink.talks().len(), recorded, "each recorded call once");
}

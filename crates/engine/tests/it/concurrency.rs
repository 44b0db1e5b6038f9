//! Adaptive concurrency end to end: the real clients and the engine against the emulators, with SpeechSense's
//! answer delayed so that calls in flight, not the machine, set the pace. The emulator counts the upload streams
//! open at once, so the limit is seen from the server's side.

use std::sync::Arc;
use std::time::Duration;

use b24sense_core::CallFilter;
use b24sense_emulators::speechsense::{Code, SpeechSenseConfig};
use b24sense_engine::concurrency::DEFAULT_INITIAL;
use b24sense_engine::report::no_progress;
use b24sense_engine::retry::Backoff;
use b24sense_engine::{run_export, Concurrency, ExportConfig};
use tokio_util::sync::CancellationToken;

use crate::e2e::Env;
use crate::fakes::{Download, FakeSink, FakeSource};
use crate::support::test_store;

/// Enough recordings for several rounds of the workers (about 250 of 300 calls have one).
const CALLS: usize = 300;

async fn env(upload_latency: Duration, faults: &[(Code, u32)]) -> Env {
    let mut ss = SpeechSenseConfig {
        upload_latency,
        ..SpeechSenseConfig::default()
    };
    ss.faults.before_store = faults.to_vec();
    Env::start_with(CALLS, ss).await
}

/// Every call with a recording is stored exactly once.
fn assert_each_uploaded_once(env: &Env) {
    let expected = env.expected(&CallFilter::default());
    assert!(expected.len() > 200, "{} recordings", expected.len());
    assert_eq!(env.uploaded_ids(), expected);
    assert_eq!(
        env.speech.talk_count(),
        expected.len(),
        "a call stored twice"
    );
}

#[tokio::test]
async fn adaptive_limit_opens_more_upload_streams_than_it_starts_with() {
    let env = env(Duration::from_millis(200), &[]).await;
    let (store, _dir) = test_store().await;
    let ran = env
        .export(&store, env.config(CallFilter::default()), &env.api_key)
        .await
        .unwrap();
    assert_each_uploaded_once(&env);
    assert!(ran.failed.is_empty(), "{:?}", ran.failed);
    let limit = ran.concurrency;
    assert_eq!(limit.initial, DEFAULT_INITIAL);
    assert!(limit.peak > DEFAULT_INITIAL, "{limit:?}");
    let streams = env.speech.stats().peak_upload_streams;
    assert!(
        streams > DEFAULT_INITIAL as u64,
        "at most {streams} upload streams at once ({limit:?})"
    );
    assert!(
        streams <= limit.peak as u64,
        "{streams} streams, limit {limit:?}"
    );
}

#[tokio::test]
async fn resource_exhausted_lowers_the_limit_and_every_call_is_still_uploaded_once() {
    let env = env(Duration::from_millis(50), &[(Code::ResourceExhausted, 6)]).await;
    let (store, _dir) = test_store().await;
    let mut config = env.config(CallFilter::default());
    config.backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let ran = env.export(&store, config, &env.api_key).await.unwrap();
    assert_eq!(env.speech.stats().rejected(Code::ResourceExhausted), 6);
    let limit = ran.concurrency;
    assert!(limit.decreases >= 1, "{limit:?}");
    assert!(limit.lowest < DEFAULT_INITIAL, "{limit:?}");
    assert_each_uploaded_once(&env);
    assert!(ran.failed.is_empty(), "{:?}", ran.failed);
}

#[tokio::test]
async fn pinned_concurrency_never_opens_more_streams() {
    let env = env(Duration::from_millis(20), &[]).await;
    let (store, _dir) = test_store().await;
    let mut config = env.config(CallFilter::default());
    config.concurrency = Concurrency::Pinned(3);
    let ran = env.export(&store, config, &env.api_key).await.unwrap();
    assert_each_uploaded_once(&env);
    let limit = ran.concurrency;
    assert_eq!((limit.lowest, limit.peak, limit.last), (3, 3, 3));
    let streams = env.speech.stats().peak_upload_streams;
    assert!(
        (1..=3).contains(&streams),
        "{streams} upload streams at once"
    );
}

/// Time a download waits for the portal's rate limit is not latency of the calls in flight: when later calls queue
/// behind the limiter (Disk downloads on a busy bucket), the limit must not fall as if SpeechSense were overloaded.
#[tokio::test]
async fn waiting_for_the_portals_rate_limit_does_not_lower_the_limit() {
    let source = FakeSource::portal(400);
    for id in 120..=400u64 {
        let url = FakeSource::rec_url(id);
        let found = source.downloads.lock().unwrap().get(&url).cloned();
        if let Some(Download::Bytes(b)) = found {
            source.set_download(&url, Download::Queued(b, Duration::from_millis(400)));
        }
    }
    let source = Arc::new(source);
    let sink = Arc::new(FakeSink {
        delay: Duration::from_millis(40),
        ..FakeSink::default()
    });
    let (store, _dir) = test_store().await;
    let config = ExportConfig::new("fake.bitrix24.test", "conn-1");
    let summary = run_export(
        source.clone(),
        sink.clone(),
        store,
        config,
        no_progress(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.uploaded, 320, "{summary:?}");
    // Counted in, the waits would read as latency rising tenfold, window after window, and drive the limit to the
    // floor. Left out, the limit climbs; one decrease is tolerated for a scheduler stall on a loaded machine.
    let limit = summary.concurrency;
    assert!(limit.decreases <= 1, "{limit:?}");
    assert!(limit.peak > DEFAULT_INITIAL, "{limit:?}");
    assert!(limit.last >= DEFAULT_INITIAL, "{limit:?}");
}

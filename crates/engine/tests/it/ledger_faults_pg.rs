//! When a PostgreSQL ledger fails mid-run: its connections terminated by the server (`pg_terminate_backend`, as
//! an administrator or a failover does), and the server unreachable for a while — a loopback TCP proxy between
//! the store and PostgreSQL is cut (every connection closed, new ones closed at once) and restored; the real
//! server runs on. Same targets as `ledger_faults`: 0 duplicates, 0 lost calls, every call settled by the run
//! itself once the fault clears, the user told within 5 s.
//!
//! The outage lasts `B24SENSE_TEST_PG_OUTAGE_SECS` seconds (default 12 so the suite stays quick; the behaviour is
//! the same at 30 — retries back off to at most 1 s here — and CI may set 30).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use b24sense_engine::{LedgerFault, LedgerHealth};
use b24sense_store::{OpenOptions, Store};

use crate::ledger_harness::Watched;
use crate::pg_proxy::PgProxy;
use crate::support::postgres_url;

fn pg_addr() -> SocketAddr {
    let url = url::Url::parse(&postgres_url()).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", url.port().unwrap_or(5432))
        .parse()
        .expect("PostgreSQL on a loopback address")
}

/// `postgres_url` with another host:port and query.
fn url_via(addr: SocketAddr, query: &str) -> String {
    let mut url = url::Url::parse(&postgres_url()).unwrap();
    url.set_ip_host(addr.ip()).unwrap();
    url.set_port(Some(addr.port())).unwrap();
    url.set_query(Some(query));
    url.to_string()
}

/// A PostgreSQL ledger in a schema of its own, its recovery journal in a local temporary directory.
async fn pg_store(url: &str) -> (Store, tempfile::TempDir) {
    let options = OpenOptions {
        schema: Some(format!("ledger_pg_{}", uuid::Uuid::new_v4().simple())),
        ..OpenOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(url, options).await.unwrap();
    (store.with_recovery_dir(dir.path()), dir)
}

/// The server ends the store's connections five times, 300 ms apart, mid-run: the run reconnects and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_terminated_mid_run() {
    let app = format!("b24sense_term_{}", uuid::Uuid::new_v4().simple());
    let w = Watched::start(240, Duration::from_millis(150)).await;
    let (store, _dir) = pg_store(&url_via(pg_addr(), &format!("application_name={app}"))).await;
    let admin = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let run = w.spawn(&store, w.config());
    w.settled_at_least(30).await;
    let mut killed = 0i64;
    for _ in 0..5 {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_one(&admin)
        .await
        .unwrap();
        killed += n;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(killed > 0, "no connection of the store was terminated");
    let summary = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the run finished")
        .unwrap()
        .unwrap();
    println!("terminated {killed} connections: {:?}", summary.ledger);
    if let Some((_, told)) = w.events.lock().unwrap().first() {
        println!("told: {told:?}");
    }
    assert!(summary.stopped.is_none(), "{summary:?}");
    assert_eq!(summary.ledger.journaled, 0);
    w.check(&store).await;
}

/// How PostgreSQL becomes unreachable.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// The server is down: connections closed, new ones refused.
    Down,
    /// The network drops everything: statements in flight never answered, new connections never served, and
    /// those of the partition stay silent after it heals.
    Partition,
}

/// PostgreSQL unreachable mid-run for `B24SENSE_TEST_PG_OUTAGE_SECS`: told within 5 s, outcomes held, the run goes
/// on by itself once it is back.
async fn unreachable_mid_run_then_back(kind: Outage) {
    let outage = Duration::from_secs(
        std::env::var("B24SENSE_TEST_PG_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12),
    );
    let proxy = PgProxy::start(pg_addr()).await;
    let w = Watched::start(240, Duration::from_millis(150)).await;
    let (store, _dir) = pg_store(&url_via(proxy.addr, "application_name=b24sense_proxy")).await;
    let run = w.spawn(&store, w.config());
    w.settled_at_least(40).await;
    let at = Instant::now();
    match kind {
        Outage::Down => proxy.cut(),
        Outage::Partition => proxy.partition(),
    }
    let (told, event) = w.told_down(at, Duration::from_secs(5)).await;
    println!("{kind:?}: told after {told:?}: {event:?}");
    assert!(
        matches!(
            event,
            LedgerHealth::Down {
                fault: LedgerFault::Unreachable,
                ..
            }
        ),
        "{event:?}"
    );
    let during = w.settled.load(Ordering::Relaxed);
    tokio::time::sleep(outage.saturating_sub(at.elapsed())).await;
    let after = w.settled.load(Ordering::Relaxed);
    println!("{kind:?}: settled {during} when told, {after} at the end of the {outage:?} outage");
    let back = Instant::now();
    match kind {
        Outage::Down => proxy.restore().await,
        Outage::Partition => proxy.heal(),
    }
    let summary = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the run went on by itself and finished")
        .unwrap()
        .unwrap();
    println!(
        "{kind:?} for {outage:?}: finished {:?} after it was back: {:?}",
        back.elapsed(),
        summary.ledger
    );
    assert!(w.saw(|h| matches!(h, LedgerHealth::Up { .. })));
    assert!(summary.stopped.is_none(), "{summary:?}");
    assert!(summary.ledger.outages >= 1 && summary.ledger.journaled == 0);
    w.check(&store).await;
    assert!(
        store.pending_recovery().unwrap().is_none(),
        "the journal is cleared"
    );
}

/// The server down mid-run (the proxy cut and restored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_mid_run_then_back() {
    unreachable_mid_run_then_back(Outage::Down).await;
}

/// The network to the server partitioned mid-run, its connections never answering again: statements that wait
/// for an answer are given up after the store's statement timeout, as a server that is down would fail them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partitioned_mid_run_then_back() {
    unreachable_mid_run_then_back(Outage::Partition).await;
}

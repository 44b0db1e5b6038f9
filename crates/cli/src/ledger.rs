//! Operator commands on the ledger: `status` and `retry`.

use b24sense_core::LedgerState;
use serde_json::json;

use crate::args::{RetryArgs, StatusArgs};
use crate::{exit, open_store, Failure};

fn db_error(e: b24sense_store::Error) -> Failure {
    Failure::new(exit::UNAVAILABLE, format!("ledger: {e}"))
}

pub async fn status(a: StatusArgs) -> Result<u8, Failure> {
    let store = open_store(&a.database).await?;
    let portal = a.portal.as_deref();
    let counts = store.counts(portal).await.map_err(db_error)?;
    let last = store.last_run(portal).await.map_err(db_error)?;
    let in_doubt = match portal {
        Some(p) => store
            .entries(p, &[LedgerState::Uploading], 100)
            .await
            .map_err(db_error)?,
        None => Vec::new(),
    };
    if a.json {
        let v = json!({
            "counts": counts.iter().map(|c| json!({"state": c.state.as_str(), "reason": c.reason, "count": c.count})).collect::<Vec<_>>(),
            "last_run": last.as_ref().map(|r| json!({
                "id": r.id, "portal": r.portal, "started_at": r.started_at, "finished_at": r.finished_at,
                "status": r.status, "summary": r.summary,
            })),
            "in_doubt": in_doubt.iter().map(|e| json!({"call_id": e.call_id, "lease_owner": e.lease_owner, "lease_until": e.lease_until})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(exit::OK);
    }
    if counts.is_empty() {
        println!(
            "the ledger is empty{}",
            portal.map(|p| format!(" for {p}")).unwrap_or_default()
        );
    } else {
        println!("{:<10} {:<24} {:>8}", "state", "reason", "calls");
        for c in &counts {
            println!(
                "{:<10} {:<24} {:>8}",
                c.state.as_str(),
                c.reason.as_deref().unwrap_or("-"),
                c.count
            );
        }
    }
    match &last {
        Some(r) => println!(
            "last run: #{} for {} started {} — {}",
            r.id,
            r.portal,
            r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            r.status
                .as_deref()
                .unwrap_or("still running or interrupted")
        ),
        None => println!("no runs recorded"),
    }
    if !in_doubt.is_empty() {
        println!(
            "in doubt (upload started, outcome unknown): {}",
            in_doubt.len()
        );
        for e in &in_doubt {
            println!("  call {}", e.call_id);
        }
    }
    Ok(exit::OK)
}

pub async fn retry(a: RetryArgs) -> Result<u8, Failure> {
    debug_assert!(a.failed);
    let store = open_store(&a.database).await?;
    let n = store
        .reset_failed(a.portal.as_deref(), a.reason.as_deref())
        .await
        .map_err(db_error)?;
    println!(
        "{n} failed calls{} made pending again; the next `b24sense export` retries them",
        a.reason
            .as_deref()
            .map(|r| format!(" (reason {r})"))
            .unwrap_or_default()
    );
    Ok(exit::OK)
}

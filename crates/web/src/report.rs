//! The per-call CSV report: every ledger row of a portal, read in keyset pages and streamed as the HTTP body,
//! so a portal with 100,000 calls never has them all in memory.

use std::time::Duration;

use axum::body::Bytes;
use b24sense_store::{LedgerEntry, Store};
use chrono::SecondsFormat;
use futures::Stream;

/// Ledger rows per page (one database round trip, one body chunk).
const PAGE: u32 = 500;
/// How long one page may take to read.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

const HEADER: [&str; 7] = [
    "call_id",
    "state",
    "reason",
    "talk_id",
    "attempts",
    "detail",
    "updated_at",
];

enum Next {
    Header,
    After(Option<u64>),
    Done,
}

/// The CSV body for `portal`: the header, then one row per ledger row by ascending call ID. A read error ends
/// the stream with an error (the client sees a broken download rather than a silently short report).
pub(crate) fn csv_stream(
    store: Store,
    portal: String,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::try_unfold(Next::Header, move |next| {
        let (store, portal) = (store.clone(), portal.clone());
        async move {
            let after = match next {
                Next::Done => return Ok(None),
                Next::Header => return Ok(Some((encode(&[], true)?, Next::After(None)))),
                Next::After(after) => after,
            };
            let rows = match tokio::time::timeout(
                PAGE_TIMEOUT,
                store.ledger_page(&portal, after, PAGE),
            )
            .await
            {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::warn!(member_id = %portal, error = %e, "report: cannot read the ledger");
                    return Err(std::io::Error::other(e));
                }
                Err(_) => {
                    tracing::warn!(member_id = %portal, "report: reading the ledger timed out");
                    return Err(std::io::Error::other("reading the ledger timed out"));
                }
            };
            if rows.is_empty() {
                return Ok(None);
            }
            let next = if rows.len() < PAGE as usize {
                Next::Done
            } else {
                Next::After(rows.last().map(|e| e.call_id))
            };
            Ok(Some((encode(&rows, false)?, next)))
        }
    })
}

fn encode(rows: &[LedgerEntry], header: bool) -> Result<Bytes, std::io::Error> {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 96));
    if header {
        w.write_record(HEADER)?;
    }
    for e in rows {
        w.write_record([
            e.call_id.to_string().as_str(),
            e.state.as_str(),
            e.reason.as_deref().unwrap_or(""),
            &inert(e.talk_id.as_deref().unwrap_or("")),
            e.attempts.to_string().as_str(),
            &inert(e.detail.as_deref().unwrap_or("")),
            e.updated_at
                .to_rfc3339_opts(SecondsFormat::Millis, true)
                .as_str(),
        ])?;
    }
    w.into_inner()
        .map(Bytes::from)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A cell a spreadsheet will not run as a formula (OWASP "CSV injection"): text from outside (error details, talk
/// IDs) that starts with `=`, `+`, `-`, `@` or a control character gets a leading apostrophe.
fn inert(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::inert;

    #[test]
    fn formulas_are_made_inert() {
        assert_eq!(inert("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(inert("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(inert("-1+2"), "'-1+2");
        assert_eq!(inert("Disk file 9: not found"), "Disk file 9: not found");
        assert_eq!(inert(""), "");
    }
}

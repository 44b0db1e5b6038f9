//! The CSV report: every ledger row of a portal — its calls, then its Open Lines sessions (`kind` says which) —
//! read in keyset pages and streamed as the HTTP body, so a portal with 100,000 calls never has them all in memory.

use std::future::Future;
use std::time::Duration;

use axum::body::Bytes;
use b24sense_store::{ChatEntry, LedgerEntry, Store};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::Stream;

/// Ledger rows per page (one database round trip, one body chunk).
const PAGE: u32 = 500;
/// How long one page may take to read.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// `kind` is `call` or `chat`; `id` the call's statistic ID or the session's ID; a chat's `talk_id` lists its talks
/// (one per part, space-separated).
const HEADER: [&str; 8] = [
    "kind",
    "id",
    "state",
    "reason",
    "talk_id",
    "attempts",
    "detail",
    "updated_at",
];

enum Next {
    Header,
    Calls(Option<u64>),
    Chats(Option<u64>),
    Done,
}

/// One report row, whichever ledger it comes from.
struct Row<'a> {
    kind: &'static str,
    id: u64,
    state: &'a str,
    reason: Option<&'a str>,
    talk_id: String,
    attempts: u32,
    detail: Option<&'a str>,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a LedgerEntry> for Row<'a> {
    fn from(e: &'a LedgerEntry) -> Row<'a> {
        Row {
            kind: "call",
            id: e.call_id,
            state: e.state.as_str(),
            reason: e.reason.as_deref(),
            talk_id: e.talk_id.clone().unwrap_or_default(),
            attempts: e.attempts,
            detail: e.detail.as_deref(),
            updated_at: e.updated_at,
        }
    }
}

impl<'a> From<&'a ChatEntry> for Row<'a> {
    fn from(e: &'a ChatEntry) -> Row<'a> {
        Row {
            kind: "chat",
            id: e.session_id,
            state: e.state.as_str(),
            reason: e.reason.as_deref(),
            talk_id: e.talk_ids.join(" "),
            attempts: e.attempts,
            detail: e.detail.as_deref(),
            updated_at: e.updated_at,
        }
    }
}

/// One page read under [`PAGE_TIMEOUT`]; a read error or a timeout ends the report with an error.
async fn page<T>(
    portal: &str,
    read: impl Future<Output = Result<Vec<T>, b24sense_store::Error>>,
) -> Result<Vec<T>, std::io::Error> {
    match tokio::time::timeout(PAGE_TIMEOUT, read).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => {
            tracing::warn!(member_id = %portal, error = %e, "report: cannot read the ledger");
            Err(std::io::Error::other(e))
        }
        Err(_) => {
            tracing::warn!(member_id = %portal, "report: reading the ledger timed out");
            Err(std::io::Error::other("reading the ledger timed out"))
        }
    }
}

/// The CSV body for `portal`: the header, then one row per call by ascending call ID, then one per Open Lines
/// session by ascending session ID. A read error ends the stream with an error (the client sees a broken download
/// rather than a silently short report).
pub(crate) fn csv_stream(
    store: Store,
    portal: String,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::try_unfold(Next::Header, move |next| {
        let (store, portal) = (store.clone(), portal.clone());
        async move {
            match next {
                Next::Done => Ok(None),
                Next::Header => Ok(Some((encode(Vec::new(), true)?, Next::Calls(None)))),
                Next::Calls(after) => {
                    let rows = page(&portal, store.ledger_page(&portal, after, PAGE)).await?;
                    let next = match rows.last() {
                        Some(e) if rows.len() == PAGE as usize => Next::Calls(Some(e.call_id)),
                        _ => Next::Chats(None),
                    };
                    Ok(Some((
                        encode(rows.iter().map(Row::from).collect(), false)?,
                        next,
                    )))
                }
                Next::Chats(after) => {
                    let rows = page(&portal, store.chat_ledger_page(&portal, after, PAGE)).await?;
                    let next = match rows.last() {
                        Some(e) if rows.len() == PAGE as usize => Next::Chats(Some(e.session_id)),
                        _ => Next::Done,
                    };
                    Ok(Some((
                        encode(rows.iter().map(Row::from).collect(), false)?,
                        next,
                    )))
                }
            }
        }
    })
}

fn encode(rows: Vec<Row<'_>>, header: bool) -> Result<Bytes, std::io::Error> {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 96));
    if header {
        w.write_record(HEADER)?;
    }
    for e in rows {
        w.write_record([
            e.kind,
            e.id.to_string().as_str(),
            e.state,
            e.reason.unwrap_or(""),
            &inert(&e.talk_id),
            e.attempts.to_string().as_str(),
            &inert(e.detail.unwrap_or("")),
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

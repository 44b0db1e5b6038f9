//! The typed calls b24sense makes: keyset-paged call history, name lookups, Disk download links, profile.

use std::collections::{BTreeSet, HashMap};

use b24sense_core::{lenient, Call, CallFilter, CrmEntityType, CrmInfo, CrmRef, UserInfo};
use chrono::FixedOffset;
use serde_json::{json, Value};
use url::Url;

use crate::client::Bitrix24Client;
use crate::error::{ApiError, Error};
use crate::php::encode_php_query;

/// Rows per list page (fixed by Bitrix24) and commands per batch.
const PAGE: usize = 50;

/// One request's worth of call-history rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallChunk {
    pub calls: Vec<Call>,
    /// The highest statistic `ID` read (also of rows that failed to parse): the next `after_id`.
    pub last_id: Option<u64>,
    /// A page came back short: there is nothing after `last_id` right now.
    pub exhausted: bool,
    /// Rows that failed `Call::from_bitrix`, with the reason.
    pub bad_rows: Vec<String>,
}

impl CallChunk {
    /// Adds call-history rows: readable ones to `calls`, the others to `bad_rows` with the reason; every row's `ID`
    /// moves `last_id` on (an unreadable row must not be listed again and again).
    pub(crate) fn read(&mut self, rows: &[&Value], offset: FixedOffset) {
        for row in rows {
            let raw_id = row.get("ID").and_then(lenient::id);
            if let Some(id) = raw_id {
                self.last_id = Some(self.last_id.map_or(id, |l| l.max(id)));
            }
            match Call::from_bitrix(row, offset) {
                Ok(c) => self.calls.push(c),
                Err(e) => self.bad_rows.push(match raw_id {
                    Some(id) => format!("ID {id}: {e}"),
                    None => e.to_string(),
                }),
            }
        }
    }
}

/// What a chained keyset listing collects its pages into ([`Bitrix24Client::list_chained`]).
pub(crate) trait ChainedRows: Default {
    /// Adds one page's rows; every row's `ID` moves [`last_id`](Self::last_id) on, readable or not.
    fn read_rows(&mut self, rows: &[&Value], offset: FixedOffset);
    /// The highest `ID` read so far.
    fn last_id(&self) -> Option<u64>;
    /// A page came back short: nothing after `last_id` right now.
    fn set_exhausted(&mut self);
}

impl ChainedRows for CallChunk {
    fn read_rows(&mut self, rows: &[&Value], offset: FixedOffset) {
        self.read(rows, offset);
    }
    fn last_id(&self) -> Option<u64> {
        self.last_id
    }
    fn set_exhausted(&mut self) {
        self.exhausted = true;
    }
}

/// One listing method's chained keyset pages: the method, the first page's query (its filter with `>ID`), the later
/// pages' query (the same filter without it), the filter's parameter name (`FILTER` or `filter`), and what it lists
/// (for errors and logs).
pub(crate) struct ChainedListing<'a> {
    pub(crate) method: &'a str,
    pub(crate) first_query: String,
    pub(crate) rest_query: String,
    pub(crate) filter_key: &'a str,
    pub(crate) what: &'a str,
}

/// Names for the mapping. IDs the portal did not return are absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lookup {
    pub users: HashMap<u64, UserInfo>,
    pub crm: HashMap<CrmRef, CrmInfo>,
}

/// The `profile` of the credential's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub id: u64,
    pub admin: bool,
    pub name: Option<String>,
    pub last_name: Option<String>,
}

pub(crate) fn rows(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(a)) => a.iter().collect(),
        // A PHP array with non-sequential keys arrives as an object.
        Some(Value::Object(o)) => o.values().collect(),
        _ => Vec::new(),
    }
}

impl Bitrix24Client {
    /// One HTTP request: a `batch` of up to 50 chained keyset pages of `voximplant.statistic.get`
    /// (`SORT=ID`, `ORDER=ASC`, `start=-1`, `FILTER` = `filter.to_bitrix_filter(after_id)` for page 0 and
    /// `FILTER[>ID]=$result[p{i-1}][49][ID]` after). Stops at the first page with < 50 rows and ignores later pages
    /// (their unresolved `$result[...]` makes the portal return odd rows).
    pub async fn list_calls(&self, filter: &CallFilter, after_id: u64) -> Result<CallChunk, Error> {
        self.list_calls_pages(filter, after_id, PAGE).await
    }

    /// [`list_calls`](Self::list_calls) with fewer chained pages per request (1..=50), for slow portals.
    /// Pages are named `p00`…`p49` so that their order survives any JSON map ordering.
    pub async fn list_calls_pages(
        &self,
        filter: &CallFilter,
        after_id: u64,
        pages: usize,
    ) -> Result<CallChunk, Error> {
        let first = filter.to_bitrix_filter(after_id);
        let mut rest = first.clone();
        rest.remove(">ID");
        let query = |f: &Value| {
            encode_php_query(&json!({"FILTER": f, "SORT": "ID", "ORDER": "ASC", "start": -1}))
        };
        let listing = ChainedListing {
            method: "voximplant.statistic.get",
            first_query: query(&json!(first)),
            rest_query: query(&json!(rest)),
            filter_key: "FILTER",
            what: "call-history",
        };
        self.list_chained(&listing, after_id, pages).await
    }

    /// One HTTP request: a `batch` of up to 50 (`pages`, 1..=50) chained keyset pages of a listing method, named
    /// `p00`…`p49` so that their order survives any JSON map ordering. Page 0 runs `first_query` (its filter holds
    /// `>ID` = `after_id`); page i runs `rest_query` with `{filter_key}[>ID]=$result[p{i-1}][49][ID]`, a reference
    /// the portal substitutes with page i-1's last ID before running it. Stops at the first page with < 50 rows
    /// (`exhausted`) and ignores later pages (their unresolved reference makes the portal return odd rows), and at a
    /// page that does not continue the one before it. A failed page 0 fails the call; a later one keeps the pages
    /// before it. Shared by the call history and the Open Lines session listing.
    pub(crate) async fn list_chained<T: ChainedRows>(
        &self,
        listing: &ChainedListing<'_>,
        after_id: u64,
        pages: usize,
    ) -> Result<T, Error> {
        let pages = pages.clamp(1, PAGE);
        let name = |i: usize| format!("p{i:02}");
        let cmds: Vec<(String, String)> = (0..pages)
            .map(|i| {
                let q = if i == 0 {
                    listing.first_query.clone()
                } else {
                    // The reference is left literal: the portal substitutes it before running the command.
                    format!(
                        "{}&{}[%3EID]=$result[{}][{}][ID]",
                        listing.rest_query,
                        listing.filter_key,
                        name(i - 1),
                        PAGE - 1
                    )
                };
                (name(i), format!("{}?{q}", listing.method))
            })
            .collect();
        let resp = self.batch(&cmds, false).await?;
        let offset = self
            .portal_offset()
            .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
        let mut out = T::default();
        let mut prev_last = after_id;
        for i in 0..pages {
            let n = name(i);
            if let Some(e) = resp.errors.get(&n) {
                if i == 0 {
                    return Err(Error::Api(e.clone()));
                }
                tracing::warn!(page = i, listing = listing.what, error = %e, "listing page failed; keeping the pages before it");
                break;
            }
            let Some(v) = resp.results.get(&n) else {
                if i == 0 {
                    return Err(Error::Malformed(format!(
                        "batch answer has no first {} page",
                        listing.what
                    )));
                }
                break;
            };
            let page = rows(Some(v));
            // Defence against a page the reference did not chain: its rows would not follow the previous page.
            let first_id = page.first().and_then(|r| r.get("ID")).and_then(lenient::id);
            if i > 0 && first_id.is_some_and(|id| id <= prev_last) {
                tracing::warn!(
                    page = i,
                    listing = listing.what,
                    "listing page does not continue the previous one; ignoring it"
                );
                break;
            }
            out.read_rows(&page, offset);
            prev_last = prev_last.max(out.last_id().unwrap_or(0));
            if page.len() < PAGE {
                out.set_exhausted();
                break;
            }
        }
        Ok(out)
    }

    /// Reads calls again by statistic `ID` (to see whether a recording was attached since): `voximplant.statistic.get`
    /// with `FILTER[ID]` = up to 50 IDs per command, 50 commands per batch request — 2,500 calls per request. No other
    /// filter: the calls qualified when they were listed. IDs the portal does not return are absent from the chunk.
    /// A failed command fails the whole read, so that an absent call really is gone.
    pub async fn calls_by_id(&self, ids: &[u64]) -> Result<CallChunk, Error> {
        let ids: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| *id > 0)
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        let cmds: Vec<(String, String)> = ids
            .chunks(PAGE)
            .enumerate()
            .map(|(i, chunk)| {
                let q = encode_php_query(
                    &json!({"FILTER": {"ID": chunk}, "SORT": "ID", "ORDER": "ASC", "start": -1}),
                );
                (format!("r{i:03}"), format!("voximplant.statistic.get?{q}"))
            })
            .collect();
        let resp = self.batch_all(cmds).await?;
        if let Some(e) = resp.errors.values().next() {
            return Err(Error::Api(e.clone()));
        }
        let offset = self
            .portal_offset()
            .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
        let mut chunk = CallChunk {
            exhausted: true,
            ..CallChunk::default()
        };
        for v in resp.results.values() {
            chunk.read(&rows(Some(v)), offset);
        }
        chunk.calls.sort_by_key(|c| c.id);
        Ok(chunk)
    }

    /// Runs commands 50 per batch request, in order; returns all results and errors.
    async fn batch_all(&self, cmds: Vec<(String, String)>) -> Result<crate::BatchResponse, Error> {
        let mut all = crate::BatchResponse::default();
        for part in cmds.chunks(PAGE) {
            let r = self.batch(part, false).await?;
            all.results.extend(r.results);
            all.errors.extend(r.errors);
            all.next.extend(r.next);
            all.total.extend(r.total);
            all.time = r.time;
        }
        Ok(all)
    }

    /// Names for the mapping: `user.get` (`FILTER[ID]` = up to 50 ids per command, `ADMIN_MODE` so dismissed users
    /// are included) and `crm.{contact,company,lead,deal}.list` (filter by ID list, narrow select), as many
    /// commands as needed packed 50 per batch request. IDs the portal does not return are absent.
    pub async fn lookup(&self, users: &[u64], crm: &[CrmRef]) -> Result<Lookup, Error> {
        let users: BTreeSet<u64> = users.iter().copied().filter(|u| *u > 0).collect();
        let mut by_kind: std::collections::BTreeMap<CrmEntityType, BTreeSet<u64>> =
            Default::default();
        for r in crm {
            if !matches!(r.kind, CrmEntityType::Other(_)) && r.id > 0 {
                by_kind.entry(r.kind.clone()).or_default().insert(r.id);
            }
        }
        let mut cmds = Vec::new();
        let user_ids: Vec<u64> = users.iter().copied().collect();
        for (i, chunk) in user_ids.chunks(PAGE).enumerate() {
            let q = encode_php_query(&json!({"FILTER": {"ID": chunk}, "ADMIN_MODE": true}));
            cmds.push((format!("u{i}"), format!("user.get?{q}")));
        }
        let mut crm_cmds: HashMap<String, CrmEntityType> = HashMap::new();
        for (kind, ids) in &by_kind {
            let (method, select): (&str, &[&str]) = match kind {
                CrmEntityType::Contact => ("crm.contact.list", &["ID", "NAME", "LAST_NAME"]),
                CrmEntityType::Company => ("crm.company.list", &["ID", "TITLE"]),
                CrmEntityType::Lead => ("crm.lead.list", &["ID", "TITLE", "NAME", "LAST_NAME"]),
                CrmEntityType::Deal => ("crm.deal.list", &["ID", "TITLE"]),
                CrmEntityType::Other(_) => continue,
            };
            let ids: Vec<u64> = ids.iter().copied().collect();
            for (i, chunk) in ids.chunks(PAGE).enumerate() {
                let name = format!("{}{i}", kind.as_str().to_ascii_lowercase());
                let q = encode_php_query(
                    &json!({"filter": {"ID": chunk}, "select": select, "start": -1}),
                );
                cmds.push((name.clone(), format!("{method}?{q}")));
                crm_cmds.insert(name, kind.clone());
            }
        }
        let resp = self.batch_all(cmds).await?;
        for (name, e) in &resp.errors {
            tracing::warn!(command = %name, error = %e, "lookup command failed; those names stay unknown");
        }
        let mut out = Lookup::default();
        for (name, v) in &resp.results {
            if let Some(kind) = crm_cmds.get(name) {
                for row in rows(Some(v)) {
                    let Some(id) = row.get("ID").and_then(lenient::id) else {
                        continue;
                    };
                    if !by_kind.get(kind).is_some_and(|s| s.contains(&id)) {
                        continue;
                    }
                    let entity = CrmRef {
                        kind: kind.clone(),
                        id,
                    };
                    let text = |k: &str| row.get(k).and_then(lenient::text);
                    let info = CrmInfo {
                        entity: entity.clone(),
                        title: text("TITLE"),
                        name: text("NAME"),
                        last_name: text("LAST_NAME"),
                    };
                    out.crm.insert(entity, info);
                }
            } else if name.starts_with('u') {
                for row in rows(Some(v)) {
                    let Some(id) = row.get("ID").and_then(lenient::id) else {
                        continue;
                    };
                    if users.contains(&id) {
                        let text = |k: &str| row.get(k).and_then(lenient::text);
                        out.users.insert(
                            id,
                            UserInfo {
                                id,
                                name: text("NAME"),
                                last_name: text("LAST_NAME"),
                            },
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    /// `disk.file.get` for each id, 50 commands per batch request. Per-file failures (`ERROR_NOT_FOUND`,
    /// `ACCESS_DENIED`, a file in the trash — `DELETED_TYPE` ≠ 0 — reported as `ERROR_NOT_FOUND`) go in the map.
    pub async fn disk_download_urls(
        &self,
        file_ids: &[u64],
    ) -> Result<HashMap<u64, Result<Url, ApiError>>, Error> {
        let ids: BTreeSet<u64> = file_ids.iter().copied().collect();
        let cmds: Vec<(String, String)> = ids
            .iter()
            .map(|id| (format!("d{id}"), format!("disk.file.get?id={id}")))
            .collect();
        let resp = self.batch_all(cmds).await?;
        let mut out = HashMap::new();
        for id in ids {
            let name = format!("d{id}");
            let r = if let Some(e) = resp.errors.get(&name) {
                Err(e.clone())
            } else if let Some(v) = resp.results.get(&name) {
                file_url(id, v)
            } else {
                Err(ApiError::new(
                    "ERROR_UNEXPECTED_ANSWER",
                    format!("disk.file.get for file {id} returned nothing"),
                    200,
                ))
            };
            out.insert(id, r);
        }
        Ok(out)
    }

    /// The `profile` method: who the credential acts as, and whether they are an administrator.
    pub async fn profile(&self) -> Result<Profile, Error> {
        let r = self.call("profile", json!({})).await?;
        let o = &r.result;
        let id = o
            .get("ID")
            .and_then(lenient::id)
            .ok_or_else(|| Error::Malformed("profile has no ID".into()))?;
        Ok(Profile {
            id,
            admin: o.get("ADMIN").and_then(lenient::flag).unwrap_or(false),
            name: o.get("NAME").and_then(lenient::text),
            last_name: o.get("LAST_NAME").and_then(lenient::text),
        })
    }
}

pub(crate) fn file_url(id: u64, v: &Value) -> Result<Url, ApiError> {
    let deleted = v.get("DELETED_TYPE").and_then(lenient::number).unwrap_or(0);
    if deleted != 0 {
        return Err(ApiError::new(
            "ERROR_NOT_FOUND",
            format!("file {id} is deleted (DELETED_TYPE {deleted})"),
            200,
        ));
    }
    let raw = v
        .get("DOWNLOAD_URL")
        .and_then(lenient::text)
        .ok_or_else(|| {
            ApiError::new(
                "ERROR_UNEXPECTED_ANSWER",
                format!("file {id} has no DOWNLOAD_URL"),
                200,
            )
        })?;
    // Never echo the URL: it carries a token.
    Url::parse(raw.trim()).map_err(|_| {
        ApiError::new(
            "ERROR_UNEXPECTED_ANSWER",
            format!("file {id}: DOWNLOAD_URL is not a URL"),
            200,
        )
    })
}

//! What a test asks for: [`FaultConfig`] (with its `with_*` builders) and the names under which fired faults are
//! counted ([`kind`]).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::bitrix24::methods::normalize_method;

/// Injected faults. Counters run over every request except `/_emulator/*`; "next N" counts are used up as they
/// fire (and restart with [`Bitrix24Emulator::set_faults`](crate::bitrix24::Bitrix24Emulator::set_faults)).
/// Construct with `FaultConfig { query_limit_next: 3, ..Default::default() }` or the `with_*` builders;
/// new kinds of faults are added as new fields that default to off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Every n-th request gets the proxy's HTML 502 page.
    pub html_502_every: Option<u64>,
    /// Every n-th request has its connection closed without a response.
    pub drop_connection_every: Option<u64>,
    /// Delay per 64 KiB of a recording.
    pub slow_download: Option<Duration>,
    /// The next N requests to `/rest/*` (methods, batches and `download.json`) answer 503 `QUERY_LIMIT_EXCEEDED`.
    pub query_limit_next: u32,
    /// Every `/rest/*` request answers 503 `QUERY_LIMIT_EXCEEDED` for this long after the faults were set.
    pub query_limit_for: Option<Duration>,
    /// `(method, times)`: the next `times` REST requests *of this method* (the request's own method — `batch`
    /// for a batch; sub-commands are not affected) answer 429 `OPERATION_TIME_LIMIT`, with
    /// `time.operating_reset_at` the next whole second + 1, so a client waits about a second.
    pub operation_time_limit: Option<(String, u32)>,
    /// The next N REST method requests answer 500 `INTERNAL_SERVER_ERROR` (JSON envelope).
    pub internal_error_next: u32,
    /// The next N REST method requests answer the proxy's HTML 502 page.
    pub html_502_next: u32,
    /// The n-th OAuth REST request (1-based, counted from when the faults were set; webhook requests neither
    /// count nor are affected) finds its access token expired: it and every later request with that token answer
    /// 401 `expired_token` — `DOWNLOAD_URL`s that embed it too (`/rest/download.json?auth=…`), as on a real portal.
    /// A client must refresh to a different valid token (and re-resolve its download links).
    pub expire_token_at: Option<u64>,
    /// The next N requests (any route) have their TCP connection reset (RST, `SO_LINGER` 0) without a response.
    pub reset_connection_next: u32,
    /// The next N REST method answers announce their full `Content-Length` and close the connection after half
    /// the body.
    pub cut_rest_next: u32,
    /// The next N recording downloads (`/records/*`, `/rest/download.json`) that would succeed announce their
    /// full `Content-Length` and close the connection after half the bytes.
    pub cut_download_next: u32,
    /// The next N REST method requests answer 200 with a JSON content type and a body that is not JSON.
    pub malformed_json_next: u32,
    /// Statistic `ID`s of calls whose recordings are gone: 404 on `/records/*` and `/rest/download.json`,
    /// `ERROR_NOT_FOUND` from `disk.file.get`.
    pub vanished: BTreeSet<u64>,
}

/// `with_<field>(value)` builders: each sets one field (`Some(value)` for the optional ones).
macro_rules! builders {
    ($($builder:ident => $field:ident: $ty:ty),* $(,)?) => {
        $(
            pub fn $builder(mut self, value: $ty) -> Self {
                self.$field = value.into();
                self
            }
        )*
    };
}

impl FaultConfig {
    pub fn none() -> FaultConfig {
        FaultConfig::default()
    }

    builders! {
        with_html_502_every => html_502_every: u64,
        with_drop_connection_every => drop_connection_every: u64,
        with_slow_download => slow_download: Duration,
        with_query_limit_next => query_limit_next: u32,
        with_query_limit_for => query_limit_for: Duration,
        with_internal_error_next => internal_error_next: u32,
        with_html_502_next => html_502_next: u32,
        with_expire_token_at => expire_token_at: u64,
        with_reset_connection_next => reset_connection_next: u32,
        with_cut_rest_next => cut_rest_next: u32,
        with_cut_download_next => cut_download_next: u32,
        with_malformed_json_next => malformed_json_next: u32,
    }

    pub fn with_operation_time_limit(mut self, method: &str, times: u32) -> Self {
        self.operation_time_limit = Some((normalize_method(method), times));
        self
    }

    pub fn with_vanished(mut self, call_ids: impl IntoIterator<Item = u64>) -> Self {
        self.vanished.extend(call_ids);
        self
    }
}

/// Names under which [`PortalStats::faults_injected`](crate::bitrix24::PortalStats::faults_injected) counts faults.
pub mod kind {
    pub const HTML_502: &str = "html_502";
    pub const DROP_CONNECTION: &str = "drop_connection";
    pub const RESET_CONNECTION: &str = "reset_connection";
    pub const QUERY_LIMIT: &str = "query_limit_exceeded";
    pub const OPERATION_TIME_LIMIT: &str = "operation_time_limit";
    pub const INTERNAL_ERROR: &str = "internal_server_error";
    pub const EXPIRED_TOKEN: &str = "expired_token";
    pub const CUT_REST: &str = "cut_rest";
    pub const CUT_DOWNLOAD: &str = "cut_download";
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const VANISHED: &str = "vanished_recording";
}

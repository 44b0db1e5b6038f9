//! The emulator's counters ([`PortalStats`]): what tests and benchmarks read to see how a client used the portal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counters, also served as JSON at `GET /_emulator/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortalStats {
    /// Every request except `/_emulator/*`.
    pub http_requests: u64,
    /// REST methods by lower-case name; batch sub-commands count under their own method and `batch` once.
    pub by_method: BTreeMap<String, u64>,
    pub rate_limited: u64,
    pub operating_limited: u64,
    /// Recording downloads started (`/rest/download.json` and `/records/*`).
    pub downloads: u64,
    /// Response body bytes (JSON and recordings as streamed).
    pub bytes_sent: u64,
    /// Injected faults that fired, by kind ([`fault_kind`](super::fault_kind)).
    #[serde(default)]
    pub faults_injected: BTreeMap<String, u64>,
}

impl PortalStats {
    /// Counts one injected fault of this kind.
    pub(crate) fn count_fault(&mut self, kind: &str) {
        *self.faults_injected.entry(kind.to_string()).or_insert(0) += 1;
    }

    /// Counts one call of a REST method (lower-case name).
    pub(crate) fn count_method(&mut self, method: &str) {
        *self.by_method.entry(method.to_string()).or_insert(0) += 1;
    }
}

//! A portal where calls keep coming: calls that have not "ended" yet are invisible, and a recording can be
//! attached after its call's row appeared (built-in telephony attaches the file up to a
//! minute or more later, an external PBX seconds to hours later with `telephony.externalCall.attachRecord`).
//! Tests drive it through [`Bitrix24Emulator`](super::Bitrix24Emulator)'s `hide_calls_after`, `reveal_calls_up_to`,
//! `withhold_recording` and `attach_recording`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Mutex;

use super::data::CallRec;

#[derive(Default)]
pub(crate) struct Live {
    state: Mutex<LiveState>,
}

#[derive(Default, Clone)]
struct LiveState {
    /// Only calls with `ID` ≤ this exist yet (`None`: all of them).
    visible_up_to: Option<u64>,
    /// Statistic `ID`s whose recording is not attached yet.
    withheld: HashSet<u64>,
}

/// What one request sees: taken once per request so that a page is consistent.
pub(crate) struct LiveView {
    state: LiveState,
}

impl Live {
    fn with<T>(&self, f: impl FnOnce(&mut LiveState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn view(&self) -> LiveView {
        LiveView {
            state: self.with(|s| s.clone()),
        }
    }

    pub(crate) fn hide_after(&self, id: u64) {
        self.with(|s| s.visible_up_to = Some(id));
    }

    pub(crate) fn reveal_up_to(&self, id: u64) {
        self.with(|s| s.visible_up_to = Some(s.visible_up_to.map_or(id, |v| v.max(id))));
    }

    pub(crate) fn withhold(&self, id: u64) {
        self.with(|s| s.withheld.insert(id));
    }

    /// True when the recording was withheld (and is attached now).
    pub(crate) fn attach(&self, id: u64) -> bool {
        self.with(|s| s.withheld.remove(&id))
    }

    /// The call or its recording does not exist yet: downloads and `disk.file.get` answer "not found".
    pub(crate) fn recording_missing(&self, id: u64) -> bool {
        let v = self.view();
        !v.exists(id) || v.state.withheld.contains(&id)
    }
}

impl LiveView {
    pub(crate) fn exists(&self, id: u64) -> bool {
        self.state.visible_up_to.is_none_or(|v| id <= v)
    }

    /// The calls that exist, as a prefix of the ID-ordered list.
    pub(crate) fn visible<'a>(&self, calls: &'a [CallRec]) -> &'a [CallRec] {
        match self.state.visible_up_to {
            None => calls,
            Some(v) => &calls[..calls.partition_point(|c| c.id <= v)],
        }
    }

    /// The row as the portal shows it now: without its recording while that is withheld.
    pub(crate) fn row<'a>(&self, call: &'a CallRec) -> Cow<'a, CallRec> {
        if self.state.withheld.contains(&call.id) {
            let mut c = call.clone();
            c.record = None;
            c.record_duration = None;
            Cow::Owned(c)
        } else {
            Cow::Borrowed(call)
        }
    }
}

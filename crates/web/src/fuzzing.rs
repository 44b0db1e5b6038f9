//! Entry points for the fuzz targets in `fuzz/` (hidden from the docs, not part of the crate's API): what a
//! portal or a browser posts, read the way the handlers read it — the install, event and page form bodies, and
//! the settings form with everything its validated result feeds (the call filter the engine runs). They must never
//! panic, whatever the input.

use std::time::Duration;

use b24sense_core::Call;
use chrono::FixedOffset;
use serde_json::json;

use crate::frame::{expires_in, BitrixForm};
use crate::i18n::{lang_of, Lang};
use crate::install::InstallForm;
use crate::settings::{check_form, plan, read_form, SettingsForm};
use crate::sync::is_stale;

/// A Bitrix24 form post (install frame, `ONAPPINSTALL`, call-end and uninstall events, the page's frame): the
/// query string and the urlencoded body.
pub fn bitrix_form(query: Option<&str>, body: &[u8]) {
    let f = BitrixForm::parse(query, body);
    let _ = InstallForm::read(&f);
    for k in [
        "event",
        "auth[member_id]",
        "auth[application_token]",
        "member_id",
        "DOMAIN",
    ] {
        let _ = (f.field(k), f.raw(k));
    }
    let _ = lang_of(f.raw("LANG"));
    let _ = expires_in(&f.field("AUTH_EXPIRES"));
    let _ = expires_in(&f.field("auth[expires_in]"));
    let _ = is_stale(f.raw("ts"), Duration::from_secs(300));
}

/// The settings page's JSON body, saved and checked, then the validated settings as the engine uses them.
pub fn settings_body(body: &[u8]) {
    let Ok(form) = serde_json::from_slice::<SettingsForm>(body) else {
        return;
    };
    for lang in [Lang::Ru, Lang::En] {
        let _ = check_form(&form, lang, None);
        for has_key in [false, true] {
            if let Ok((settings, _)) = read_form(&form, lang, has_key) {
                let plan = plan(&settings, lang).expect("settings read_form accepted pass plan");
                let _ = plan.filter.validate();
                let _ = plan.filter.to_bitrix_filter(0);
                for call in sample_calls() {
                    let _ = plan.filter.matches(&call);
                }
            }
        }
    }
}

/// Calls at the far ends of the portal offsets, for the filter's date bounds.
fn sample_calls() -> Vec<Call> {
    ["2025-04-24T14:34:19+14:00", "2025-04-24T14:34:19-12:00"]
        .iter()
        .filter_map(|date| {
            let row = json!({"ID": "1", "CALL_ID": "c", "CALL_START_DATE": date, "CALL_TYPE": "1",
                "CALL_DURATION": "60", "PORTAL_USER_ID": "1"});
            Call::from_bitrix(&row, FixedOffset::east_opt(0)?).ok()
        })
        .collect()
}

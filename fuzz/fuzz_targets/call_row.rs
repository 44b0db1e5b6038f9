//! One `voximplant.statistic.get` row (arbitrary JSON) read as a call, and the call mapped to talk metadata.
#![no_main]

use b24sense_core::{mapping, Call};
use chrono::FixedOffset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(row) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for hours in [0, 14, -12] {
        let offset = FixedOffset::east_opt(hours * 3600).expect("offset within a day");
        if let Ok(call) = Call::from_bitrix(&row, offset) {
            let _ = (
                call.crm_ref(),
                call.may_get_recording(),
                call.recording_seconds(),
            );
            let _ = mapping::talk_fields(&call, None, None, "");
        }
    }
});

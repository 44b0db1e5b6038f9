//! The settings page's JSON body (saved, checked, then used as the export's filter).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    b24sense_web::fuzzing::settings_body(data);
});

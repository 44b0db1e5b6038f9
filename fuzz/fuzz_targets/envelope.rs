//! A portal's response body (any JSON: envelopes, `batch` answers with `[]` for empty maps, numbers as strings)
//! through the Bitrix24 client's readers. The first byte picks the HTTP status it came with.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&s, body)) = data.split_first() else {
        return;
    };
    let status = [200, 400, 401, 403, 404, 429, 500, 503][usize::from(s % 8)];
    b24sense_bitrix24::fuzzing::response_body(status, body);
});

//! A Bitrix24 form post (install frame, `ONAPPINSTALL`, events, the page's frame). Input: the query string, a
//! NUL byte, then the urlencoded body (no NUL: body only).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    b24sense_web::fuzzing::bitrix_form(query, body);
});

//! The first bytes of a recording through the format probe, and its duration estimate.
#![no_main]

use b24sense_core::audio::{probe, MAX_PROBE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(MAX_PROBE_BYTES)];
    if let Ok(p) = probe(head) {
        let _ = (p.is_mono(), p.container.as_str());
        let _ = p.estimate_seconds(Some(data.len() as u64));
        let _ = p.estimate_seconds(None);
    }
});

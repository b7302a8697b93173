//! An API definition file (ASE's JSON): loaded or refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::checker::api;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = api::parse("fuzz", std::path::Path::new("fuzz.json"), text);
    }
});

//! An ABS answer body: parsed or refused, never a panic; the item cap and the unknown-key
//! cap hold whatever the document holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::abs::parse_attacklist;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = parse_attacklist(data, 64) {
        assert!(list.items.len() <= 64, "{} items", list.items.len());
        assert!(list.unknown.len() <= 32);
    }
});

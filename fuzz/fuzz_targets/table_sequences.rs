//! The kernel table's slot plans against the brute-force reference: the input seeds a random
//! sequence of adds, removals, batches, re-timings and prunes over nested prefix chains
//! (both families, every length). After every step the kernel-mirroring lookup must give
//! what the reference gives; now and then the guard bitmaps must equal a recomputation and
//! the slots a bulk rebuild; removing everything must leave nothing (the unit test's check,
//! `kernel::table::sequence`, with the input as seed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::kernel::table::sequence::check_sequence;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&data[..8]);
    let steps = 1 + usize::from(data[8] & 0x1f) * 2;
    // An IPv4 prefix shorter than /16 refreshes the guard bits of up to 65 536 /24s, slow
    // under coverage instrumentation: one input in eight draws them, the rest run many more
    // sequences.
    let min_v4_len = if data[8] & 0xe0 == 0 { 0 } else { 16 };
    check_sequence(u64::from_le_bytes(seed) | 1, steps, min_v4_len);
});

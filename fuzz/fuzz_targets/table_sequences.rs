//! The kernel table's slot plans against the brute-force reference: the input seeds a random
//! sequence of adds, removals, batches, re-timings and prunes over nested prefix chains
//! (both families, every length); after every step, the kernel-mirroring lookup must give
//! what the reference gives for addresses on and beside the chains.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::kernel::IpTable;
use portcullis::kernel::reference::{Chains, Reference, Rng};

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&data[..8]);
    let mut rng = Rng(u64::from_le_bytes(seed) | 1);
    let steps = 1 + usize::from(data[8] & 0x1f) * 2;
    let mut chains = Chains::new(&mut rng);
    // An IPv4 prefix shorter than /16 refreshes the guard bits of up to 65 536 /24s, slow
    // under coverage instrumentation: one input in eight draws them, the rest run many more
    // sequences.
    chains.min_v4_len = if data[8] & 0xe0 == 0 { 0 } else { 16 };
    let mut table = IpTable::default();
    let mut model = Reference::new();
    let mut now = 1_000_000_000u64;
    for step in 0..steps {
        now += rng.below(20_000_000);
        let op = chains.op(&mut rng, &model, now, 200_000_000);
        let changes = op.changes(&model);
        op.apply_to(&mut model);
        table
            .set_many(changes)
            .expect("the default capacity holds a few hundred entries");
        for _ in 0..32 {
            let p = chains.probe(&mut rng);
            let got = table.lookup(p);
            assert_eq!(
                (got.allow_until, got.deny_until),
                model.deadlines(p),
                "step {step} ({op:?}): probe {p}"
            );
        }
    }
});

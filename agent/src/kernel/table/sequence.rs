//! The table checked against the brute-force model over a random operation sequence: shared
//! by the unit tests and the `table_sequences` fuzz target (compiled for tests and the
//! `testkit` feature only).

use std::net::IpAddr;

use super::IpTable;
use crate::kernel::reference::{Chains, Reference, Rng};

/// Runs one operation sequence (seeded; IPv4 prefixes no shorter than `min_v4_len`), checking the table against the brute-force model after
/// every step: the kernel-mirroring lookup for many probes, and now and then the guard
/// bitmaps (incremental upkeep vs from scratch) and the slots (vs a bulk rebuild).
pub fn check_sequence(seed: u64, steps: usize, min_v4_len: u8) {
    let mut rng = Rng(seed);
    let mut chains = Chains::new(&mut rng);
    chains.min_v4_len = min_v4_len;
    let mut t = IpTable::default();
    let mut model = Reference::new();
    let mut now = 1_000_000_000u64;
    for step in 0..steps {
        now += rng.below(20_000_000);
        let op = chains.op(&mut rng, &model, now, 200_000_000);
        let changes = op.changes(&model);
        op.apply_to(&mut model);
        t.set_many(changes)
            .expect("default capacity holds a few hundred entries");
        let mut probes: Vec<IpAddr> = (0..48).map(|_| chains.probe(&mut rng)).collect();
        probes.extend(model.items().iter().take(16).map(|(_, c, _)| c.network()));
        for p in probes {
            let want = model.deadlines(p);
            let got = t.lookup(p);
            assert_eq!(
                (got.allow_until, got.deny_until),
                want,
                "seed {seed:#x} step {step} ({op:?}): probe {p}"
            );
        }
        if step % 16 == 0 || step + 1 == steps {
            let (v4, v6) = t.guards_from_scratch();
            assert_eq!(
                t.v4_guard_words(),
                v4,
                "seed {seed:#x} step {step}: v4 guard"
            );
            assert_eq!(
                t.v6_guard_words(),
                v6,
                "seed {seed:#x} step {step}: v6 guard"
            );
            let mut bulk = IpTable::default();
            bulk.set_many(model.items().iter().map(|(l, c, u)| (*l, *c, Some(*u))))
                .expect("fits");
            let sorted = |t: &IpTable| {
                let mut v: Vec<_> = t.slots().collect();
                v.sort_by_key(|(s, _)| *s);
                v
            };
            assert_eq!(
                sorted(&t),
                sorted(&bulk),
                "seed {seed:#x} step {step}: slots"
            );
            assert_eq!(t.v6_unguarded(), bulk.v6_unguarded(), "seed {seed:#x}");
        }
    }
    // Removing everything leaves no slot and no guard bit.
    t.set_many(model.items().iter().map(|(l, c, _)| (*l, *c, None)))
        .expect("fits");
    assert!(t.is_empty());
    assert_eq!(t.slots().count(), 0);
    assert!(t.v4_guard_words().is_empty());
    assert!(t.v6_guard_words().is_empty());
    assert!(!t.v6_unguarded());
}

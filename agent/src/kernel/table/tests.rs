use super::*;
use portcullis_common::NEVER;
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn c(s: &str) -> Cidr {
    s.parse().expect("test cidr")
}

#[test]
fn allow_inside_deny_and_removal() {
    let mut t = IpTable::default();
    t.set(List::Deny, c("10.0.0.0/8"), Some(NEVER))
        .expect("fits");
    t.set(List::Allow, c("10.1.2.3"), Some(NEVER))
        .expect("fits");
    assert_eq!(
        t.lookup(ip("10.9.9.9")),
        Deadlines {
            allow_until: 0,
            deny_until: NEVER
        }
    );
    assert_eq!(t.lookup(ip("10.1.2.3")).allow_until, NEVER);
    assert_eq!(t.lookup(ip("11.0.0.1")), Deadlines::EMPTY);
    let plan = t.set(List::Deny, c("10.0.0.0/8"), None).expect("fits");
    assert!(plan.slots.iter().all(|s| matches!(s.slot, Slot::V4Wide(_))));
    assert_eq!(t.lookup(ip("10.9.9.9")), Deadlines::EMPTY);
    assert_eq!(t.lookup(ip("10.1.2.3")).allow_until, NEVER);
}

#[test]
fn full_map_changes_nothing() {
    let cap = Capacity {
        v4_hosts: 100,
        ..Capacity::default()
    };
    let mut t = IpTable::new(cap);
    t.set(List::Deny, c("198.18.0.1"), Some(NEVER))
        .expect("fits");
    let err = t
        .set(List::Deny, c("198.18.1.0/25"), Some(NEVER))
        .expect_err("128 > 100");
    assert_eq!(err.map, "V4_HOSTS");
    assert_eq!(t.len(), 1);
    assert_eq!(t.slots().count(), 1);
    assert_eq!(t.lookup(ip("198.18.1.5")), Deadlines::EMPTY);
    assert_eq!(t.lookup(ip("198.18.0.1")).deny_until, NEVER);
}

/// Runs one operation sequence, checking the table against the brute-force model after
/// every step: the kernel-mirroring lookup for many probes, and now and then the guard
/// bitmaps (incremental upkeep vs from scratch) and the slots (vs a bulk rebuild).
fn check_sequence(seed: u64, steps: usize) {
    use super::super::reference::{Chains, Reference, Rng};
    let mut rng = Rng(seed);
    let chains = Chains::new(&mut rng);
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

#[test]
fn operation_sequences_match_reference() {
    for seed in 1..=24u64 {
        check_sequence(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 250);
    }
}

/// The bug that got through: a prefix added under a covering prefix must inherit its
/// deadlines (the LPM trie returns only the longest match), in every order.
#[test]
fn nested_v6_prefixes_in_every_order() {
    let allow = (List::Allow, c("2001:db8::/32"));
    let deny = (List::Deny, c("2001:db8:10::/48"));
    let inside = ip("2001:db8:10::2");
    for order in [[allow, deny], [deny, allow]] {
        let mut t = IpTable::default();
        for (l, cidr) in order {
            t.set(l, cidr, Some(NEVER)).expect("fits");
        }
        assert_eq!(t.lookup(inside).allow_until, NEVER, "{order:?}");
        // Removing the allow exposes the deny; removing the deny keeps the allow.
        let mut t2 = IpTable::default();
        for (l, cidr) in order {
            t2.set(l, cidr, Some(NEVER)).expect("fits");
        }
        t2.set(List::Allow, allow.1, None).expect("fits");
        assert_eq!(
            t2.lookup(inside),
            Deadlines {
                allow_until: 0,
                deny_until: NEVER
            }
        );
        t.set(List::Deny, deny.1, None).expect("fits");
        assert_eq!(
            t.lookup(inside),
            Deadlines {
                allow_until: NEVER,
                deny_until: 0
            }
        );
    }
    // A short (unguarded) covering allow, and an expiring one.
    let mut t = IpTable::default();
    t.set(List::Allow, c("2001::/16"), Some(5)).expect("fits");
    t.set(List::Deny, c("2001:db8:10::/48"), Some(NEVER))
        .expect("fits");
    assert_eq!(t.lookup(inside).allow_until, 5);
}

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

#[test]
fn operation_sequences_match_reference() {
    for seed in 1..=24u64 {
        super::sequence::check_sequence(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 250, 0);
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

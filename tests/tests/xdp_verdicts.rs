//! Verdicts of the production XDP program through `BPF_PROG_TEST_RUN`, with crafted frames and
//! real kernel maps: parsing (VLANs, fragments, truncation), allow-over-deny, expiry, monitor
//! mode, counters, drop events, randomized lists against a brute-force reference, bad input,
//! and pinned state surviving a reload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis::cidr::Cidr;
use portcullis::kernel::sys::boottime_ns;
use portcullis::kernel::{Capacity, Filter, KernelError, List, LoadOptions, PROGRAM};
use portcullis_common::{NEVER, counter, mode};
use portcullis_tests::frames::{self, Tag};
use portcullis_tests::reference::{self, Rng, Verdict};
use portcullis_tests::{PinDir, privileged};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}
fn cidr(s: &str) -> Cidr {
    s.parse().expect("test cidr")
}

fn load() -> Filter {
    Filter::load(&LoadOptions::default()).expect("load XDP object (root needed)")
}

fn run(f: &mut Filter, frame: &[u8]) -> u32 {
    f.test_run(PROGRAM, frame).expect("BPF_PROG_TEST_RUN")
}

#[test]
fn frame_table() {
    if !privileged("frame_table") {
        return;
    }
    let mut f = load();
    f.insert(List::Deny, cidr("198.18.7.7"), NEVER)
        .expect("insert");
    f.insert(List::Deny, cidr("2001:db8:bad::/48"), NEVER)
        .expect("insert");
    let q = Tag(0x8100, 100);
    let ad = Tag(0x88a8, 200);
    let denied = v4("198.18.7.7");
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("ipv4 denied", frames::ipv4(denied, &[], 0), XDP_DROP),
        (
            "ipv4 unlisted",
            frames::ipv4(v4("198.18.7.8"), &[], 0),
            XDP_PASS,
        ),
        (
            "ipv6 denied /48",
            frames::ipv6(v6("2001:db8:bad:1::9"), &[]),
            XDP_DROP,
        ),
        (
            "ipv6 unlisted",
            frames::ipv6(v6("2001:db8:bae::9"), &[]),
            XDP_PASS,
        ),
        ("802.1Q denied", frames::ipv4(denied, &[q], 0), XDP_DROP),
        ("QinQ denied", frames::ipv4(denied, &[ad, q], 0), XDP_DROP),
        (
            "QinQ ipv6 denied",
            frames::ipv6(v6("2001:db8:bad::1"), &[ad, q]),
            XDP_DROP,
        ),
        (
            "first fragment denied",
            frames::ipv4(denied, &[], 0x2000),
            XDP_DROP,
        ),
        (
            "later fragment denied",
            frames::ipv4(denied, &[], 0x00b9),
            XDP_DROP,
        ),
        ("ARP", frames::arp(), XDP_PASS),
    ];
    for (name, frame, want) in &cases {
        assert_eq!(run(&mut f, frame), *want, "{name}");
    }
    // Truncated frames of every kind pass (fail-open) and are counted.
    let full = frames::ipv4(denied, &[q], 0);
    let truncated: Vec<Vec<u8>> = vec![
        full[..14].to_vec(),      // VLAN ethertype, no tag (the kernel refuses < 14)
        full[..16].to_vec(),      // VLAN tag cut in half
        full[..18 + 10].to_vec(), // IPv4 header cut before the source
        frames::ipv6(v6("2001:db8:bad::1"), &[])[..14 + 30].to_vec(),
    ];
    for t in &truncated {
        assert_eq!(run(&mut f, t), XDP_PASS, "truncated {} bytes", t.len());
    }
    let c = f.counters().expect("counters");
    assert_eq!(c[counter::DROP_DENIED as usize].packets, 7);
    assert_eq!(c[counter::PASS_NO_MATCH as usize].packets, 2);
    assert_eq!(c[counter::PASS_NOT_IP as usize].packets, 1);
    assert_eq!(c[counter::PASS_TRUNCATED as usize].packets, 4);
    let dropped_bytes: usize = cases
        .iter()
        .filter(|(_, _, w)| *w == XDP_DROP)
        .map(|(_, fr, _)| fr.len())
        .sum();
    assert_eq!(c[counter::DROP_DENIED as usize].bytes, dropped_bytes as u64);
}

#[test]
fn allow_inside_deny_expiry_and_monitor() {
    if !privileged("allow_inside_deny_expiry_and_monitor") {
        return;
    }
    let mut f = load();
    f.insert(List::Deny, cidr("198.18.0.0/16"), NEVER)
        .expect("insert");
    f.insert(List::Allow, cidr("198.18.0.9/32"), NEVER)
        .expect("insert");
    assert_eq!(
        run(&mut f, &frames::ipv4(v4("198.18.0.9"), &[], 0)),
        XDP_PASS,
        "/32 allow inside denied /16"
    );
    assert_eq!(
        run(&mut f, &frames::ipv4(v4("198.18.0.10"), &[], 0)),
        XDP_DROP
    );
    let c = f.counters().expect("counters");
    assert_eq!(c[counter::PASS_ALLOWED as usize].packets, 1);

    // An entry whose deadline has passed no longer matches, even before the agent prunes it.
    let past = boottime_ns() - 1;
    f.insert(List::Deny, cidr("2001:db8:5::7"), past)
        .expect("insert");
    f.insert(List::Deny, cidr("198.19.1.1"), past)
        .expect("insert");
    assert_eq!(
        run(&mut f, &frames::ipv6(v6("2001:db8:5::7"), &[])),
        XDP_PASS,
        "expired v6"
    );
    assert_eq!(
        run(&mut f, &frames::ipv4(v4("198.19.1.1"), &[], 0)),
        XDP_PASS,
        "expired v4"
    );
    // ...but the same address under a live deadline drops.
    let soon = boottime_ns() + 60_000_000_000;
    f.insert(List::Deny, cidr("2001:db8:5::7"), soon)
        .expect("insert");
    assert_eq!(
        run(&mut f, &frames::ipv6(v6("2001:db8:5::7"), &[])),
        XDP_DROP,
        "live v6"
    );

    // Monitor mode passes what it would drop, and counts it.
    f.set_mode(mode::MONITOR).expect("monitor");
    assert_eq!(
        run(&mut f, &frames::ipv4(v4("198.18.0.10"), &[], 0)),
        XDP_PASS
    );
    let c = f.counters().expect("counters");
    assert_eq!(c[counter::MONITOR_WOULD_DROP as usize].packets, 1);
    f.set_mode(mode::ENFORCE).expect("enforce");
    assert_eq!(
        run(&mut f, &frames::ipv4(v4("198.18.0.10"), &[], 0)),
        XDP_DROP
    );
}

#[test]
fn drop_events_are_sampled_into_the_ring_buffer() {
    if !privileged("drop_events_are_sampled_into_the_ring_buffer") {
        return;
    }
    let mut f = load();
    let cfg = portcullis_common::Config {
        sample_mask: 0,
        ..f.config().expect("config")
    };
    f.set_config(cfg).expect("config");
    f.insert(List::Deny, cidr("198.18.3.3"), NEVER)
        .expect("insert");
    assert_eq!(
        run(
            &mut f,
            &frames::ipv4(v4("198.18.3.3"), &[Tag(0x8100, 42)], 0)
        ),
        XDP_DROP
    );
    let events = f.drain_events().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(&events[0].addr[..4], &[198, 18, 3, 3]);
    assert_eq!(events[0].vlan, 42);
    assert_eq!(events[0].verdict, counter::DROP_DENIED);
}

#[test]
fn random_lists_match_reference_in_kernel() {
    if !privileged("random_lists_match_reference_in_kernel") {
        return;
    }
    let mut f = load();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let now = boottime_ns();
    let mut model: Vec<(List, Cidr, u64)> = Vec::new();
    let v4 = |r: u64| (((r >> 40) as u32 % 4 + 198) << 24) | (r as u32 & 0x00ff_ffff);
    let v6 = |r: u64, s: u64| (0x2001_0db8u128 << 96) | (u128::from(s % 4) << 80) | u128::from(r);
    for _ in 0..3000 {
        let r = rng.next();
        let list = if r.is_multiple_of(9) {
            List::Allow
        } else {
            List::Deny
        };
        // Mostly live, some expired deadlines.
        let until = if r.is_multiple_of(11) {
            now - 1
        } else {
            now + 3_600_000_000_000
        };
        let c = match r % 5 {
            0 | 1 => Cidr::v4_host(v4(rng.next())),
            2 => Cidr::new(
                IpAddr::V4(v4(rng.next()).into()),
                (8 + rng.next() % 25) as u8,
            )
            .expect("len"),
            3 => Cidr::v6_host(v6(rng.next(), rng.next())),
            _ => Cidr::new(
                IpAddr::V6(v6(rng.next(), rng.next()).into()),
                [20u8, 32, 40, 48, 56, 64, 100][(rng.next() % 7) as usize],
            )
            .expect("len"),
        };
        model.retain(|(l, m, _)| !(*l == list && *m == c));
        model.push((list, c, until));
    }
    f.apply_many(model.iter().map(|(l, c, u)| (*l, *c, Some(*u))))
        .expect("bulk insert");
    let mut checked = 0;
    for i in 0..6000u64 {
        let r = rng.next();
        let ip = if i % 2 == 0 {
            match model.get((r % model.len() as u64) as usize) {
                Some((_, Cidr::V4 { addr, len }, _)) => IpAddr::V4(
                    (addr | (rng.next() as u32 & !portcullis::cidr::mask32(*len))).into(),
                ),
                Some((_, Cidr::V6 { addr, len }, _)) => IpAddr::V6(
                    (addr | (u128::from(rng.next()) & !portcullis::cidr::mask128(*len))).into(),
                ),
                None => continue,
            }
        } else if r.is_multiple_of(2) {
            IpAddr::V4(v4(rng.next()).into())
        } else {
            IpAddr::V6(v6(rng.next(), rng.next()).into())
        };
        let frame = match ip {
            IpAddr::V4(a) => frames::ipv4(a, &[], 0),
            IpAddr::V6(a) => frames::ipv6(a, &[]),
        };
        let want = match reference::verdict(&model, ip, boottime_ns()) {
            Verdict::Drop => XDP_DROP,
            _ => XDP_PASS,
        };
        assert_eq!(run(&mut f, &frame), want, "probe {ip}");
        checked += 1;
    }
    let c = f.counters().expect("counters");
    let (dropped, allowed) = (
        c[counter::DROP_DENIED as usize].packets,
        c[counter::PASS_ALLOWED as usize].packets,
    );
    assert!(
        dropped > 500 && allowed > 50,
        "probes exercised both lists: {dropped} dropped, {allowed} allowed of {checked}"
    );

    // Removing every entry restores a pass for every probe that was dropped.
    f.apply_many(model.iter().map(|(l, c, _)| (*l, *c, None)))
        .expect("bulk remove");
    assert_eq!(f.table().slots().count(), 0);
    for (_, c, _) in model.iter().take(200) {
        let frame = match c.network() {
            IpAddr::V4(a) => frames::ipv4(a, &[], 0),
            IpAddr::V6(a) => frames::ipv6(a, &[]),
        };
        assert_eq!(run(&mut f, &frame), XDP_PASS, "{c} after removal");
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !privileged("bad_input_is_refused_and_changes_nothing") {
        return;
    }
    assert!("198.18.0.0/33".parse::<Cidr>().is_err());
    assert!("2001:db8::/129".parse::<Cidr>().is_err());
    assert!("198.18.0.300".parse::<Cidr>().is_err());
    let cap = Capacity {
        v4_hosts: 64,
        v6_prefixes: 2,
        ..Capacity::default()
    };
    let mut f = Filter::load(&LoadOptions {
        capacity: cap,
        ..LoadOptions::default()
    })
    .expect("load");
    f.insert(List::Deny, cidr("198.18.0.5"), NEVER)
        .expect("insert");
    f.insert(List::Deny, cidr("2001:db8:1::/48"), NEVER)
        .expect("insert");
    // A /25 expands to 128 host slots: more than the map holds.
    let err = f
        .insert(List::Deny, cidr("198.18.1.0/25"), NEVER)
        .expect_err("map full");
    assert!(matches!(err, KernelError::Full(_)), "{err}");
    assert!(err.to_string().contains("V4_HOSTS is full"), "{err}");
    // Many hosts at once: all or nothing.
    let many: Vec<_> = (0..100u32)
        .map(|i| (List::Deny, Cidr::v4_host(0xC612_0200 + i), Some(NEVER)))
        .collect();
    assert!(matches!(f.apply_many(many), Err(KernelError::Full(_))));
    f.insert(List::Deny, cidr("2001:db8:2::/48"), NEVER)
        .expect("second prefix fits");
    assert!(matches!(
        f.insert(List::Deny, cidr("2001:db8:3::/48"), NEVER),
        Err(KernelError::Full(_))
    ));
    // What was there still works; nothing of the refused changes leaked in.
    assert_eq!(
        run(&mut f, &frames::ipv4(v4("198.18.0.5"), &[], 0)),
        XDP_DROP
    );
    assert_eq!(
        run(&mut f, &frames::ipv6(v6("2001:db8:1::1"), &[])),
        XDP_DROP
    );
    assert_eq!(
        run(&mut f, &frames::ipv4(v4("198.18.1.7"), &[], 0)),
        XDP_PASS
    );
    assert_eq!(
        run(&mut f, &frames::ipv4(v4("198.18.2.7"), &[], 0)),
        XDP_PASS
    );
    assert_eq!(
        run(&mut f, &frames::ipv6(v6("2001:db8:3::1"), &[])),
        XDP_PASS
    );
    assert_eq!(f.table().len(), 3);
}

#[test]
fn pinned_maps_survive_a_reload() {
    if !privileged("pinned_maps_survive_a_reload") {
        return;
    }
    let pins = PinDir::new();
    let opts = LoadOptions {
        pin_dir: Some(pins.0.clone()),
        ..LoadOptions::default()
    };
    let mut first = Filter::load(&opts).expect("load");
    first
        .insert(List::Deny, cidr("198.18.9.0/24"), NEVER)
        .expect("insert");
    drop(first);
    // A new agent process reuses the pinned maps: enforcement state is still there.
    let mut second = Filter::load(&opts).expect("reload");
    assert_eq!(
        run(&mut second, &frames::ipv4(v4("198.18.9.1"), &[], 0)),
        XDP_DROP
    );
    // And it can reconcile: re-inserting the same entry changes nothing and keeps dropping.
    second
        .insert(List::Deny, cidr("198.18.9.0/24"), NEVER)
        .expect("insert");
    assert_eq!(
        run(&mut second, &frames::ipv4(v4("198.18.9.1"), &[], 0)),
        XDP_DROP
    );
    // Incompatible pins (different capacity) are refused with a clear error.
    let other = LoadOptions {
        capacity: Capacity {
            v4_hosts: 1000,
            ..Capacity::default()
        },
        ..opts.clone()
    };
    match Filter::load(&other) {
        Err(e) => assert!(e.to_string().contains("V4_HOSTS"), "{e}"),
        Ok(_) => panic!("a pinned map of another size must be refused"),
    }
}

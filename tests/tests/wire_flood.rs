//! A flood on a real veth, from tens of thousands of distinct sources, through the
//! production XDP program: every frame from a denied source is dropped, every frame from an
//! allowed source inside a denied prefix passes (the allow list wins), every frame from an
//! unlisted source passes. The filter's own counters account for each frame the generator
//! delivered, and the generator delivers exactly the frames it was told to, then stops.
//! Sources stay inside 198.18.0.0/15.

use std::net::Ipv4Addr;
use std::time::Duration;

use portcullis::kernel::{AttachMode, Filter, LoadOptions};
use portcullis::model::{Cidr, List};
use portcullis_common::{NEVER, counter};
use portcullis_tests::netns::in_netns;
use portcullis_tests::privileged;
use portcullis_tests::wire::Wire;

const FRAMES: u32 = 200_000;

fn v4(a: [u8; 4]) -> u32 {
    u32::from(Ipv4Addr::from(a))
}

/// `count` consecutive addresses from `first`.
fn range(first: [u8; 4], count: u32) -> Vec<u32> {
    (0..count).map(|i| v4(first) + i).collect()
}

/// (dropped, passed allowed, passed unlisted) so far.
fn counts(f: &Filter) -> [u64; 3] {
    let c = f.counters().expect("counters");
    [
        counter::DROP_DENIED,
        counter::PASS_ALLOWED,
        counter::PASS_NO_MATCH,
    ]
    .map(|i| c[i as usize].packets)
}

#[test]
fn a_flood_from_many_sources_is_sorted_frame_by_frame() {
    let mut wire = privileged!(Wire::new().expect("generator"));
    let mut filter = Filter::load(&LoadOptions::default()).expect("load");
    let cidr = |s: &str| s.parse::<Cidr>().expect("cidr");
    filter
        .apply_many([
            (List::Deny, cidr("198.19.0.0/16"), Some(NEVER)),
            (List::Allow, cidr("198.19.7.0/24"), Some(NEVER)),
        ])
        .expect("entries");
    let hosts = range([198, 18, 64, 0], 1 << 14);
    filter
        .apply_many(
            hosts
                .iter()
                .map(|a| (List::Deny, Cidr::V4 { addr: *a, len: 32 }, Some(NEVER))),
        )
        .expect("denied hosts");
    let iface = wire.pair.server_if.clone();
    let attached = in_netns(&wire.pair.server, || {
        filter.attach(&iface, AttachMode::Native)
    })
    .expect("netns")
    .expect("attach");
    assert_eq!(attached.mode, AttachMode::Native, "{attached:?}");

    // Denied: 2^15 addresses of the denied /16 past the allowed /24, and 2^14 denied hosts.
    let mut denied = range([198, 19, 8, 0], 1 << 15);
    denied.extend(&hosts);
    denied.extend(range([198, 19, 136, 0], 1 << 14));
    // Allowed inside the denied /16, and unlisted (the upper half of 198.18.0.0/16, past the
    // denied hosts).
    let allowed = range([198, 19, 7, 0], 256);
    let unlisted = range([198, 18, 128, 0], 1 << 15);
    let cases: [(&str, &[u32], usize); 3] = [
        ("denied", &denied, 0),
        ("allowed inside a denied prefix", &allowed, 1),
        ("unlisted", &unlisted, 2),
    ];
    for (what, sources, verdict) in cases {
        wire.set_sources(sources).expect("sources");
        let before = counts(&filter);
        let kernel_drops = wire.server_xdp_drops().expect("veth counters");
        let burst = wire.burst(FRAMES, 0).expect("burst");
        // What the program did, as the veth driver saw it, not only what it counted.
        let dropped = wire.server_xdp_drops().expect("veth counters") - kernel_drops;
        let want = if verdict == 0 { burst.frames } else { 0 };
        assert_eq!(dropped, want, "{what}: frames the kernel dropped in XDP");
        assert_eq!(
            burst.frames,
            u64::from(FRAMES),
            "{what}: the generator delivers exactly its budget"
        );
        let after = counts(&filter);
        let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        for (i, got) in delta.iter().enumerate() {
            let want = if i == verdict { burst.frames } else { 0 };
            // The namespaces' own IPv6 chatter (router solicitations) is unlisted too.
            let slack = if i == 2 { 16 } else { 0 };
            assert!(
                got.abs_diff(want) <= slack,
                "{what}: {delta:?} (dropped, allowed, unlisted), want {} in slot {verdict}",
                burst.frames
            );
        }
    }
    // Bounded: once the budget is sent, nothing more leaves.
    let sent = wire.delivered().expect("delivered");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        wire.delivered().expect("delivered"),
        sent,
        "the loop stopped"
    );
}

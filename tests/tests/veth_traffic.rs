//! Real traffic over a veth pair between two namespaces made by the test: ICMP, UDP and TCP
//! from a denied source are dropped by the attached XDP program; allowed and unlisted sources
//! pass; removing the entry, and detaching, restore traffic.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use portcullis::kernel::{self, AttachMode, Filter, LoadOptions};
use portcullis::model::Cidr;
use portcullis::model::List;
use portcullis_common::{NEVER, counter};
use portcullis_tests::netns::{CLIENT_V4, CLIENT_V6, NetnsPair, SERVER_V4, SERVER_V6, in_netns};
use portcullis_tests::{PinDir, privileged};

fn cidr(s: &str) -> Cidr {
    s.parse().expect("test cidr")
}

/// Datagrams from `src` that reach the server's UDP socket out of `count` sent.
fn udp_delivered(pair: &NetnsPair, server: &UdpSocket, src: &str, count: usize) -> usize {
    let to: SocketAddr = server.local_addr().expect("bound");
    let src: std::net::IpAddr = src.parse().expect("ip");
    in_netns(&pair.client, move || {
        let sock = UdpSocket::bind((src, 0)).expect("bind client");
        for _ in 0..count {
            let _ = sock.send_to(b"portcullis", to);
        }
    })
    .expect("client netns");
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut got = 0;
    let mut buf = [0u8; 64];
    while server.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

/// Whether a TCP connection from `src` to the server's listener completes within 1 s.
fn tcp_connects(pair: &NetnsPair, port: u16, src: &str) -> bool {
    let out = pair
        .client_cmd(&[
            "nc",
            "-z",
            "-w",
            "1",
            "-s",
            src,
            SERVER_V4,
            &port.to_string(),
        ])
        .expect("nc");
    out.status.success()
}

#[test]
fn denied_sources_are_dropped_on_the_wire() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let pins = PinDir::new();
    let mut filter = Filter::load(&LoadOptions {
        pin_dir: Some(pins.0.clone()),
        ..LoadOptions::default()
    })
    .expect("load");
    let iface = pair.server_if.clone();
    let attached = in_netns(&pair.server, || filter.attach(&iface, AttachMode::Native))
        .expect("netns")
        .expect("attach");
    assert_eq!(
        attached.mode,
        AttachMode::Native,
        "veth supports native XDP: {attached:?}"
    );
    assert!(
        kernel::filter::link_pin(&pins.0, &pair.server_if).exists(),
        "link pinned"
    );

    let (udp, tcp) = in_netns(&pair.server, || {
        (
            UdpSocket::bind((SERVER_V4, 0)).expect("udp"),
            TcpListener::bind((SERVER_V4, 0)).expect("tcp"),
        )
    })
    .expect("server netns");
    let port = tcp.local_addr().expect("bound").port();
    let [denied, unlisted, allowed] = CLIENT_V4;

    // Before any entry, everyone gets through.
    assert_eq!(pair.ping(denied, SERVER_V4, 2).expect("ping"), 2);
    assert!(tcp_connects(&pair, port, denied));

    filter
        .insert(List::Deny, cidr(denied), NEVER)
        .expect("deny");
    pair.assert_pings(denied, SERVER_V4, 3, 0, "ICMP from denied source");
    assert_eq!(
        udp_delivered(&pair, &udp, denied, 5),
        0,
        "UDP from denied source"
    );
    assert!(!tcp_connects(&pair, port, denied), "TCP from denied source");
    pair.assert_pings(unlisted, SERVER_V4, 3, 3, "ICMP from unlisted source");
    assert_eq!(
        udp_delivered(&pair, &udp, unlisted, 5),
        5,
        "UDP from unlisted source"
    );
    assert!(
        tcp_connects(&pair, port, unlisted),
        "TCP from unlisted source"
    );

    // A whole range denied, one host in it allowed: the allow list wins.
    filter
        .insert(List::Deny, cidr("198.18.0.0/24"), NEVER)
        .expect("deny range");
    filter
        .insert(List::Allow, cidr(allowed), NEVER)
        .expect("allow");
    pair.assert_pings(unlisted, SERVER_V4, 2, 0, "inside denied range");
    pair.assert_pings(allowed, SERVER_V4, 3, 3, "allowed inside denied range");

    // IPv6.
    let [denied6, unlisted6] = CLIENT_V6;
    filter
        .insert(List::Deny, cidr(denied6), NEVER)
        .expect("deny v6");
    pair.assert_pings(denied6, SERVER_V6, 3, 0, "ICMPv6 from denied source");
    pair.assert_pings(unlisted6, SERVER_V6, 3, 3, "ICMPv6 from unlisted source");

    let c = filter.counters().expect("counters");
    assert!(
        c[counter::DROP_DENIED as usize].packets >= 3 + 5 + 2 + 3,
        "drops counted: {c:?}"
    );
    assert!(
        c[counter::PASS_ALLOWED as usize].packets >= 3,
        "allowed counted: {c:?}"
    );

    // Removing the entries restores traffic.
    filter
        .remove(List::Deny, cidr("198.18.0.0/24"))
        .expect("remove");
    filter.remove(List::Deny, cidr(denied)).expect("remove");
    pair.assert_pings(denied, SERVER_V4, 3, 3, "after removal");
    assert!(tcp_connects(&pair, port, denied), "TCP after removal");

    // Enforcement outlives the process that attached it: drop our handle, still dropping.
    filter
        .insert(List::Deny, cidr(denied), NEVER)
        .expect("deny");
    drop(filter);
    pair.assert_pings(denied, SERVER_V4, 2, 0, "after the loader exited");

    // Detach works without the loader and restores traffic.
    assert!(kernel::detach(&pins.0, &pair.server_if).expect("detach"));
    pair.assert_pings(denied, SERVER_V4, 2, 2, "after detach");
}

#[test]
fn a_restarted_loader_takes_over_the_pinned_link_without_a_gap() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let pins = PinDir::new();
    let opts = LoadOptions {
        pin_dir: Some(pins.0.clone()),
        ..LoadOptions::default()
    };
    let [denied, unlisted, _] = CLIENT_V4;
    let iface = pair.server_if.clone();
    {
        let mut first = Filter::load(&opts).expect("load");
        in_netns(&pair.server, || first.attach(&iface, AttachMode::Native))
            .expect("netns")
            .expect("attach");
        first.insert(List::Deny, cidr(denied), NEVER).expect("deny");
        first
            .insert(List::Deny, cidr("198.18.0.3"), NEVER)
            .expect("deny");
    }
    // Pings run while the second loader starts, takes over the link and reconciles. The
    // pinned drop counter must count every one of them, and they must go on after the
    // takeover is done: the window provably contains it.
    let dropped =
        |f: &Filter| f.counters().expect("counters")[counter::DROP_DENIED as usize].packets;
    const PINGS: u32 = 30;
    let mut second = Filter::load(&opts).expect("reload");
    let before = dropped(&second);
    let pinger = pair.ping_in_background(denied, SERVER_V4, PINGS);
    let attached = in_netns(&pair.server, || second.attach(&iface, AttachMode::Native))
        .expect("netns")
        .expect("attach");
    assert!(attached.reused_link, "{attached:?}");
    // The store of record now holds only `denied`: reconcile drops the stale entry.
    let report = second
        .reconcile([(List::Deny, cidr(denied), NEVER)])
        .expect("reconcile");
    assert!(report.removed >= 1, "{report:?}");
    pinger.assert_none_answered(Instant::now(), "the takeover");
    assert_eq!(
        dropped(&second) - before,
        u64::from(PINGS),
        "every ping dropped by XDP across the takeover, none lost elsewhere"
    );
    pair.assert_pings(unlisted, SERVER_V4, 2, 2, "stale entry gone");
    pair.assert_pings(denied, SERVER_V4, 2, 0, "kept entry enforced");
    assert!(kernel::detach(&pins.0, &pair.server_if).expect("detach"));
}

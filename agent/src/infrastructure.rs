//! Addresses this host depends on — its DNS resolvers and default gateways — which no
//! automatic source (ABS, the checker's detections) may deny-list: a feed answer or a
//! detection must not cut the host off its own network. The operator may, with `--force`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The `nameserver` addresses of a resolv.conf text.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.split_whitespace().next()?.split('%').next()?.parse().ok())
        .collect()
}

/// Default-route gateways of `/proc/net/route` (IPv4, little-endian hex) and
/// `/proc/net/ipv6_route` texts.
pub fn gateways(route: &str, ipv6_route: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for l in route.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, dest, gw, ..] = f[..]
            && dest == "00000000"
            && let Ok(g) = u32::from_str_radix(gw, 16)
            && g != 0
        {
            // The kernel prints the address's memory (network order) as a native integer.
            out.push(IpAddr::V4(Ipv4Addr::from(g.to_ne_bytes())));
        }
    }
    for l in ipv6_route.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        // dest, dest_len, src, src_len, next_hop, ...
        if let [dest, "00", _, _, hop, ..] = f[..]
            && dest.bytes().all(|b| b == b'0')
            && let Ok(h) = u128::from_str_radix(hop, 16)
            && h != 0
        {
            out.push(IpAddr::V6(Ipv6Addr::from(h)));
        }
    }
    out
}

/// This host's resolvers and gateways, read now (missing files: none).
pub fn addresses() -> Vec<IpAddr> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut all = resolvers(&read("/etc/resolv.conf"));
    all.extend(gateways(
        &read("/proc/net/route"),
        &read("/proc/net/ipv6_route"),
    ));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resolvers_and_default_gateways() {
        assert_eq!(
            resolvers("# x\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nsearch a\n"),
            vec![
                "10.255.255.53".parse::<IpAddr>().expect("ip"),
                "fe80::1".parse().expect("ip")
            ]
        );
        let route = "Iface\tDestination\tGateway \tFlags\nlo\t0000007F\t00000000\t0001\neth0\t00000000\t010200C0\t0003\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            gateways(route, v6),
            vec![
                "192.0.2.1".parse::<IpAddr>().expect("ip"),
                "fe80::1".parse().expect("ip")
            ]
        );
    }
}

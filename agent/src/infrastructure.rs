//! Addresses this host has and depends on — its interfaces, DNS resolvers, default gateways,
//! ABS's host and the API servers named by host name — which no automatic source (ABS, the
//! checker's detections) may deny-list: a feed answer or a detection must not cut the host
//! off its own network. (This host's own addresses need `--force` from every source.)
//!
//! They change while the agent runs (DHCP, a new resolver, DNS answers), so the agent reads
//! them again on every prune tick, off the list writer (name lookups block), and hands the
//! [`Reading`] to the writer's [`Protected`]. A name that does not resolve at one reading
//! keeps its last addresses: a DNS outage must not lift the protection.

use std::collections::HashMap;
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

/// Loopback is always this host's: a local load balancer makes every client look like
/// 127.0.0.1, and one detection must not then deny everyone.
const LOOPBACK: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

/// The addresses of this host's interfaces (a deny covering one needs `--force`); `None`
/// when they cannot be read now (out of file descriptors or memory).
pub fn host_addresses() -> Option<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family tells which sockaddr type ifa_addr points to.
            unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Some(out)
}

/// This host's resolvers and gateways, read now (no resolv.conf: no resolvers); `None` when
/// a file cannot be read now.
pub fn addresses() -> Option<Vec<IpAddr>> {
    let read = |p: &str| match std::fs::read_to_string(p) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(String::new()),
        Err(_) => None,
    };
    let mut all = resolvers(&read("/etc/resolv.conf")?);
    all.extend(gateways(
        &read("/proc/net/route")?,
        &read("/proc/net/ipv6_route")?,
    ));
    Some(all)
}

/// The host names whose addresses are protected: ABS's (from its URL) and the API servers'
/// that are not written as addresses.
pub fn names<'a>(abs_url: &str, servers: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    // Every ABS node of a comma-separated list.
    let abs = abs_url.split(',').filter_map(|url| {
        let url = url.trim();
        // A bare `host:port`, as ASE's `abs_endpoint` writes it (see `AbsConfig::urls`).
        let uri = if url.contains("://") {
            url.parse::<http::Uri>().ok()?
        } else {
            format!("https://{url}").parse::<http::Uri>().ok()?
        };
        uri.host().map(|h| h.trim_matches(['[', ']']).to_owned())
    });
    let mut out: Vec<String> = abs
        .chain(servers.into_iter().map(str::to_owned))
        .filter(|h| !h.is_empty() && h.parse::<IpAddr>().is_err())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One reading of the host's addresses and dependencies, taken off the writer. A part that
/// could not be read is `None` and leaves the last reading's in place: a failed read must
/// not lift the protection.
#[derive(Debug, Default)]
pub struct Reading {
    /// This host's interface addresses.
    pub own: Option<Vec<IpAddr>>,
    /// Resolvers and default gateways.
    pub system: Option<Vec<IpAddr>>,
    /// Each name with its addresses, or `None` when it did not resolve this time.
    pub named: Vec<(String, Option<Vec<IpAddr>>)>,
}

/// Reads everything now; resolves `names` (blocking: call it off the async workers).
pub fn read(names: &[String]) -> Reading {
    use std::net::ToSocketAddrs as _;
    let named = names
        .iter()
        .map(|n| {
            let found = (n.as_str(), 0)
                .to_socket_addrs()
                .ok()
                .map(|it| it.map(|a| a.ip().to_canonical()).collect::<Vec<_>>())
                .filter(|v| !v.is_empty());
            (n.clone(), found)
        })
        .collect();
    Reading {
        own: host_addresses(),
        system: addresses(),
        named,
    }
}

/// What the safety rules protect, as of the last [`Reading`].
#[derive(Debug, Default)]
pub struct Protected {
    own: Vec<IpAddr>,
    system: Vec<IpAddr>,
    named: HashMap<String, Vec<IpAddr>>,
}

impl Protected {
    /// Takes a reading: interfaces, resolvers and gateways as read (unless they could not
    /// be); names that resolved get their new addresses, names that did not keep the old
    /// ones, names no longer configured are dropped.
    pub fn update(&mut self, r: Reading) {
        if let Some(own) = r.own {
            self.own = own;
        }
        if let Some(system) = r.system {
            self.system = system;
        }
        let mut named = HashMap::with_capacity(r.named.len());
        for (name, found) in r.named {
            let keep = found.or_else(|| self.named.remove(&name));
            named.insert(name, keep.unwrap_or_default());
        }
        self.named = named;
    }

    /// This host's own addresses, loopback always among them.
    pub fn own(&self) -> impl Iterator<Item = &IpAddr> {
        self.own.iter().chain(&LOOPBACK)
    }

    /// Resolvers and default gateways, as the host itself says.
    pub fn system(&self) -> impl Iterator<Item = &IpAddr> {
        self.system.iter()
    }

    /// Addresses the host depends on: resolvers, gateways, ABS and named API servers.
    pub fn depended_on(&self) -> impl Iterator<Item = &IpAddr> {
        self.system.iter().chain(self.named.values().flatten())
    }
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

    #[test]
    fn names_are_abs_and_servers_given_by_name() {
        let n = names(
            "https://abs.example:8080/x",
            ["10.0.0.5", "api.internal", "api.internal", "::1"],
        );
        assert_eq!(n, ["abs.example", "api.internal"]);
        assert!(names("https://[2001:db8::5]:8080", []).is_empty());
        assert!(names("", []).is_empty());
        assert_eq!(
            names("https://abs1.example:8080, abs2.example:8080", []),
            ["abs1.example", "abs2.example"]
        );
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let mut p = Protected::default();
        let reading = |abs: Option<&str>, api: Option<&str>| Reading {
            own: Some(vec![ip("198.18.0.1")]),
            system: Some(vec![ip("198.18.0.53")]),
            named: [("abs", abs), ("api", api)]
                .into_iter()
                .map(|(n, a)| (n.to_owned(), a.map(|a| vec![ip(a)])))
                .collect(),
        };
        p.update(reading(Some("198.18.1.1"), Some("198.18.2.1")));
        // ABS's name moved; the API server's did not resolve this time.
        p.update(reading(Some("198.18.1.2"), None));
        let mut all: Vec<IpAddr> = p.depended_on().copied().collect();
        all.sort();
        assert_eq!(all, [ip("198.18.0.53"), ip("198.18.1.2"), ip("198.18.2.1")]);
        let own: Vec<IpAddr> = p.own().copied().collect();
        assert_eq!(own, [ip("198.18.0.1"), ip("127.0.0.1"), ip("::1")]);
        // Interfaces and files that cannot be read keep the last reading; a name no longer
        // configured is forgotten.
        p.update(Reading::default());
        assert_eq!(p.own().count(), 3);
        let left: Vec<IpAddr> = p.depended_on().copied().collect();
        assert_eq!(left, [ip("198.18.0.53")]);
    }
}

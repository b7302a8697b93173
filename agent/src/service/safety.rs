//! The safety rules: what no source may deny (or allow) without `--force`, and what an
//! automatic source may never deny.

use std::net::IpAddr;

use super::{Service, ServiceError};
use crate::model::Cidr;
use crate::model::Identifier;
use crate::model::List;

/// The addresses ABS's URL names (resolved once, at start).
pub(super) fn abs_hosts(url: &str) -> Vec<IpAddr> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Vec::new();
    };
    let Some(host) = uri.host() else {
        return Vec::new();
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    use std::net::ToSocketAddrs as _;
    (host, port)
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip().to_canonical()).collect())
        .unwrap_or_default()
}

/// The addresses of this host's interfaces (a deny covering one needs `--force`).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
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
    // Loopback counts too: a local load balancer makes every client look like 127.0.0.1,
    // and one detection must not then deny everyone.
    out.push(IpAddr::from([127, 0, 0, 1]));
    out.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    out
}

impl Service {
    /// Refuses, unless forced: denies that would cut off everyone, a large part of the
    /// Internet, this host or a management network; and an allow of every address, which
    /// would turn enforcement off.
    pub(super) fn check_safety(
        &self,
        list: List,
        ident: &Identifier,
        force: bool,
    ) -> Result<(), ServiceError> {
        let Some(cidr) = ident.cidr() else {
            return Ok(());
        };
        if force {
            return Ok(());
        }
        let min = match cidr {
            Cidr::V4 { .. } => self.config.min_deny_prefix_v4,
            Cidr::V6 { .. } => self.config.min_deny_prefix_v6,
        };
        let overlap =
            |nets: Vec<Cidr>| nets.into_iter().find(|n| n.covers(&cidr) || cidr.covers(n));
        let what = if list == List::Allow {
            // An allow of a huge range (or two halves of everything) turns enforcement off.
            (cidr.len() < min).then(|| {
                format!("more than a /{min} (min_deny_prefix), which turns enforcement off there,")
            })
        } else if cidr.len() == 0 {
            Some("every address".into())
        } else if cidr.len() < min {
            Some(format!("more than a /{min} (min_deny_prefix)"))
        } else if let Some(a) = self.own_addresses.iter().find(|a| cidr.contains(**a)) {
            Some(format!("this host's own address {a}"))
        } else if let Some(p) = overlap(self.config.checker.trusted_proxies()) {
            // The proxies in front of the checker speak for many clients.
            Some(format!("trusted proxy {p}, and every client behind it"))
        } else {
            overlap(self.config.management()).map(|m| format!("management network {m}"))
        };
        match what {
            Some(what) => Err(ServiceError::WorldBlocking { list, cidr, what }),
            None => Ok(()),
        }
    }

    /// What an automatic source (ABS, detections, the fleet) may never deny-list: the
    /// configured backends, ABS's hosts, this host's resolvers and gateways. (This host's
    /// addresses, loopback, trusted proxies and management networks are refused for every
    /// source by `check_safety`.)
    pub(super) fn check_automatic(&self, ident: &Identifier) -> Result<(), ServiceError> {
        let Some(cidr) = ident.cidr() else {
            return Ok(());
        };
        let backends: Vec<IpAddr> = self
            .checker
            .as_ref()
            .map(|(registry, _)| {
                registry
                    .apis()
                    .values()
                    .flat_map(|a| a.meta.servers.iter())
                    .filter_map(|s| s.host.parse::<IpAddr>().ok())
                    .collect()
            })
            .unwrap_or_default();
        let hit = self
            .infrastructure
            .iter()
            .map(|a| {
                (
                    a,
                    "an address this host depends on (resolver, gateway or ABS)",
                )
            })
            .chain(backends.iter().map(|a| (a, "a configured API server")))
            .find(|(a, _)| cidr.contains(**a));
        match hit {
            Some((a, what)) => Err(ServiceError::WorldBlocking {
                list: List::Deny,
                cidr,
                what: format!("{a}, {what}"),
            }),
            None => Ok(()),
        }
    }
}

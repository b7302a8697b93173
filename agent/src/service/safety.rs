//! The safety rules: what no source may deny (or allow) without `--force`, and what an
//! automatic source may never deny.

use std::net::IpAddr;

use super::{Service, ServiceError};
use crate::model::Cidr;
use crate::model::Identifier;
use crate::model::Kind;
use crate::model::List;

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
        } else if let Some(a) = self.protected.own().find(|a| cidr.contains(**a)) {
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
        // ABS nodes written as addresses (names are resolved into `protected`).
        let abs: Vec<IpAddr> = self
            .config
            .abs
            .urls()
            .iter()
            .filter_map(|u| u.parse::<http::Uri>().ok())
            .filter_map(|u| u.host()?.trim_matches(['[', ']']).parse().ok())
            .collect();
        let hit = self
            .protected
            .depended_on()
            .map(|a| {
                (
                    a,
                    "an address this host depends on (resolver, gateway, ABS or a named API server)",
                )
            })
            .chain(backends.iter().map(|a| (a, "a configured API server")))
            .chain(abs.iter().map(|a| (a, "an ABS node")))
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

    /// Takes off the deny entries from automatic sources that cover one of this host's
    /// addresses, resolvers or gateways now (one it got since), as adding them now would be
    /// refused. The operator's entries stay. Addresses found through DNS (ABS, named API
    /// servers) only refuse new entries: whoever answers for those names must not be able
    /// to lift detections.
    pub(super) fn lift_protected(&mut self) {
        let Some(filter) = &self.filter else {
            return;
        };
        // This host's own safety decision: the fleet keeps the entry for the others.
        let _quiet = self.outbox.quiet();
        let mut covering = Vec::new();
        {
            let table = filter.table();
            let protected = self.protected.own().chain(self.protected.system());
            for &a in protected {
                if table.lookup(a).deny_until == 0 {
                    continue;
                }
                let longest = if a.is_ipv4() { 32 } else { 128 };
                covering.extend(
                    (0..=longest)
                        .filter_map(|len| Cidr::new(a, len).ok())
                        .filter(|c| table.entry(c).deny_until != 0),
                );
            }
        }
        covering.sort_unstable_by_key(ToString::to_string);
        covering.dedup();
        for cidr in covering {
            let value = cidr.to_string();
            let Ok(ident) = Identifier::parse(Kind::Ip, None, &value) else {
                continue;
            };
            let rows = self.store.rows_of(List::Deny, &ident).unwrap_or_default();
            let mut sources: Vec<&str> = rows
                .iter()
                .filter(|r| r.source.is_automatic())
                .map(|r| r.source.as_str())
                .collect();
            sources.sort_unstable();
            sources.dedup();
            for source in sources {
                match self.remove(List::Deny, Kind::Ip, None, &value, Some(source)) {
                    Ok(_) => {
                        tracing::warn!(%cidr, source, "deny entry lifted: it covers an address this host has or depends on")
                    }
                    Err(e) => {
                        tracing::warn!(%cidr, source, "could not lift a deny entry that covers a protected address: {e}")
                    }
                }
            }
        }
    }
}

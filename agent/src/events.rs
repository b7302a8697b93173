//! The live event stream behind `portcullis events`: the kernel's sampled drops (which
//! interface, which source, which verdict, which deny entry matched) and the L7 checker's
//! blocks and detections. Published by the daemon and the checker on a broadcast channel the
//! list writer's handle carries; each control connection that asks gets its own receiver.
//! Nothing is built or sent while nobody listens.

use std::net::IpAddr;

use portcullis_common::{DropEvent, counter, family};
use serde::{Deserialize, Serialize};

use crate::kernel::IpTable;
use crate::model::Cidr;

/// Events a slow subscriber may fall behind by before it is told how many it lost.
pub const BACKLOG: usize = 4096;

/// One thing the stream reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A sampled XDP drop (or, in monitor mode, a packet that would have been dropped).
    Drop {
        /// Unix seconds, with milliseconds (when the agent read the sample).
        ts: f64,
        /// Interface name (or `ifindex N` when it cannot be named).
        iface: String,
        /// The packet's source address (may be spoofed).
        source: IpAddr,
        /// `drop_denied` or `monitor_would_drop`.
        verdict: String,
        /// Outer VLAN id (0: untagged).
        vlan: u32,
        /// The most specific deny entry covering the source, if one still does.
        matched: Option<String>,
        /// One in this many drops is sampled.
        sample_every: u32,
    },
    /// A request the checker refused or acted on: blocked by a list, a detection, a decoy.
    L7 {
        /// Unix seconds, with milliseconds.
        ts: f64,
        /// The client as the checker judged it.
        client: String,
        /// The API ("" when none answered for the request).
        api: String,
        /// Method.
        method: String,
        /// Path as received (without the query), up to 1 KiB.
        path: String,
        /// Status answered.
        status: u16,
        /// The L7 outcomes counted for the request, in order.
        outcomes: Vec<String>,
        /// The identifier that was on the deny list (secrets as fingerprints), when one was.
        matched: Option<String>,
    },
    /// This subscriber fell behind and lost events.
    Lost {
        /// How many.
        events: u64,
    },
}

/// The outcomes that make a request worth an event (the rest is normal traffic).
pub fn notable(outcomes: &[&str]) -> bool {
    outcomes.iter().any(|o| {
        matches!(
            *o,
            "blocked"
                | "would_block"
                | "decoy"
                | "invalid_method"
                | "invalid_protocol"
                | "invalid_content_type"
                | "missing_token"
                | "rate_limited"
                | "sideband_refused"
                | "detection_escalated"
                | "detection_over_budget"
        )
    })
}

/// The most specific deny entry of `table` that covers `ip` (see
/// [`crate::service::covering`]).
pub fn matched_deny(table: &IpTable, ip: IpAddr) -> Option<Cidr> {
    let host = Cidr::new(ip, if ip.is_ipv4() { 32 } else { 128 }).ok()?;
    // Any deadline at all: a sampled drop was decided by a live entry a moment ago.
    crate::service::covering(table, crate::model::List::Deny, &host, 0)
}

/// A drop sample's source address.
pub fn drop_source(e: &DropEvent) -> IpAddr {
    if e.family == family::V4 {
        IpAddr::from([e.addr[0], e.addr[1], e.addr[2], e.addr[3]])
    } else {
        IpAddr::from(e.addr)
    }
}

/// An interface's name (`ifindex N` when it has none now).
pub fn iface_name(ifindex: u32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname needs.
    let named = !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null();
    if named {
        // SAFETY: if_indextoname wrote a NUL-terminated name.
        unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        format!("ifindex {ifindex}")
    }
}

/// The stream's event for a drop sample (from `iface`) and the deny entry that matched it.
pub fn drop_event(
    e: &DropEvent,
    iface: String,
    matched: Option<&Cidr>,
    sample_every: u32,
) -> Event {
    let verdict = if e.verdict == counter::MONITOR_WOULD_DROP {
        "monitor_would_drop"
    } else {
        "drop_denied"
    };
    Event::Drop {
        ts: now(),
        iface,
        source: drop_source(e),
        verdict: verdict.into(),
        vlan: e.vlan,
        matched: matched.map(ToString::to_string),
        sample_every,
    }
}

/// Unix seconds now, with milliseconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64 / 1000.0)
}

/// Text from a client, safe for a terminal: control characters (escape sequences that could
/// rewrite the operator's screen, newlines that could fake a line) shown escaped.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

impl Event {
    /// One human-readable line.
    pub fn line(&self) -> String {
        let time = |ts: f64| {
            let secs = ts as i64;
            let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
            format!(
                "{h:02}:{m:02}:{s:02}.{:03}Z",
                ((ts.fract()) * 1000.0) as u32
            )
        };
        match self {
            Event::Drop {
                ts,
                iface,
                source,
                verdict,
                vlan,
                matched,
                ..
            } => {
                let what = if verdict == "monitor_would_drop" {
                    "would drop (monitor)"
                } else {
                    "dropped"
                };
                let vlan = if *vlan == 0 {
                    String::new()
                } else {
                    format!(" vlan {vlan}")
                };
                let entry = matched.as_deref().unwrap_or("(entry gone since)");
                format!(
                    "{} xdp  {} {source}{vlan} {what}, deny {entry}",
                    time(*ts),
                    printable(iface)
                )
            }
            Event::L7 {
                ts,
                client,
                api,
                method,
                path,
                status,
                outcomes,
                matched,
            } => format!(
                "{} l7   {} {} {} {} -> {status} [{}]{}",
                time(*ts),
                printable(client),
                if api.is_empty() { "-" } else { api.as_str() },
                printable(method),
                printable(path),
                outcomes.join(","),
                matched
                    .as_deref()
                    .map(|m| format!(" deny {}", printable(m)))
                    .unwrap_or_default()
            ),
            Event::Lost { events } => {
                format!("(fell behind: {events} events not shown)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_path_cannot_write_escape_sequences_or_lines() {
        let e = Event::L7 {
            ts: 0.5,
            client: "198.18.0.2".into(),
            api: "shop".into(),
            method: "GET".into(),
            path: "/x\u{1b}[2J\nfake line".into(),
            status: 403,
            outcomes: vec!["blocked".into()],
            matched: Some("username mallory".into()),
        };
        let line = e.line();
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line:?}");
        assert!(line.contains("\\u{1b}[2J\\nfake line"), "{line}");
        assert!(
            line.starts_with("00:00:00.500Z l7   198.18.0.2 shop GET"),
            "{line}"
        );
        let json = serde_json::to_string(&e).expect("json");
        assert!(json.starts_with("{\"type\":\"l7\""), "{json}");
    }

    #[test]
    fn the_most_specific_deny_entry_is_the_match() {
        use crate::kernel::Capacity;
        use crate::model::List;
        use portcullis_common::NEVER;
        let mut t = IpTable::new(Capacity::default());
        let net: Cidr = "198.18.0.0/16".parse().expect("cidr");
        let host: Cidr = "198.18.5.5/32".parse().expect("cidr");
        t.set(List::Deny, net, Some(NEVER)).expect("set");
        t.set(List::Deny, host, Some(NEVER)).expect("set");
        t.set(
            List::Allow,
            "198.18.9.0/24".parse().expect("cidr"),
            Some(NEVER),
        )
        .expect("set");
        let m = |ip: &str| matched_deny(&t, ip.parse().expect("ip")).map(|c| c.to_string());
        assert_eq!(m("198.18.5.5").as_deref(), Some("198.18.5.5/32"));
        assert_eq!(m("198.18.9.1").as_deref(), Some("198.18.0.0/16"));
        assert_eq!(m("198.19.0.1"), None);
    }

    #[test]
    fn only_refusals_and_detections_are_notable() {
        assert!(notable(&["blocked"]));
        assert!(notable(&["decoy"]));
        assert!(!notable(&["forwarded"]));
        assert!(!notable(&["allowed", "forwarded"]));
    }
}

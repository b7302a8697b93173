//! The log lines for the kernel's sampled drop events, once a second.
//!
//! Under a flood the kernel samples thousands of drops a second; a line for each would spend
//! the CPU the flood already takes on the agent's log, and drown it (the wire benchmark's
//! flood showed both). So a second's samples give at most [`LINES`] lines of their own, and
//! one summary line for all of them: how many, the packets they stand for, how many sources,
//! and the sources sampled most (who is attacking, which the per-interface metrics cannot
//! say).

use std::collections::HashMap;
use std::net::IpAddr;

use portcullis_common::{DropEvent, counter};

use crate::events::drop_source as source;

/// Sampled events logged one by one each second.
pub(super) const LINES: usize = 16;
/// Sources named in the summary line.
const TOP: usize = 5;
/// Samples the kernel's ring buffer holds (each with an 8-byte record header).
const RING_EVENTS: usize =
    portcullis_common::EVENTS_BYTES as usize / (std::mem::size_of::<DropEvent>() + 8);

/// A second's samples, summed up.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary {
    /// Samples of real drops.
    pub dropped: usize,
    /// Samples of monitor mode's "would drop".
    pub would_drop: usize,
    /// Distinct source addresses among the samples.
    pub sources: usize,
    /// The sources sampled most, with their sample counts, most first.
    pub top: Vec<(IpAddr, usize)>,
}

/// Sums up `events`.
pub(super) fn summarize(events: &[DropEvent]) -> Summary {
    let mut by_source: HashMap<IpAddr, usize> = HashMap::new();
    for e in events {
        *by_source.entry(source(e)).or_default() += 1;
    }
    let would_drop = events
        .iter()
        .filter(|e| e.verdict == counter::MONITOR_WOULD_DROP)
        .count();
    let sources = by_source.len();
    let mut top: Vec<(IpAddr, usize)> = by_source.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(TOP);
    Summary {
        dropped: events.len() - would_drop,
        would_drop,
        sources,
        top,
    }
}

/// Logs a second's samples: the first [`LINES`] one by one, then, if there were more, one
/// summary of all of them. `sample_every` is the kernel's sampling rate (one in N).
pub(super) fn log(events: &[DropEvent], sample_every: u32) {
    for e in events.iter().take(LINES) {
        let verdict = if e.verdict == counter::DROP_DENIED {
            "dropped"
        } else {
            "would drop (monitor)"
        };
        tracing::info!(source = %source(e), ifindex = e.ifindex, vlan = e.vlan, "sampled packet {verdict}");
    }
    if events.len() <= LINES {
        return;
    }
    let s = summarize(events);
    let top: Vec<String> = s.top.iter().map(|(a, n)| format!("{a} ({n})")).collect();
    let packets = events.len() as u64 * u64::from(sample_every);
    // A full ring buffer loses samples (never verdicts): the count is then a floor.
    let at_least = if events.len() >= RING_EVENTS * 9 / 10 {
        "at least "
    } else {
        ""
    };
    tracing::info!(
        samples = events.len(),
        dropped = s.dropped,
        would_drop = s.would_drop,
        sources = s.sources,
        "{} samples this second, {} logged above: {at_least}about {packets} packets (one in \
         {sample_every} is sampled; `portcullis stats` counts every drop) from {} sources; \
         sampled most: {}{}",
        events.len(),
        LINES,
        s.sources,
        top.join(", "),
        if s.would_drop > 0 {
            format!(
                "; {} of the samples only would drop (monitor mode)",
                s.would_drop
            )
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_common::family;

    fn event(a: [u8; 4], verdict: u32) -> DropEvent {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&a);
        DropEvent {
            addr,
            family: family::V4,
            verdict,
            ..DropEvent::default()
        }
    }

    #[test]
    fn the_summary_names_the_sources_sampled_most() {
        let mut events = Vec::new();
        for (host, n) in [(1u8, 3), (2, 7), (3, 1), (4, 7), (5, 2), (6, 1), (7, 1)] {
            for _ in 0..n {
                events.push(event([203, 0, 113, host], counter::DROP_DENIED));
            }
        }
        events.push(event([203, 0, 113, 9], counter::MONITOR_WOULD_DROP));
        let s = summarize(&events);
        let ip = |h: u8| IpAddr::from([203, 0, 113, h]);
        assert_eq!(s.dropped, 22);
        assert_eq!(s.would_drop, 1);
        assert_eq!(s.sources, 8);
        assert_eq!(
            s.top,
            vec![(ip(2), 7), (ip(4), 7), (ip(1), 3), (ip(5), 2), (ip(3), 1)],
            "most first, ties by address"
        );
    }

    #[test]
    fn ipv6_sources_keep_all_sixteen_bytes() {
        let addr: [u8; 16] = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .map(|a| a.octets())
            .unwrap_or_default();
        let e = DropEvent {
            addr,
            family: family::V6,
            ..DropEvent::default()
        };
        assert_eq!(source(&e).to_string(), "2001:db8::7");
    }
}

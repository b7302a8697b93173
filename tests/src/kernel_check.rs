//! Compares what a running agent's lists say with what its pinned kernel maps really hold
//! (read through the pins, not through the agent's own account of them).

use std::collections::BTreeMap;

use portcullis::control::answer::EntryView;
use portcullis::kernel::table::Slot;
use portcullis::kernel::{IpTable, KernelState};
use portcullis::model::Cidr;
use portcullis::model::List;
use portcullis_common::{Deadlines, NEVER};

use crate::agent::{Agent, AgentDirs, answer};

/// The agent's kernel maps, read from its pin directory.
pub fn kernel(dirs: &AgentDirs) -> KernelState {
    KernelState::read_pinned(&dirs.pins.0).expect("read the pinned maps")
}

/// A deadline as a class: none, finite, never. Kernel deadlines are `CLOCK_BOOTTIME`
/// instants the test cannot recompute, but which class they are in it can.
fn class(d: u64) -> u8 {
    match d {
        0 => 0,
        NEVER => 2,
        _ => 1,
    }
}

fn classes(slots: &BTreeMap<Slot, Deadlines>) -> BTreeMap<Slot, (u8, u8)> {
    slots
        .iter()
        .map(|(s, d)| (*s, (class(d.allow_until), class(d.deny_until))))
        .collect()
}

/// Panics unless the pinned maps hold exactly the slots and guard bits that the agent's IP
/// entries (as `allow list` and `deny list` report them) expand into.
pub fn assert_kernel_matches_lists(agent: &Agent, dirs: &AgentDirs) {
    let mut want: BTreeMap<(List, Cidr), u64> = BTreeMap::new();
    for list in [List::Allow, List::Deny] {
        let out = agent.cli(&[list.as_str(), "list", "--kind", "ip", "--json"]);
        let entries: Vec<EntryView> = answer(&out);
        for e in &entries {
            let cidr: Cidr = e
                .value
                .parse()
                .unwrap_or_else(|_| panic!("not a CIDR: {e:?}"));
            let until = if e.expires.is_none() { NEVER } else { 1 };
            // Several sources may list one CIDR: the kernel holds the latest deadline.
            let d = want.entry((list, cidr)).or_insert(0);
            *d = (*d).max(until);
        }
    }
    let mut table = IpTable::default();
    table
        .set_many(want.iter().map(|((l, c), u)| (*l, *c, Some(*u))))
        .expect("the lists fit the default capacity");
    let expected = KernelState::of_table(&table);
    let got = kernel(dirs);
    let (e, g) = (classes(&expected.slots), classes(&got.slots));
    let missing: Vec<_> = e
        .iter()
        .filter(|(s, v)| g.get(s) != Some(v))
        .take(5)
        .collect();
    let extra: Vec<_> = g
        .iter()
        .filter(|(s, v)| e.get(s) != Some(v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "kernel maps differ from the lists ({} entries): lists want {missing:?}, kernel has {extra:?}",
        want.len()
    );
    assert_eq!(got.v4_guard, expected.v4_guard, "IPv4 guard words");
    assert_eq!(got.v6_guard, expected.v6_guard, "IPv6 guard words");
    assert_eq!(got.v6_unguarded, expected.v6_unguarded, "short-prefix flag");
}

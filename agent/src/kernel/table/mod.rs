//! The user-space twin of the kernel maps: which slots the allow and deny entries expand into.
//!
//! The XDP program never sees an entry, only slots (see `portcullis_common`'s map layout). This
//! module turns entry changes into slot changes and guard-bitmap words, in memory, so the kernel
//! layer can write exactly what changed, in an order that never opens a gap, and undo it if a
//! write fails. It is pure logic and unit-tested against a brute-force model.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use portcullis_common::{
    Deadlines, GUARD_HOST, GUARD_PREFIX, V4_GUARD_WORDS, V4_WIDE_SLOTS, V6_GUARD_WORDS,
    v4_guard_slot, v6_guard_slot,
};

use crate::model::{Cidr, List};

mod lookup;
#[cfg(any(test, feature = "testkit"))]
pub mod sequence;
mod slots;
#[cfg(test)]
mod tests;
mod types;

pub use lookup::{SlotView, lookup};
use types::EntryMap;
pub use types::{Capacity, MapFull, Plan, Slot, SlotChange};

/// Allow and deny IP entries and the slots they expand into.
#[derive(Debug)]
pub struct IpTable {
    entries: EntryMap,
    v4_hosts: HashMap<u32, Deadlines>,
    v4_nets: HashMap<u32, Deadlines>,
    v4_wide: Vec<Deadlines>,
    /// Host-level slots per /24, for the guard's host bit.
    v4_hosts_per_net: HashMap<u32, u32>,
    v6_hosts: HashMap<u128, Deadlines>,
    v6_prefixes: BTreeMap<(u128, u8), Deadlines>,
    /// (host slots, prefix slots) per hashed /32, for the IPv6 guard bits.
    v6_per_guard: HashMap<u32, (u32, u32)>,
    /// Prefixes shorter than /32, which the IPv6 guard cannot see.
    v6_short: u32,
    /// Trie slots per prefix length, so a lookup in user space (the checker's) probes only
    /// the lengths stored, as the kernel's trie walk does, not all 128.
    v6_prefix_lens: [u32; 128],
    /// The IPv4 guard bitmap as the kernel should hold it, kept in step by `put_slot`.
    v4_guard: Vec<u64>,
    /// The IPv6 guard bitmap as the kernel should hold it.
    v6_guard: Vec<u64>,
    capacity: Capacity,
}

impl Default for IpTable {
    fn default() -> Self {
        Self::new(Capacity::default())
    }
}

fn with_list(d: Deadlines, list: List, until: u64) -> Deadlines {
    match list {
        List::Allow => Deadlines {
            allow_until: until,
            ..d
        },
        List::Deny => Deadlines {
            deny_until: until,
            ..d
        },
    }
}

/// What [`IpTable::apply`] touched, as it was before.
struct Before {
    entries: HashMap<Cidr, Deadlines>,
    slots: HashMap<Slot, Deadlines>,
    /// `v6_short` before the first change, if anything changed.
    v6_short: Option<u32>,
}

/// Guard bitmap words as (index, value) pairs.
type GuardWords = Vec<(u32, u64)>;

fn nonzero(words: &[u64]) -> GuardWords {
    words
        .iter()
        .enumerate()
        .filter(|(_, w)| **w != 0)
        .map(|(i, w)| (i as u32, *w))
        .collect()
}

fn v6_top32(addr: u128) -> u32 {
    (addr >> 96) as u32
}

impl IpTable {
    /// An empty table whose plans are checked against `capacity`.
    pub fn new(capacity: Capacity) -> Self {
        Self {
            entries: EntryMap::default(),
            v4_hosts: HashMap::default(),
            v4_nets: HashMap::default(),
            v4_wide: vec![Deadlines::EMPTY; V4_WIDE_SLOTS as usize],
            v4_hosts_per_net: HashMap::default(),
            v6_hosts: HashMap::default(),
            v6_prefixes: BTreeMap::new(),
            v6_per_guard: HashMap::default(),
            v6_short: 0,
            v6_prefix_lens: [0; 128],
            v4_guard: vec![0; V4_GUARD_WORDS as usize],
            v6_guard: vec![0; V6_GUARD_WORDS as usize],
            capacity,
        }
    }

    /// The capacities plans are checked against.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Entries and their deadlines per list (0 = not on that list).
    pub fn entries(&self) -> impl Iterator<Item = (Cidr, Deadlines)> + '_ {
        self.entries.iter()
    }

    /// The deadlines of one exact entry.
    pub fn entry(&self, cidr: &Cidr) -> Deadlines {
        self.entries.get(cidr).copied().unwrap_or_default()
    }

    /// Number of distinct CIDRs on either list.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether both lists are empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Current value of every non-empty slot (for reconciling against the kernel).
    pub fn slots(&self) -> impl Iterator<Item = (Slot, Deadlines)> + '_ {
        let hosts = self.v4_hosts.iter().map(|(k, v)| (Slot::V4Host(*k), *v));
        let nets = self.v4_nets.iter().map(|(k, v)| (Slot::V4Net(*k), *v));
        let wide = self
            .v4_wide
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, v)| (Slot::V4Wide(i as u32), *v));
        let h6 = self.v6_hosts.iter().map(|(k, v)| (Slot::V6Host(*k), *v));
        let p6 = self
            .v6_prefixes
            .iter()
            .map(|((a, l), v)| (Slot::V6Prefix(*a, *l), *v));
        hosts.chain(nets).chain(wide).chain(h6).chain(p6)
    }

    /// IPv4 guard words that are not zero.
    pub fn v4_guard_words(&self) -> Vec<(u32, u64)> {
        nonzero(&self.v4_guard)
    }

    /// IPv6 guard words that are not zero.
    pub fn v6_guard_words(&self) -> Vec<(u32, u64)> {
        nonzero(&self.v6_guard)
    }

    /// Whether IPv6 prefixes shorter than /32 exist.
    pub fn v6_unguarded(&self) -> bool {
        self.v6_short > 0
    }

    /// Puts `cidr` on `list` until `until` (a `CLOCK_BOOTTIME` deadline, `NEVER` for none),
    /// or takes it off with `None`. Returns what changed, already applied in memory; call
    /// [`IpTable::undo`] if the kernel write fails.
    pub fn set(&mut self, list: List, cidr: Cidr, until: Option<u64>) -> Result<Plan, MapFull> {
        self.set_many([(list, cidr, until)])
    }

    /// [`IpTable::set`] for many entries at once: each affected slot is computed and reported
    /// once. Entries that only raise deadlines (the usual bulk load) are painted in without
    /// re-reading their neighbours.
    pub fn set_many(
        &mut self,
        items: impl IntoIterator<Item = (List, Cidr, Option<u64>)>,
    ) -> Result<Plan, MapFull> {
        let items: Vec<_> = items.into_iter().collect();
        if self.entries.is_empty() && items.len() > 1 && items.iter().all(|(_, _, u)| u.is_some()) {
            return self.fill_empty(&items);
        }
        let before = self.apply(items);
        let plan = self.plan(before);
        if let Err(full) = self.check_capacity() {
            self.undo(&plan);
            return Err(full);
        }
        Ok(plan)
    }

    /// Applies items in memory; returns the old values of what they touched.
    fn apply(&mut self, items: Vec<(List, Cidr, Option<u64>)>) -> Before {
        let mut entry_old: HashMap<Cidr, Deadlines> = HashMap::default();
        let mut slot_old: HashMap<Slot, Deadlines> = HashMap::default();
        let mut recompute: HashSet<Slot> = HashSet::default();
        let mut short_before = None;
        for (list, cidr, until) in items {
            let old = self.entry(&cidr);
            let new = with_list(old, list, until.unwrap_or(0));
            if old == new {
                continue;
            }
            entry_old.entry(cidr).or_insert(old);
            if new.is_empty() {
                self.entries.remove(&cidr);
            } else {
                self.entries.insert(cidr, new);
            }
            let grows = new.allow_until >= old.allow_until && new.deny_until >= old.deny_until;
            short_before.get_or_insert(self.v6_short);
            self.for_each_slot(cidr, |table, slot| {
                let current = table.slot(slot);
                slot_old.entry(slot).or_insert(current);
                // A new trie slot aggregates every prefix covering it (the trie returns only
                // the longest match), not just this entry: compute it from scratch.
                let new_trie_slot = matches!(slot, Slot::V6Prefix(..)) && current.is_empty();
                if grows && !new_trie_slot {
                    table.put_slot(slot, current.max(new));
                } else {
                    recompute.insert(slot);
                }
            });
        }
        for slot in recompute {
            let value = self.compute_slot(slot);
            self.put_slot(slot, value);
        }
        Before {
            entries: entry_old,
            slots: slot_old,
            v6_short: short_before,
        }
    }

    /// The plan from the old values [`IpTable::apply`] returned to the table as it is now:
    /// the entries and slots that changed and the guard words those slots live under.
    fn plan(&self, before: Before) -> Plan {
        let Before {
            entries: entry_old,
            slots: slot_old,
            v6_short: short_before,
        } = before;
        let mut plan = Plan {
            entries: entry_old
                .into_iter()
                .map(|(c, old)| (c, old, self.entry(&c)))
                .collect(),
            ..Plan::default()
        };
        let mut v4_words = HashSet::default();
        let mut v6_words = HashSet::default();
        for (slot, old) in slot_old {
            let new = self.slot(slot);
            if new == old {
                continue;
            }
            plan.slots.push(SlotChange { slot, old, new });
            match slot {
                Slot::V4Host(a) => {
                    v4_words.insert(v4_guard_slot(a).0);
                }
                Slot::V4Net(n) => {
                    v4_words.insert(v4_guard_slot(n << 8).0);
                }
                Slot::V4Wide(i) => v4_words.extend((i << 3)..(i << 3) + 8),
                Slot::V6Host(a) | Slot::V6Prefix(a, _) => {
                    v6_words.insert(v6_guard_slot(v6_top32(a)).0);
                }
            }
        }
        plan.v4_guard = v4_words
            .into_iter()
            .map(|w| (w, self.v4_guard_word(w)))
            .collect();
        plan.v6_guard = v6_words
            .into_iter()
            .map(|w| (w, self.v6_guard_word(w)))
            .collect();
        if let Some(before) = short_before
            && (before > 0) != (self.v6_short > 0)
        {
            plan.v6_unguarded = Some(self.v6_short > 0);
        }
        plan
    }

    /// The bulk-load path (agent start, first sync): the table is empty and every item adds,
    /// so every slot's old value is empty and each slot is the running maximum of the entries
    /// painted into it. Counts and guard words are derived once at the end.
    fn fill_empty(&mut self, items: &[(List, Cidr, Option<u64>)]) -> Result<Plan, MapFull> {
        for (list, cidr, until) in items {
            let e = self.entries.get(cidr).copied().unwrap_or_default();
            self.entries
                .insert(*cidr, with_list(e, *list, until.unwrap_or(0)));
        }
        self.paint_slots();
        self.derive_guards();
        let mut plan = Plan {
            from_empty: true,
            ..Plan::default()
        };
        plan.slots = self
            .slots()
            .map(|(slot, new)| SlotChange {
                slot,
                old: Deadlines::EMPTY,
                new,
            })
            .collect();
        plan.v4_guard = self.v4_guard_words();
        plan.v6_guard = self.v6_guard_words();
        plan.v6_unguarded = self.v6_unguarded().then_some(true);
        if let Err(full) = self.check_capacity() {
            *self = IpTable::new(self.capacity);
            return Err(full);
        }
        Ok(plan)
    }

    /// Every slot of an empty table from the entries: IPv4 and IPv6 host slots as the running
    /// maximum of the entries painted into them, IPv6 prefix slots computed one by one.
    fn paint_slots(&mut self) {
        let hosts = self.entries.v4.keys().filter(|(_, len)| *len >= 25).count();
        self.v4_hosts.reserve(hosts + hosts / 8);
        let entries = std::mem::take(&mut self.entries);
        for (cidr, value) in entries.iter() {
            let value = &value;
            let paint = |slot: &mut Deadlines| *slot = slot.max(*value);
            match cidr {
                Cidr::V4 { addr, len } if len >= 25 => {
                    for i in 0..(1u32 << (32 - len)) {
                        paint(self.v4_hosts.entry(addr + i).or_default());
                    }
                }
                Cidr::V4 { addr, len } if len >= 17 => {
                    for i in 0..(1u32 << (24 - len)) {
                        paint(self.v4_nets.entry((addr >> 8) + i).or_default());
                    }
                }
                Cidr::V4 { addr, len } => {
                    for i in 0..(1u32 << (16 - len)) {
                        if let Some(w) = self.v4_wide.get_mut(((addr >> 16) + i) as usize) {
                            paint(w);
                        }
                    }
                }
                Cidr::V6 { addr, len: 128 } => paint(self.v6_hosts.entry(addr).or_default()),
                Cidr::V6 { .. } => {}
            }
        }
        self.entries = entries;
        // IPv6 prefix slots aggregate the prefixes covering them: computed per slot.
        let prefixes: Vec<(u128, u8)> = self
            .entries
            .v6
            .keys()
            .copied()
            .filter(|(_, len)| *len < 128)
            .collect();
        for (addr, len) in prefixes {
            let v = self.compute_slot(Slot::V6Prefix(addr, len));
            self.v6_prefixes.insert((addr, len), v);
        }
    }

    /// Guard counts and bits of a freshly painted table, once, set directly rather than
    /// recomputed per /24.
    fn derive_guards(&mut self) {
        for a in self.v4_hosts.keys() {
            *self.v4_hosts_per_net.entry(a >> 8).or_insert(0) += 1;
        }
        let set_bit = |guard: &mut Vec<u64>, net: u32, bit: u64| {
            let (word, shift) = v4_guard_slot(net << 8);
            if let Some(w) = guard.get_mut(word as usize) {
                *w |= bit << shift;
            }
        };
        for net in self.v4_hosts_per_net.keys() {
            set_bit(&mut self.v4_guard, *net, GUARD_HOST);
        }
        for net in self.v4_nets.keys() {
            set_bit(&mut self.v4_guard, *net, GUARD_PREFIX);
        }
        for (i, w) in self.v4_wide.iter().enumerate() {
            if !w.is_empty() {
                for net in (i as u32) << 8..((i as u32) << 8) + 256 {
                    set_bit(&mut self.v4_guard, net, GUARD_PREFIX);
                }
            }
        }
        let h6: Vec<u128> = self.v6_hosts.keys().copied().collect();
        for a in h6 {
            self.count_v6(a, false, true, |c| &mut c.0);
        }
        let p6: Vec<(u128, u8)> = self.v6_prefixes.keys().copied().collect();
        for (a, l) in p6 {
            self.v6_prefix_lens[usize::from(l)] += 1;
            if l < 32 {
                self.v6_short += 1;
            } else {
                self.count_v6(a, false, true, |c| &mut c.1);
            }
        }
    }

    /// Reverts a plan's in-memory changes (after a failed kernel write).
    pub fn undo(&mut self, plan: &Plan) {
        if plan.from_empty {
            *self = IpTable::new(self.capacity);
            return;
        }
        for (cidr, old, _) in &plan.entries {
            if old.is_empty() {
                self.entries.remove(cidr);
            } else {
                self.entries.insert(*cidr, *old);
            }
        }
        for change in &plan.slots {
            self.put_slot(change.slot, change.old);
        }
    }

    fn check_capacity(&self) -> Result<(), MapFull> {
        let checks = [
            ("V4_HOSTS", self.v4_hosts.len(), self.capacity.v4_hosts),
            ("V4_NETS", self.v4_nets.len(), self.capacity.v4_nets),
            ("V6_HOSTS", self.v6_hosts.len(), self.capacity.v6_hosts),
            (
                "V6_PREFIXES",
                self.v6_prefixes.len(),
                self.capacity.v6_prefixes,
            ),
        ];
        for (map, needed, capacity) in checks {
            if needed > capacity as usize {
                return Err(MapFull {
                    map,
                    needed,
                    capacity,
                });
            }
        }
        Ok(())
    }

    /// The deadlines the XDP program computes for `ip` from these slots (see [`lookup`]).
    pub fn lookup(&self, ip: std::net::IpAddr) -> Deadlines {
        lookup(self, ip)
    }
}

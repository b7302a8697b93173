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

use crate::cidr::{Cidr, mask128};

/// Which list an entry belongs to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum List {
    /// Never blocked, whatever the deny list holds.
    Allow,
    /// Blocked unless allowed.
    Deny,
}

/// One kernel map slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// `V4_HOSTS[addr]`.
    V4Host(u32),
    /// `V4_NETS[addr >> 8]`.
    V4Net(u32),
    /// `V4_WIDE[addr >> 16]`.
    V4Wide(u32),
    /// `V6_HOSTS[addr]`.
    V6Host(u128),
    /// `V6_PREFIXES[addr/len]`, `len < 128`.
    V6Prefix(u128, u8),
}

/// A slot's value before and after a change; [`Deadlines::EMPTY`] means "absent".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotChange {
    /// Which slot.
    pub slot: Slot,
    /// Value before.
    pub old: Deadlines,
    /// Value after.
    pub new: Deadlines,
}

/// What one table operation changed, in the form the kernel layer writes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Entry values before and after (for undo).
    pub entries: Vec<(Cidr, Deadlines, Deadlines)>,
    /// Slot values that changed.
    pub slots: Vec<SlotChange>,
    /// IPv4 guard words to write (index, new value).
    pub v4_guard: Vec<(u32, u64)>,
    /// IPv6 guard words to write (index, new value).
    pub v6_guard: Vec<(u32, u64)>,
    /// New value of `Config::v6_unguarded`, when it changed.
    pub v6_unguarded: Option<bool>,
    /// The table was empty before: undo empties it (`entries` is left empty to save memory).
    pub from_empty: bool,
}

impl Plan {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.from_empty && self.entries.is_empty() && self.slots.is_empty()
    }
}

/// Number of entries each kernel map may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// `V4_HOSTS`.
    pub v4_hosts: u32,
    /// `V4_NETS`.
    pub v4_nets: u32,
    /// `V6_HOSTS`.
    pub v6_hosts: u32,
    /// `V6_PREFIXES`.
    pub v6_prefixes: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use portcullis_common as c;
        Self {
            v4_hosts: c::V4_HOSTS_DEFAULT_CAPACITY,
            v4_nets: c::V4_NETS_DEFAULT_CAPACITY,
            v6_hosts: c::V6_HOSTS_DEFAULT_CAPACITY,
            v6_prefixes: c::V6_PREFIXES_DEFAULT_CAPACITY,
        }
    }
}

/// A map would overflow; nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "kernel map {map} is full: {needed} slots needed, capacity {capacity}; nothing was changed (raise the capacity in the config)"
)]
pub struct MapFull {
    /// Map name.
    pub map: &'static str,
    /// Slots the change needs.
    pub needed: usize,
    /// The map's capacity.
    pub capacity: u32,
}

/// The entries by CIDR, IPv4 keys kept compact (8 bytes instead of a 32-byte enum): at a
/// million entries this map dominates the agent's memory.
#[derive(Debug, Default)]
struct EntryMap {
    v4: HashMap<(u32, u8), Deadlines>,
    v6: HashMap<(u128, u8), Deadlines>,
}

impl EntryMap {
    fn get(&self, c: &Cidr) -> Option<&Deadlines> {
        match *c {
            Cidr::V4 { addr, len } => self.v4.get(&(addr, len)),
            Cidr::V6 { addr, len } => self.v6.get(&(addr, len)),
        }
    }

    fn contains_key(&self, c: &Cidr) -> bool {
        self.get(c).is_some()
    }

    fn insert(&mut self, c: Cidr, d: Deadlines) {
        match c {
            Cidr::V4 { addr, len } => self.v4.insert((addr, len), d),
            Cidr::V6 { addr, len } => self.v6.insert((addr, len), d),
        };
    }

    fn remove(&mut self, c: &Cidr) {
        match *c {
            Cidr::V4 { addr, len } => self.v4.remove(&(addr, len)),
            Cidr::V6 { addr, len } => self.v6.remove(&(addr, len)),
        };
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (Cidr, Deadlines)> + '_ {
        let v4 = self.v4.iter().map(|((addr, len), d)| {
            (
                Cidr::V4 {
                    addr: *addr,
                    len: *len,
                },
                *d,
            )
        });
        let v6 = self.v6.iter().map(|((addr, len), d)| {
            (
                Cidr::V6 {
                    addr: *addr,
                    len: *len,
                },
                *d,
            )
        });
        v4.chain(v6)
    }
}

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
    /// The IPv4 guard bitmap as the kernel should hold it, kept in step by `put_slot`.
    v4_guard: Vec<u64>,
    /// The IPv6 guard bitmap as the kernel should hold it.
    v6_guard: Vec<u64>,
    capacity: Capacity,
}

impl List {
    /// `allow` or `deny`.
    pub const fn as_str(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Deny => "deny",
        }
    }

    /// ASE's name for the list, for the migration aliases.
    pub const fn ase_name(self) -> &'static str {
        match self {
            List::Allow => "whitelist",
            List::Deny => "blacklist",
        }
    }
}

impl std::fmt::Display for List {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for List {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" | "whitelist" => Ok(List::Allow),
            "deny" | "blacklist" => Ok(List::Deny),
            _ => Err(format!("unknown list {s:?}: expected allow or deny")),
        }
    }
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
        if let Err(full) = self.check_capacity() {
            self.undo(&plan);
            return Err(full);
        }
        Ok(plan)
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
        // Guard counts and bits, once, set directly rather than recomputed per /24.
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
            if l < 32 {
                self.v6_short += 1;
            } else {
                self.count_v6(a, false, true, |c| &mut c.1);
            }
        }
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

    /// Calls `f` for every slot `cidr` expands into: /25–/32 into hosts, /17–/24 into /24s,
    /// /0–/16 into /16s (at most 128, 128 and 65 536 slots); IPv6 hosts and prefixes into one.
    fn for_each_slot(&mut self, cidr: Cidr, mut f: impl FnMut(&mut Self, Slot)) {
        match cidr {
            Cidr::V4 { addr, len } if len >= 25 => {
                for i in 0..(1u32 << (32 - len)) {
                    f(self, Slot::V4Host(addr + i));
                }
            }
            Cidr::V4 { addr, len } if len >= 17 => {
                for i in 0..(1u32 << (24 - len)) {
                    f(self, Slot::V4Net((addr >> 8) + i));
                }
            }
            Cidr::V4 { addr, len } => {
                for i in 0..(1u32 << (16 - len)) {
                    f(self, Slot::V4Wide((addr >> 16) + i));
                }
            }
            Cidr::V6 { addr, len: 128 } => f(self, Slot::V6Host(addr)),
            Cidr::V6 { addr, len } => {
                f(self, Slot::V6Prefix(addr, len));
                // Longer prefixes inside this one aggregate it: they change too.
                let last = addr | !mask128(len);
                let inner: Vec<(u128, u8)> = self
                    .v6_prefixes
                    .range((addr, len + 1)..=(last, 127))
                    .map(|(k, _)| *k)
                    .filter(|(a, l)| *l > len && a & mask128(len) == addr)
                    .collect();
                for (a, l) in inner {
                    f(self, Slot::V6Prefix(a, l));
                }
            }
        }
    }

    /// A slot's value from scratch: the latest deadlines of the entries that expand into it.
    fn compute_slot(&self, slot: Slot) -> Deadlines {
        let mut d = Deadlines::EMPTY;
        let mut take = |c: Cidr| {
            if let Some(v) = self.entries.get(&c) {
                d = d.max(*v);
            }
        };
        match slot {
            Slot::V4Host(a) => (25..=32).for_each(|l| {
                take(Cidr::V4 {
                    addr: a & crate::cidr::mask32(l),
                    len: l,
                })
            }),
            Slot::V4Net(n) => (17..=24).for_each(|l| {
                take(Cidr::V4 {
                    addr: (n << 8) & crate::cidr::mask32(l),
                    len: l,
                })
            }),
            Slot::V4Wide(i) => (0..=16).for_each(|l| {
                take(Cidr::V4 {
                    addr: (i << 16) & crate::cidr::mask32(l),
                    len: l,
                })
            }),
            Slot::V6Host(a) => take(Cidr::V6 { addr: a, len: 128 }),
            Slot::V6Prefix(a, len) => {
                // A trie slot exists only for a prefix that is itself an entry; its value
                // also carries the prefixes covering it (the trie returns only the longest).
                if !self.entries.contains_key(&Cidr::V6 { addr: a, len }) {
                    return Deadlines::EMPTY;
                }
                (0..=len).for_each(|l| {
                    take(Cidr::V6 {
                        addr: a & mask128(l),
                        len: l,
                    })
                })
            }
        }
        d
    }

    /// A slot's current value.
    pub fn slot(&self, slot: Slot) -> Deadlines {
        let found = match slot {
            Slot::V4Host(a) => self.v4_hosts.get(&a),
            Slot::V4Net(n) => self.v4_nets.get(&n),
            Slot::V4Wide(i) => self.v4_wide.get(i as usize),
            Slot::V6Host(a) => self.v6_hosts.get(&a),
            Slot::V6Prefix(a, l) => self.v6_prefixes.get(&(a, l)),
        };
        found.copied().unwrap_or_default()
    }

    /// Stores a slot value and keeps the guard counts in step.
    fn put_slot(&mut self, slot: Slot, value: Deadlines) {
        let present = !value.is_empty();
        match slot {
            Slot::V4Host(a) => {
                let was = if present {
                    self.v4_hosts.insert(a, value)
                } else {
                    self.v4_hosts.remove(&a)
                };
                match (was.is_some(), present) {
                    (false, true) => *self.v4_hosts_per_net.entry(a >> 8).or_insert(0) += 1,
                    (true, false) => {
                        if let Some(n) = self.v4_hosts_per_net.get_mut(&(a >> 8)) {
                            *n -= 1;
                            if *n == 0 {
                                self.v4_hosts_per_net.remove(&(a >> 8));
                            }
                        }
                    }
                    _ => {}
                }
                self.refresh_v4_guard(a >> 8);
            }
            Slot::V4Net(n) => {
                if present {
                    self.v4_nets.insert(n, value);
                } else {
                    self.v4_nets.remove(&n);
                }
                self.refresh_v4_guard(n);
            }
            Slot::V4Wide(i) => {
                let was = self.v4_wide.get(i as usize).is_some_and(|w| !w.is_empty());
                if let Some(w) = self.v4_wide.get_mut(i as usize) {
                    *w = value;
                }
                if was != present {
                    for net in (i << 8)..((i << 8) + 256) {
                        self.refresh_v4_guard(net);
                    }
                }
            }
            Slot::V6Host(a) => {
                let was = if present {
                    self.v6_hosts.insert(a, value)
                } else {
                    self.v6_hosts.remove(&a)
                };
                self.count_v6(a, was.is_some(), present, |c| &mut c.0);
            }
            Slot::V6Prefix(a, l) => {
                let was = if present {
                    self.v6_prefixes.insert((a, l), value)
                } else {
                    self.v6_prefixes.remove(&(a, l))
                };
                if l < 32 {
                    match (was.is_some(), present) {
                        (false, true) => self.v6_short += 1,
                        (true, false) => self.v6_short -= 1,
                        _ => {}
                    }
                } else {
                    self.count_v6(a, was.is_some(), present, |c| &mut c.1);
                }
            }
        }
    }

    fn count_v6(
        &mut self,
        addr: u128,
        was: bool,
        now: bool,
        pick: fn(&mut (u32, u32)) -> &mut u32,
    ) {
        let (word, shift) = v6_guard_slot(v6_top32(addr));
        let key = (word << 5) | (shift / 2);
        match (was, now) {
            (false, true) => *pick(self.v6_per_guard.entry(key).or_insert((0, 0))) += 1,
            (true, false) => {
                if let Some(c) = self.v6_per_guard.get_mut(&key) {
                    *pick(c) -= 1;
                    if *c == (0, 0) {
                        self.v6_per_guard.remove(&key);
                    }
                }
            }
            _ => return,
        }
        self.refresh_v6_guard(key);
    }

    /// The IPv4 guard word `word` as the current slots define it.
    pub fn v4_guard_word(&self, word: u32) -> u64 {
        self.v4_guard.get(word as usize).copied().unwrap_or(0)
    }

    /// The IPv6 guard word `word` as the current slots define it.
    pub fn v6_guard_word(&self, word: u32) -> u64 {
        self.v6_guard.get(word as usize).copied().unwrap_or(0)
    }

    /// Recomputes the two guard bits of one /24 from the slots.
    fn refresh_v4_guard(&mut self, net: u32) {
        let (word, shift) = v4_guard_slot(net << 8);
        let mut bits = 0;
        if self.v4_hosts_per_net.contains_key(&net) {
            bits |= GUARD_HOST;
        }
        let wide = self
            .v4_wide
            .get((net >> 8) as usize)
            .is_some_and(|w| !w.is_empty());
        if wide || self.v4_nets.contains_key(&net) {
            bits |= GUARD_PREFIX;
        }
        if let Some(w) = self.v4_guard.get_mut(word as usize) {
            *w = (*w & !((GUARD_HOST | GUARD_PREFIX) << shift)) | (bits << shift);
        }
    }

    /// Recomputes the two guard bits of one hashed IPv6 /32.
    fn refresh_v6_guard(&mut self, key: u32) {
        let (word, shift) = (key >> 5, (key & 31) * 2);
        let mut bits = 0;
        if let Some((hosts, prefixes)) = self.v6_per_guard.get(&key) {
            if *hosts > 0 {
                bits |= GUARD_HOST;
            }
            if *prefixes > 0 {
                bits |= GUARD_PREFIX;
            }
        }
        if let Some(w) = self.v6_guard.get_mut(word as usize) {
            *w = (*w & !((GUARD_HOST | GUARD_PREFIX) << shift)) | (bits << shift);
        }
    }

    /// Both guard bitmaps recomputed from the slots alone (non-zero words), to check the
    /// incremental upkeep.
    #[cfg(test)]
    fn guards_from_scratch(&self) -> (GuardWords, GuardWords) {
        let mut fresh = IpTable::new(self.capacity);
        for (slot, value) in self.slots() {
            fresh.put_slot(slot, value);
        }
        (fresh.v4_guard_words(), fresh.v6_guard_words())
    }

    /// The deadlines the XDP program computes for `ip` from these slots (see [`lookup`]).
    pub fn lookup(&self, ip: std::net::IpAddr) -> Deadlines {
        lookup(self, ip)
    }
}

/// What the kernel's lookup reads: the twin's maps, or maps read back from the kernel.
pub trait SlotView {
    /// A slot's value ([`Deadlines::EMPTY`] when absent).
    fn slot(&self, slot: Slot) -> Deadlines;
    /// One IPv4 guard word.
    fn v4_guard_word(&self, word: u32) -> u64;
    /// One IPv6 guard word.
    fn v6_guard_word(&self, word: u32) -> u64;
    /// Whether IPv6 prefixes shorter than /32 exist (`Config::v6_unguarded`).
    fn v6_unguarded(&self) -> bool;
    /// The trie slot of exactly this prefix, if stored.
    fn v6_prefix(&self, addr: u128, len: u8) -> Option<Deadlines>;
}

impl SlotView for IpTable {
    fn slot(&self, slot: Slot) -> Deadlines {
        IpTable::slot(self, slot)
    }
    fn v4_guard_word(&self, word: u32) -> u64 {
        IpTable::v4_guard_word(self, word)
    }
    fn v6_guard_word(&self, word: u32) -> u64 {
        IpTable::v6_guard_word(self, word)
    }
    fn v6_unguarded(&self) -> bool {
        IpTable::v6_unguarded(self)
    }
    fn v6_prefix(&self, addr: u128, len: u8) -> Option<Deadlines> {
        self.v6_prefixes.get(&(addr, len)).copied()
    }
}

/// The deadlines the XDP program computes for `ip` from `view`: the same guard bits,
/// short-prefix flag and lookups as `classify_v4`/`classify_v6` in `filter-ebpf`, step for
/// step, so property tests judge the layout the kernel really reads.
pub fn lookup(view: &impl SlotView, ip: std::net::IpAddr) -> Deadlines {
    match ip {
        std::net::IpAddr::V4(a) => {
            let a = u32::from(a);
            let (w, s) = v4_guard_slot(a);
            let bits = (view.v4_guard_word(w) >> s) & (GUARD_HOST | GUARD_PREFIX);
            let mut d = Deadlines::EMPTY;
            if bits & GUARD_HOST != 0 {
                d = view.slot(Slot::V4Host(a));
            }
            if bits & GUARD_PREFIX != 0 {
                d = d
                    .max(view.slot(Slot::V4Net(a >> 8)))
                    .max(view.slot(Slot::V4Wide(a >> 16)));
            }
            d
        }
        std::net::IpAddr::V6(a) => {
            let a = u128::from(a);
            let (w, s) = v6_guard_slot(v6_top32(a));
            let mut bits = (view.v6_guard_word(w) >> s) & (GUARD_HOST | GUARD_PREFIX);
            if view.v6_unguarded() {
                bits |= GUARD_PREFIX;
            }
            let mut d = Deadlines::EMPTY;
            if bits & GUARD_HOST != 0 {
                d = view.slot(Slot::V6Host(a));
            }
            if bits & GUARD_PREFIX != 0 {
                // The LPM trie: the longest stored prefix containing `a`.
                let longest = (0..128u8)
                    .rev()
                    .find_map(|l| view.v6_prefix(a & mask128(l), l));
                if let Some(v) = longest {
                    d = d.max(v);
                }
            }
            d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_common::NEVER;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn c(s: &str) -> Cidr {
        s.parse().expect("test cidr")
    }

    #[test]
    fn allow_inside_deny_and_removal() {
        let mut t = IpTable::default();
        t.set(List::Deny, c("10.0.0.0/8"), Some(NEVER))
            .expect("fits");
        t.set(List::Allow, c("10.1.2.3"), Some(NEVER))
            .expect("fits");
        assert_eq!(
            t.lookup(ip("10.9.9.9")),
            Deadlines {
                allow_until: 0,
                deny_until: NEVER
            }
        );
        assert_eq!(t.lookup(ip("10.1.2.3")).allow_until, NEVER);
        assert_eq!(t.lookup(ip("11.0.0.1")), Deadlines::EMPTY);
        let plan = t.set(List::Deny, c("10.0.0.0/8"), None).expect("fits");
        assert!(plan.slots.iter().all(|s| matches!(s.slot, Slot::V4Wide(_))));
        assert_eq!(t.lookup(ip("10.9.9.9")), Deadlines::EMPTY);
        assert_eq!(t.lookup(ip("10.1.2.3")).allow_until, NEVER);
    }

    #[test]
    fn full_map_changes_nothing() {
        let cap = Capacity {
            v4_hosts: 100,
            ..Capacity::default()
        };
        let mut t = IpTable::new(cap);
        t.set(List::Deny, c("198.18.0.1"), Some(NEVER))
            .expect("fits");
        let err = t
            .set(List::Deny, c("198.18.1.0/25"), Some(NEVER))
            .expect_err("128 > 100");
        assert_eq!(err.map, "V4_HOSTS");
        assert_eq!(t.len(), 1);
        assert_eq!(t.slots().count(), 1);
        assert_eq!(t.lookup(ip("198.18.1.5")), Deadlines::EMPTY);
        assert_eq!(t.lookup(ip("198.18.0.1")).deny_until, NEVER);
    }

    /// Runs one operation sequence, checking the table against the brute-force model after
    /// every step: the kernel-mirroring lookup for many probes, and now and then the guard
    /// bitmaps (incremental upkeep vs from scratch) and the slots (vs a bulk rebuild).
    fn check_sequence(seed: u64, steps: usize) {
        use super::super::reference::{Chains, Reference, Rng};
        let mut rng = Rng(seed);
        let chains = Chains::new(&mut rng);
        let mut t = IpTable::default();
        let mut model = Reference::new();
        let mut now = 1_000_000_000u64;
        for step in 0..steps {
            now += rng.below(20_000_000);
            let op = chains.op(&mut rng, &model, now, 200_000_000);
            let changes = op.changes(&model);
            op.apply_to(&mut model);
            t.set_many(changes)
                .expect("default capacity holds a few hundred entries");
            let mut probes: Vec<IpAddr> = (0..48).map(|_| chains.probe(&mut rng)).collect();
            probes.extend(model.items().iter().take(16).map(|(_, c, _)| c.network()));
            for p in probes {
                let want = model.deadlines(p);
                let got = t.lookup(p);
                assert_eq!(
                    (got.allow_until, got.deny_until),
                    want,
                    "seed {seed:#x} step {step} ({op:?}): probe {p}"
                );
            }
            if step % 16 == 0 || step + 1 == steps {
                let (v4, v6) = t.guards_from_scratch();
                assert_eq!(
                    t.v4_guard_words(),
                    v4,
                    "seed {seed:#x} step {step}: v4 guard"
                );
                assert_eq!(
                    t.v6_guard_words(),
                    v6,
                    "seed {seed:#x} step {step}: v6 guard"
                );
                let mut bulk = IpTable::default();
                bulk.set_many(model.items().iter().map(|(l, c, u)| (*l, *c, Some(*u))))
                    .expect("fits");
                let sorted = |t: &IpTable| {
                    let mut v: Vec<_> = t.slots().collect();
                    v.sort_by_key(|(s, _)| *s);
                    v
                };
                assert_eq!(
                    sorted(&t),
                    sorted(&bulk),
                    "seed {seed:#x} step {step}: slots"
                );
                assert_eq!(t.v6_unguarded(), bulk.v6_unguarded(), "seed {seed:#x}");
            }
        }
        // Removing everything leaves no slot and no guard bit.
        t.set_many(model.items().iter().map(|(l, c, _)| (*l, *c, None)))
            .expect("fits");
        assert!(t.is_empty());
        assert_eq!(t.slots().count(), 0);
        assert!(t.v4_guard_words().is_empty());
        assert!(t.v6_guard_words().is_empty());
        assert!(!t.v6_unguarded());
    }

    #[test]
    fn operation_sequences_match_reference() {
        for seed in 1..=24u64 {
            check_sequence(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 250);
        }
    }

    /// The bug that got through: a prefix added under a covering prefix must inherit its
    /// deadlines (the LPM trie returns only the longest match), in every order.
    #[test]
    fn nested_v6_prefixes_in_every_order() {
        let allow = (List::Allow, c("2001:db8::/32"));
        let deny = (List::Deny, c("2001:db8:10::/48"));
        let inside = ip("2001:db8:10::2");
        for order in [[allow, deny], [deny, allow]] {
            let mut t = IpTable::default();
            for (l, cidr) in order {
                t.set(l, cidr, Some(NEVER)).expect("fits");
            }
            assert_eq!(t.lookup(inside).allow_until, NEVER, "{order:?}");
            // Removing the allow exposes the deny; removing the deny keeps the allow.
            let mut t2 = IpTable::default();
            for (l, cidr) in order {
                t2.set(l, cidr, Some(NEVER)).expect("fits");
            }
            t2.set(List::Allow, allow.1, None).expect("fits");
            assert_eq!(
                t2.lookup(inside),
                Deadlines {
                    allow_until: 0,
                    deny_until: NEVER
                }
            );
            t.set(List::Deny, deny.1, None).expect("fits");
            assert_eq!(
                t.lookup(inside),
                Deadlines {
                    allow_until: NEVER,
                    deny_until: 0
                }
            );
        }
        // A short (unguarded) covering allow, and an expiring one.
        let mut t = IpTable::default();
        t.set(List::Allow, c("2001::/16"), Some(5)).expect("fits");
        t.set(List::Deny, c("2001:db8:10::/48"), Some(NEVER))
            .expect("fits");
        assert_eq!(t.lookup(inside).allow_until, 5);
    }
}

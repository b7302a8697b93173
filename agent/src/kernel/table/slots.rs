//! How entries become slots: the slots a CIDR expands into, what each slot must hold, and
//! the guard bitmap words kept in step with them.

use portcullis_common::{Deadlines, GUARD_HOST, GUARD_PREFIX, v4_guard_slot, v6_guard_slot};

use super::{IpTable, Slot, v6_top32};
use crate::model::{Cidr, mask128};

impl IpTable {
    /// Calls `f` for every slot `cidr` expands into: /25–/32 into hosts, /17–/24 into /24s,
    /// /0–/16 into /16s (at most 128, 128 and 65 536 slots); IPv6 hosts and prefixes into one.
    pub(super) fn for_each_slot(&mut self, cidr: Cidr, mut f: impl FnMut(&mut Self, Slot)) {
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
    pub(super) fn compute_slot(&self, slot: Slot) -> Deadlines {
        let mut d = Deadlines::EMPTY;
        let mut take = |c: Cidr| {
            if let Some(v) = self.entries.get(&c) {
                d = d.max(*v);
            }
        };
        match slot {
            Slot::V4Host(a) => (25..=32).for_each(|l| {
                take(Cidr::V4 {
                    addr: a & crate::model::mask32(l),
                    len: l,
                })
            }),
            Slot::V4Net(n) => (17..=24).for_each(|l| {
                take(Cidr::V4 {
                    addr: (n << 8) & crate::model::mask32(l),
                    len: l,
                })
            }),
            Slot::V4Wide(i) => (0..=16).for_each(|l| {
                take(Cidr::V4 {
                    addr: (i << 16) & crate::model::mask32(l),
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
    pub(super) fn put_slot(&mut self, slot: Slot, value: Deadlines) {
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
                match (was.is_some(), present) {
                    (false, true) => self.v6_prefix_lens[usize::from(l)] += 1,
                    (true, false) => self.v6_prefix_lens[usize::from(l)] -= 1,
                    _ => {}
                }
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

    pub(super) fn count_v6(
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
    pub(super) fn refresh_v4_guard(&mut self, net: u32) {
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
    pub(super) fn refresh_v6_guard(&mut self, key: u32) {
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
    #[cfg(any(test, feature = "testkit"))]
    pub(super) fn guards_from_scratch(&self) -> (super::GuardWords, super::GuardWords) {
        let mut fresh = IpTable::new(self.capacity);
        for (slot, value) in self.slots() {
            fresh.put_slot(slot, value);
        }
        (fresh.v4_guard_words(), fresh.v6_guard_words())
    }
}

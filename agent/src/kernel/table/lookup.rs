//! The XDP program's lookup, step for step, over any view of the slots: the twin's, or maps
//! read back from the kernel.

use portcullis_common::{Deadlines, GUARD_HOST, GUARD_PREFIX, v4_guard_slot, v6_guard_slot};

use super::{IpTable, Slot, v6_top32};
use crate::model::mask128;

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
    /// Whether any trie slot has this length (a view that cannot tell says yes).
    fn v6_prefix_len_stored(&self, _len: u8) -> bool {
        true
    }
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
    fn v6_prefix_len_stored(&self, len: u8) -> bool {
        self.v6_prefix_lens[usize::from(len)] > 0
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
                    .filter(|l| view.v6_prefix_len_stored(*l))
                    .find_map(|l| view.v6_prefix(a & mask128(l), l));
                if let Some(v) = longest {
                    d = d.max(v);
                }
            }
            d
        }
    }
}

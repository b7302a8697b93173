//! What the table hands the kernel layer: slots, planned slot changes, capacities, and the
//! compact map of entries behind them.

use rustc_hash::FxHashMap as HashMap;

use portcullis_common::Deadlines;

use crate::model::Cidr;

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
pub(super) struct EntryMap {
    pub(super) v4: HashMap<(u32, u8), Deadlines>,
    pub(super) v6: HashMap<(u128, u8), Deadlines>,
}

impl EntryMap {
    pub(super) fn get(&self, c: &Cidr) -> Option<&Deadlines> {
        match *c {
            Cidr::V4 { addr, len } => self.v4.get(&(addr, len)),
            Cidr::V6 { addr, len } => self.v6.get(&(addr, len)),
        }
    }

    pub(super) fn contains_key(&self, c: &Cidr) -> bool {
        self.get(c).is_some()
    }

    pub(super) fn insert(&mut self, c: Cidr, d: Deadlines) {
        match c {
            Cidr::V4 { addr, len } => self.v4.insert((addr, len), d),
            Cidr::V6 { addr, len } => self.v6.insert((addr, len), d),
        };
    }

    pub(super) fn remove(&mut self, c: &Cidr) {
        match *c {
            Cidr::V4 { addr, len } => self.v4.remove(&(addr, len)),
            Cidr::V6 { addr, len } => self.v6.remove(&(addr, len)),
        };
    }

    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (Cidr, Deadlines)> + '_ {
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

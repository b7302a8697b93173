//! What the kernel maps really hold, read back: every slot, the guard words and the
//! short-prefix flag.
//!
//! The agent's twin ([`IpTable`]) says what it wrote; this says what the kernel has. Tests
//! compare the two after every step, and reconcile uses the held slots to remove what no entry
//! needs.

use std::collections::BTreeMap;

use aya::maps::{HashMap, LpmTrie, Map, MapData};
use portcullis_common::{self as common, Deadlines, V6Addr, map_name};

use super::filter::{Filter, KernelError, map_err};
use super::sys;
use super::table::{IpTable, Slot};

/// The slot maps, guard bitmaps and short-prefix flag, as one comparable value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    /// Every non-empty slot.
    pub slots: BTreeMap<Slot, Deadlines>,
    /// Non-zero IPv4 guard words (index, value).
    pub v4_guard: Vec<(u32, u64)>,
    /// Non-zero IPv6 guard words (index, value).
    pub v6_guard: Vec<(u32, u64)>,
    /// `Config::v6_unguarded`.
    pub v6_unguarded: bool,
}

impl KernelState {
    /// What the kernel should hold for `table`.
    pub fn of_table(table: &IpTable) -> Self {
        Self {
            slots: table.slots().collect(),
            v4_guard: table.v4_guard_words(),
            v6_guard: table.v6_guard_words(),
            v6_unguarded: table.v6_unguarded(),
        }
    }

    /// Number of slots in the kernel's hash and trie maps plus non-empty /16 slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

fn nonzero(words: Vec<u64>) -> Vec<(u32, u64)> {
    words
        .into_iter()
        .enumerate()
        .filter(|(_, w)| *w != 0)
        .map(|(i, w)| (i as u32, w))
        .collect()
}

impl Filter {
    /// Reads every slot map, both guard bitmaps and the config back from the kernel.
    pub fn kernel_state(&self) -> Result<KernelState, KernelError> {
        let mut state = KernelState {
            slots: self.held_slots()?,
            ..KernelState::default()
        };
        let read = |name: &'static str, len: u32| {
            sys::lookup_array::<u64>(self.fd(name), len).map_err(|source| KernelError::Map {
                op: "reading",
                map: name,
                source,
            })
        };
        state.v4_guard = nonzero(read(map_name::V4_GUARD, common::V4_GUARD_WORDS)?);
        state.v6_guard = nonzero(read(map_name::V6_GUARD, common::V6_GUARD_WORDS)?);
        state.v6_unguarded = self.config()?.v6_unguarded != 0;
        Ok(state)
    }

    /// Every non-empty slot the kernel holds, with its value.
    pub(super) fn held_slots(&self) -> Result<BTreeMap<Slot, Deadlines>, KernelError> {
        let mut slots = BTreeMap::new();
        let wide =
            sys::lookup_array::<Deadlines>(self.fd(map_name::V4_WIDE), common::V4_WIDE_SLOTS)
                .map_err(|source| KernelError::Map {
                    op: "reading",
                    map: map_name::V4_WIDE,
                    source,
                })?;
        for (i, d) in wide.into_iter().enumerate() {
            if !d.is_empty() {
                slots.insert(Slot::V4Wide(i as u32), d);
            }
        }
        fn hash<K: aya::Pod>(
            map: &Map,
            name: &'static str,
            mut put: impl FnMut(K, Deadlines),
        ) -> Result<(), KernelError> {
            let h: HashMap<&MapData, K, Deadlines> =
                HashMap::try_from(map).map_err(map_err("opening", name))?;
            for item in h.iter() {
                let (k, v) = item.map_err(map_err("reading", name))?;
                put(k, v);
            }
            Ok(())
        }
        hash::<u32>(self.map(map_name::V4_HOSTS), map_name::V4_HOSTS, |k, v| {
            slots.insert(Slot::V4Host(k), v);
        })?;
        hash::<u32>(self.map(map_name::V4_NETS), map_name::V4_NETS, |k, v| {
            slots.insert(Slot::V4Net(k), v);
        })?;
        hash::<V6Addr>(self.map(map_name::V6_HOSTS), map_name::V6_HOSTS, |k, v| {
            slots.insert(Slot::V6Host(u128::from_be_bytes(k.bytes)), v);
        })?;
        let trie: LpmTrie<&MapData, [u8; 16], Deadlines> =
            LpmTrie::try_from(self.map(map_name::V6_PREFIXES))
                .map_err(map_err("opening", map_name::V6_PREFIXES))?;
        for item in trie.iter() {
            let (k, v) = item.map_err(map_err("reading", map_name::V6_PREFIXES))?;
            slots.insert(
                Slot::V6Prefix(u128::from_be_bytes(k.data()), k.prefix_len() as u8),
                v,
            );
        }
        Ok(slots)
    }
}

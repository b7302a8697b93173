//! What the kernel maps really hold, read back: every slot, the guard words and the
//! short-prefix flag.
//!
//! The agent's twin ([`IpTable`]) says what it wrote; this says what the kernel has. Tests
//! compare the two after every step (also from another process, through the pins), and
//! reconcile uses the held slots to remove what no entry needs.

use std::collections::BTreeMap;
use std::os::fd::AsFd as _;
use std::path::Path;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData};
use portcullis_common::{self as common, Config, Deadlines, V6Addr, map_name};

use super::filter::{Filter, KernelError, data, map_err};
use super::sys;
use super::table::{IpTable, Slot, SlotView, lookup};

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

/// The maps a snapshot reads, by name.
type Maps = BTreeMap<&'static str, Map>;

/// The maps [`KernelState`] needs.
const READ: [&str; 8] = [
    map_name::V4_GUARD,
    map_name::V4_HOSTS,
    map_name::V4_NETS,
    map_name::V4_WIDE,
    map_name::V6_GUARD,
    map_name::V6_HOSTS,
    map_name::V6_PREFIXES,
    map_name::CONFIG,
];

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

    /// Reads the maps pinned in `pin_dir` (a running agent's, from another process). Not a
    /// consistent snapshot while the agent writes (the arrays are read in batches): compare
    /// quiescent states, and probe in-flight ones with `BPF_PROG_TEST_RUN`.
    pub fn read_pinned(pin_dir: &Path) -> Result<Self, KernelError> {
        let mut maps = Maps::new();
        for name in READ {
            let path = pin_dir.join(name);
            let map = MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(map_err("opening pinned", name))?;
            maps.insert(name, map);
        }
        read(&maps)
    }

    /// Number of non-empty slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The deadlines the XDP program finds for `ip` in the maps as read back.
    pub fn lookup(&self, ip: std::net::IpAddr) -> Deadlines {
        lookup(self, ip)
    }
}

fn word(words: &[(u32, u64)], index: u32) -> u64 {
    words
        .binary_search_by_key(&index, |(i, _)| *i)
        .map_or(0, |at| words[at].1)
}

impl SlotView for KernelState {
    fn slot(&self, slot: Slot) -> Deadlines {
        self.slots.get(&slot).copied().unwrap_or_default()
    }
    fn v4_guard_word(&self, index: u32) -> u64 {
        word(&self.v4_guard, index)
    }
    fn v6_guard_word(&self, index: u32) -> u64 {
        word(&self.v6_guard, index)
    }
    fn v6_unguarded(&self) -> bool {
        self.v6_unguarded
    }
    fn v6_prefix(&self, addr: u128, len: u8) -> Option<Deadlines> {
        self.slots.get(&Slot::V6Prefix(addr, len)).copied()
    }
}

impl Filter {
    /// Reads every slot map, both guard bitmaps and the config back from the kernel.
    pub fn kernel_state(&self) -> Result<KernelState, KernelError> {
        read(self.maps())
    }

    /// Every non-empty slot the kernel holds, with its value.
    pub(super) fn held_slots(&self) -> Result<BTreeMap<Slot, Deadlines>, KernelError> {
        held_slots(self.maps())
    }
}

fn get<'a>(maps: &'a Maps, name: &'static str) -> Result<&'a Map, KernelError> {
    maps.get(name).ok_or(KernelError::Missing(name))
}

fn nonzero(words: Vec<u64>) -> Vec<(u32, u64)> {
    words
        .into_iter()
        .enumerate()
        .filter(|(_, w)| *w != 0)
        .map(|(i, w)| (i as u32, w))
        .collect()
}

fn array<V: Copy + Default>(
    maps: &Maps,
    name: &'static str,
    len: u32,
) -> Result<Vec<V>, KernelError> {
    let fd = data(get(maps, name)?).fd().as_fd();
    sys::lookup_array::<V>(fd, len).map_err(|source| KernelError::Map {
        op: "reading",
        map: name,
        source,
    })
}

fn read(maps: &Maps) -> Result<KernelState, KernelError> {
    let config: Array<&MapData, Config> = Array::try_from(get(maps, map_name::CONFIG)?)
        .map_err(map_err("opening", map_name::CONFIG))?;
    let config = config
        .get(&0, 0)
        .map_err(map_err("reading", map_name::CONFIG))?;
    // In the XDP program's order: config and guard bits first, then the slots they point
    // at. The agent writes slots, then guards, then deletions, so a reader in this order
    // sees a state some packet could have seen while a write is under way.
    let v4_guard = nonzero(array(maps, map_name::V4_GUARD, common::V4_GUARD_WORDS)?);
    let v6_guard = nonzero(array(maps, map_name::V6_GUARD, common::V6_GUARD_WORDS)?);
    Ok(KernelState {
        slots: held_slots(maps)?,
        v4_guard,
        v6_guard,
        v6_unguarded: config.v6_unguarded != 0,
    })
}

fn hash<K: aya::Pod>(
    maps: &Maps,
    name: &'static str,
    mut put: impl FnMut(K, Deadlines),
) -> Result<(), KernelError> {
    let h: HashMap<&MapData, K, Deadlines> =
        HashMap::try_from(get(maps, name)?).map_err(map_err("opening", name))?;
    for item in h.iter() {
        let (k, v) = item.map_err(map_err("reading", name))?;
        put(k, v);
    }
    Ok(())
}

fn held_slots(maps: &Maps) -> Result<BTreeMap<Slot, Deadlines>, KernelError> {
    let mut slots = BTreeMap::new();
    let wide = array::<Deadlines>(maps, map_name::V4_WIDE, common::V4_WIDE_SLOTS)?;
    for (i, d) in wide.into_iter().enumerate() {
        if !d.is_empty() {
            slots.insert(Slot::V4Wide(i as u32), d);
        }
    }
    hash::<u32>(maps, map_name::V4_HOSTS, |k, v| {
        slots.insert(Slot::V4Host(k), v);
    })?;
    hash::<u32>(maps, map_name::V4_NETS, |k, v| {
        slots.insert(Slot::V4Net(k), v);
    })?;
    hash::<V6Addr>(maps, map_name::V6_HOSTS, |k, v| {
        slots.insert(Slot::V6Host(u128::from_be_bytes(k.bytes)), v);
    })?;
    let trie: LpmTrie<&MapData, [u8; 16], Deadlines> =
        LpmTrie::try_from(get(maps, map_name::V6_PREFIXES)?)
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

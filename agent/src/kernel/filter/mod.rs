//! The loaded XDP object: loading and pinning its maps, its configuration, and raw map access
//! for tests. Attaching ([`attach`]), writing the allow/deny slots computed by [`IpTable`]
//! ([`write`]) and reading counters ([`stats`]) live in the submodules.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aya::maps::{Array, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use portcullis_common::{self as common, Config, Counter, Deadlines, DropEvent, V6Addr, map_name};

use super::sys;
use super::table::{Capacity, IpTable, MapFull, Plan, Slot};
use crate::model::Cidr;
use crate::model::List;

mod attach;
mod stats;
mod upgrade;
mod write;

pub use attach::{
    AttachMode, Attached, bpffs_mounted, detach, ensure_bpffs, ifindex, link_attached, link_pin,
};
pub use write::ReconcileReport;

/// Which compiled object to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// The production program `portcullis`.
    Production,
    /// The benchmark programs (same maps plus reference maps, and the wire benchmark's
    /// generator, which `attach_bench` puts on a test veth). Only in builds with the
    /// `testkit` feature: the production binary does not carry them.
    #[cfg(feature = "testkit")]
    Bench,
}

/// The production object, built by `build.rs` from `filter-ebpf`.
static PRODUCTION: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));
/// The benchmark object.
#[cfg(feature = "testkit")]
static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-bench"));

/// The XDP program's name in the production object.
pub const PROGRAM: &str = "portcullis";

/// Options for [`Filter::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin maps and links here (e.g. `/sys/fs/bpf/portcullis`); existing pins are reused.
    /// `None` keeps everything private to this process (tests, benchmarks).
    pub pin_dir: Option<PathBuf>,
    /// Map capacities.
    pub capacity: Capacity,
    /// Which object.
    pub object: Object,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: None,
            capacity: Capacity::default(),
            object: Object::Production,
        }
    }
}

/// Errors of the kernel layer. Each names the operation and what it worked on.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Loading the object (verifier, map creation, pins) failed.
    #[error(
        "loading the XDP object failed (are you root, with bpffs mounted at /sys/fs/bpf?): {0}"
    )]
    Load(#[from] Box<aya::EbpfError>),
    /// The pin directory could not be created.
    #[error("creating pin directory {path}: {source}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A pinned map does not have the layout this build expects (an older or newer version).
    #[error("pinned map {path} has {found}, this build expects {expected}; detach and remove {dir} to reload from scratch", dir = .path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    PinnedMismatch {
        /// The pin.
        path: PathBuf,
        /// What it has.
        found: String,
        /// What we need.
        expected: String,
    },
    /// A map or program the object should contain is missing.
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    /// A program operation failed.
    #[error("{op} on {target}: {source}")]
    Program {
        /// What we tried.
        op: &'static str,
        /// Interface or program.
        target: String,
        /// Why.
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("{op} on map {map}: {source}")]
    Map {
        /// What we tried.
        op: &'static str,
        /// Which map.
        map: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The change does not fit the maps; nothing was changed.
    #[error(transparent)]
    Full(#[from] MapFull),
    /// Pinning or unpinning a link failed.
    #[error("{op} {path}: {source}")]
    Link {
        /// What we tried.
        op: &'static str,
        /// The pin.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

pub(super) fn map_err(
    op: &'static str,
    map: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> KernelError {
    move |e| KernelError::Map {
        op,
        map,
        source: std::io::Error::other(e.to_string()),
    }
}

/// The user-space twin of the kernel's IP maps, shared between the filter that writes it and
/// the L7 checker that reads it.
pub type SharedTable = Arc<RwLock<IpTable>>;

/// The loaded XDP object, its maps, and the user-space twin of what they hold.
pub struct Filter {
    ebpf: Ebpf,
    maps: BTreeMap<&'static str, Map>,
    /// The twin. Only this filter writes it; the L7 checker reads it to judge client IPs
    /// exactly as the kernel does, instead of keeping a second copy of every IP entry.
    table: SharedTable,
    pin_dir: Option<PathBuf>,
    /// Interface → counter slot, for per-interface counters.
    iface_slots: BTreeMap<String, u32>,
}

/// The error for a program `name` that the object holds but not as an XDP program.
fn not_xdp(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> KernelError + '_ {
    move |e| KernelError::Program {
        op: "typing",
        target: name.into(),
        source: Box::new(e),
    }
}

/// Counters of one slot, indexed by `common::counter`.
pub type Counters = [Counter; common::counter::COUNT as usize];

pub(super) fn data(map: &Map) -> &MapData {
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::DevMap(d) => d,
        _ => unreachable!(
            "Portcullis uses only array, hash, LPM, per-CPU array and LRU hash, ring buffer \
             and (in the benchmarks) device maps"
        ),
    }
}

impl Filter {
    /// Where maps and links are pinned (`None`: private to this process).
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Loads the object, creating its maps or reusing the pinned ones.
    pub fn load(opts: &LoadOptions) -> Result<Self, KernelError> {
        let bytes = match opts.object {
            Object::Production => PRODUCTION,
            #[cfg(feature = "testkit")]
            Object::Bench => BENCH,
        };
        let mut loader = EbpfLoader::new();
        let cap = opts.capacity;
        loader
            .map_max_entries(map_name::V4_HOSTS, cap.v4_hosts)
            .map_max_entries(map_name::V4_NETS, cap.v4_nets)
            .map_max_entries(map_name::V6_HOSTS, cap.v6_hosts)
            .map_max_entries(map_name::V6_PREFIXES, cap.v6_prefixes);
        let pins: Vec<(&str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => {
                ensure_bpffs()?;
                std::fs::create_dir_all(dir).map_err(|source| KernelError::PinDir {
                    path: dir.clone(),
                    source,
                })?;
                map_name::ALL.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(bytes)
            .map_err(|e| KernelError::Load(Box::new(e)))?;
        let mut maps = BTreeMap::new();
        for name in map_name::ALL {
            let map = ebpf.take_map(name).ok_or(KernelError::Missing(name))?;
            maps.insert(name, map);
        }
        let filter = Self {
            ebpf,
            maps,
            table: Arc::new(RwLock::new(IpTable::new(cap))),
            pin_dir: opts.pin_dir.clone(),
            iface_slots: BTreeMap::new(),
        };
        if let Some(dir) = &opts.pin_dir {
            filter.check_pinned(dir, &cap)?;
        }
        // A fresh CONFIG slot is all zero: enforce mode, every drop sampled. Give it the
        // defaults unless an earlier agent already configured it.
        if filter.config()?.sample_mask == 0 && filter.config()?.mode == 0 {
            let cfg = Config {
                sample_mask: 63,
                ..filter.config()?
            };
            filter.set_config(cfg)?;
        }
        Ok(filter)
    }

    /// Refuses pinned maps whose sizes differ from this build's (aya reuses a pin blindly).
    fn check_pinned(&self, dir: &Path, cap: &Capacity) -> Result<(), KernelError> {
        for (name, map) in &self.maps {
            let info = data(map).info().map_err(map_err("reading info of", name))?;
            let expected = match *name {
                map_name::V4_GUARD => Some((8, common::V4_GUARD_WORDS)),
                map_name::V6_GUARD => Some((8, common::V6_GUARD_WORDS)),
                map_name::V4_WIDE => Some((16, common::V4_WIDE_SLOTS)),
                map_name::V4_HOSTS => Some((16, cap.v4_hosts)),
                map_name::V4_NETS => Some((16, cap.v4_nets)),
                map_name::V6_HOSTS => Some((16, cap.v6_hosts)),
                map_name::V6_PREFIXES => Some((16, cap.v6_prefixes)),
                _ => None,
            };
            if let Some((value, entries)) = expected
                && (info.value_size() != value || info.max_entries() != entries)
            {
                return Err(KernelError::PinnedMismatch {
                    path: dir.join(name),
                    found: format!("value {} bytes x {}", info.value_size(), info.max_entries()),
                    expected: format!("value {value} bytes x {entries}"),
                });
            }
        }
        Ok(())
    }

    /// Every map of the production object, by name.
    pub(super) fn maps(&self) -> &BTreeMap<&'static str, Map> {
        &self.maps
    }

    pub(super) fn map(&self, name: &'static str) -> &Map {
        // Every name in map_name::ALL was taken in load().
        &self.maps[name]
    }

    pub(super) fn fd(&self, name: &'static str) -> BorrowedFd<'_> {
        data(self.map(name)).fd().as_fd()
    }

    /// The program's fd, for `BPF_PROG_TEST_RUN`.
    pub fn program_fd(&self, name: &str) -> Result<BorrowedFd<'_>, KernelError> {
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .ok_or(KernelError::Missing("program"))?
            .try_into()
            .map_err(not_xdp(name))?;
        let fd = prog.fd().map_err(|e| KernelError::Program {
            op: "fd of",
            target: name.into(),
            source: Box::new(e),
        })?;
        Ok(fd.as_fd())
    }

    /// Loads (verifies) the named program into the kernel, once.
    /// The production program, loaded into the kernel.
    pub(super) fn production_program(&mut self) -> Result<&mut Xdp, KernelError> {
        self.load_program(PROGRAM)?;
        self.ebpf
            .program_mut(PROGRAM)
            .ok_or(KernelError::Missing("program"))?
            .try_into()
            .map_err(not_xdp(PROGRAM))
    }

    pub fn load_program(&mut self, name: &str) -> Result<(), KernelError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing("program"))?
            .try_into()
            .map_err(not_xdp(name))?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| KernelError::Program {
                op: "verifying",
                target: name.into(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Runs the named program once on `frame` and returns its XDP action.
    pub fn test_run(&mut self, name: &str, frame: &[u8]) -> Result<u32, KernelError> {
        self.load_program(name)?;
        let fd = self.program_fd(name)?;
        sys::test_run(fd, frame, 1)
            .map(|r| r.retval)
            .map_err(|source| KernelError::Map {
                op: "BPF_PROG_TEST_RUN",
                map: "program",
                source,
            })
    }

    /// Current runtime configuration.
    pub fn config(&self) -> Result<Config, KernelError> {
        let arr: Array<&MapData, Config> = Array::try_from(self.map(map_name::CONFIG))
            .map_err(map_err("opening", map_name::CONFIG))?;
        arr.get(&0, 0).map_err(map_err("reading", map_name::CONFIG))
    }

    /// Replaces the runtime configuration (mode, sampling).
    pub fn set_config(&self, cfg: Config) -> Result<(), KernelError> {
        sys::update_batch(self.fd(map_name::CONFIG), &[0u32], &[cfg]).map_err(|source| {
            KernelError::Map {
                op: "updating",
                map: map_name::CONFIG,
                source,
            }
        })
    }

    /// Switches between enforce and monitor mode.
    pub fn set_mode(&self, mode: u32) -> Result<(), KernelError> {
        let cfg = Config {
            mode,
            ..self.config()?
        };
        self.set_config(cfg)
    }

    fn table_capacity(&self) -> Capacity {
        self.twin().capacity()
    }

    /// The twin, for reading (a panic while it was written leaves it to `reconcile`).
    fn twin(&self) -> RwLockReadGuard<'_, IpTable> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The twin, for changing: held only while a plan is computed or undone, never across a
    /// kernel write, so the checker's readers wait for memory work only.
    fn twin_mut(&self) -> RwLockWriteGuard<'_, IpTable> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The twin as the L7 checker shares it.
    pub fn shared_table(&self) -> SharedTable {
        self.table.clone()
    }

    /// Writes raw values into a map of the loaded object (benchmark probe arrays, reference
    /// maps). `K`/`V` must match the map's layout.
    pub fn raw_update<K: Copy, V: Copy>(
        &mut self,
        name: &str,
        keys: &[K],
        values: &[V],
    ) -> Result<(), KernelError> {
        let map = self.ebpf.map(name).ok_or(KernelError::Missing("map"))?;
        sys::update_batch(data(map).fd().as_fd(), keys, values).map_err(|source| KernelError::Map {
            op: "updating",
            map: "raw",
            source,
        })
    }

    /// Writes one element into a map of the loaded object (benchmark maps without batch
    /// updates, such as a device map).
    #[cfg(feature = "testkit")]
    pub fn raw_set<K: Copy, V: Copy>(
        &mut self,
        name: &str,
        key: &K,
        value: &V,
    ) -> Result<(), KernelError> {
        let map = self.ebpf.map(name).ok_or(KernelError::Missing("map"))?;
        sys::update_elem(data(map).fd().as_fd(), key, value).map_err(|source| KernelError::Map {
            op: "updating",
            map: "raw",
            source,
        })
    }

    /// One slot of a per-CPU `u32` array of the loaded object, CPU by CPU (benchmark state).
    #[cfg(feature = "testkit")]
    pub fn raw_per_cpu(&self, name: &str, index: u32) -> Result<Vec<u32>, KernelError> {
        let map = self.ebpf.map(name).ok_or(KernelError::Missing("map"))?;
        let arr: PerCpuArray<&MapData, u32> =
            PerCpuArray::try_from(map).map_err(map_err("opening", "per-CPU array"))?;
        let values = arr
            .get(&index, 0)
            .map_err(map_err("reading", "per-CPU array"))?;
        Ok(values.iter().copied().collect())
    }

    /// Sets one slot of a per-CPU `u32` array of the loaded object to zero on every CPU.
    #[cfg(feature = "testkit")]
    pub fn raw_per_cpu_zero(&mut self, name: &str, index: u32) -> Result<(), KernelError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| KernelError::Map {
            op: "counting CPUs for",
            map: "per-CPU array",
            source: e,
        })?;
        let map = self.ebpf.map_mut(name).ok_or(KernelError::Missing("map"))?;
        let mut arr: PerCpuArray<&mut MapData, u32> =
            PerCpuArray::try_from(map).map_err(map_err("opening", "per-CPU array"))?;
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![0u32; cpus]).map_err(|e| KernelError::Map {
                op: "building values for",
                map: "per-CPU array",
                source: e,
            })?;
        arr.set(index, zeros, 0)
            .map_err(map_err("updating", "per-CPU array"))
    }

    /// Attaches the named benchmark program to `iface` (in the calling thread's network
    /// namespace) in native mode, unpinned: it stays attached while this filter lives.
    #[cfg(feature = "testkit")]
    pub fn attach_bench(&mut self, name: &str, iface: &str) -> Result<(), KernelError> {
        self.load_program(name)?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing("program"))?
            .try_into()
            .map_err(not_xdp(name))?;
        prog.attach(iface, XdpMode::Driver)
            .map(drop)
            .map_err(|e| KernelError::Program {
                op: "attaching (native)",
                target: iface.into(),
                source: Box::new(e),
            })
    }

    /// Inserts into an LPM trie of the loaded object (benchmark reference maps).
    pub fn raw_lpm_insert<K: aya::Pod>(
        &mut self,
        name: &str,
        items: &[(u32, K, Deadlines)],
    ) -> Result<(), KernelError> {
        let map = self.ebpf.map_mut(name).ok_or(KernelError::Missing("map"))?;
        let mut trie: LpmTrie<&mut MapData, K, Deadlines> =
            LpmTrie::try_from(map).map_err(map_err("opening", "lpm"))?;
        for (len, key, value) in items {
            trie.insert(&Key::new(*len, *key), *value, 0)
                .map_err(map_err("updating", "lpm"))?;
        }
        Ok(())
    }
}

//! Loads the XDP object, pins its maps and links, attaches it to interfaces, and writes the
//! allow/deny slots computed by [`IpTable`] into the kernel maps.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use portcullis_common::{self as common, Config, Counter, Deadlines, DropEvent, V6Addr, map_name};

use super::sys;
use super::table::{Capacity, IpTable, List, MapFull, Plan, Slot};
use crate::cidr::Cidr;

/// Which compiled object to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// The production program `portcullis`.
    Production,
    /// The benchmark programs (same maps plus reference maps); never attached.
    Bench,
}

/// The production object, built by `build.rs` from `filter-ebpf`.
static PRODUCTION: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));
/// The benchmark object.
static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-bench"));

/// The XDP program's name in the production object.
pub const PROGRAM: &str = "portcullis";

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver; falls back to generic with a warning when the driver refuses.
    Native,
    /// In the generic network stack (works everywhere, slower).
    Generic,
}

/// What [`Filter::attach`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The interface.
    pub iface: String,
    /// The mode the kernel accepted.
    pub mode: AttachMode,
    /// Set when native was asked for and refused: the reason, for a warning.
    pub fell_back: Option<String>,
    /// The link already existed (pinned by an earlier agent) and now runs this program.
    pub reused_link: bool,
}

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

/// The loaded XDP object, its maps, and the user-space twin of what they hold.
pub struct Filter {
    ebpf: Ebpf,
    maps: BTreeMap<&'static str, Map>,
    table: IpTable,
    pin_dir: Option<PathBuf>,
    /// Interface → counter slot, for per-interface counters.
    iface_slots: BTreeMap<String, u32>,
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
        | Map::PerCpuHashMap(d) => d,
        _ => unreachable!(
            "Portcullis uses only array, hash, LPM, per-CPU array and ring buffer maps"
        ),
    }
}

/// Path of the pinned link for `iface`.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

impl Filter {
    /// Loads the object, creating its maps or reusing the pinned ones.
    pub fn load(opts: &LoadOptions) -> Result<Self, KernelError> {
        let bytes = match opts.object {
            Object::Production => PRODUCTION,
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
            table: IpTable::new(cap),
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
            .map_err(|e| KernelError::Program {
                op: "typing",
                target: name.into(),
                source: Box::new(e),
            })?;
        let fd = prog.fd().map_err(|e| KernelError::Program {
            op: "fd of",
            target: name.into(),
            source: Box::new(e),
        })?;
        Ok(fd.as_fd())
    }

    /// Loads (verifies) the named program into the kernel, once.
    pub fn load_program(&mut self, name: &str) -> Result<(), KernelError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing("program"))?
            .try_into()
            .map_err(|e| KernelError::Program {
                op: "typing",
                target: name.into(),
                source: Box::new(e),
            })?;
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

    /// Attaches the production program to `iface` in the current network namespace and pins
    /// the link, so enforcement outlives this process. If an earlier agent's link is pinned,
    /// it is switched to this program atomically (no gap).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached, KernelError> {
        self.load_program(PROGRAM)?;
        self.assign_slot(iface)?;
        let pin = self.pin_dir.as_deref().map(|d| link_pin(d, iface));
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(KernelError::Missing("program"))?
            .try_into()
            .map_err(|e| KernelError::Program {
                op: "typing",
                target: PROGRAM.into(),
                source: Box::new(e),
            })?;
        let perr = |op: &'static str| {
            let iface = iface.to_owned();
            move |e| KernelError::Program {
                op,
                target: iface,
                source: Box::new(e),
            }
        };
        if let Some(pin) = &pin
            && pin.exists()
        {
            let pinned = PinnedLink::from_pin(pin).map_err(|e| KernelError::Link {
                op: "opening pinned link",
                path: pin.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let fd_link: FdLink = pinned.into();
            let link =
                aya::programs::xdp::XdpLink::try_from(fd_link).map_err(|e| KernelError::Link {
                    op: "reusing pinned link",
                    path: pin.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            let id = prog
                .attach_to_link(link)
                .map_err(perr("replacing program of link"))?;
            // Keep the kernel link alive after we exit: drop our handle without detaching.
            let link = prog.take_link(id).map_err(perr("taking link"))?;
            std::mem::forget(FdLink::try_from(link).ok());
            return Ok(Attached {
                iface: iface.into(),
                mode: AttachMode::Native,
                fell_back: None,
                reused_link: true,
            });
        }
        let (id, used, fell_back) = match mode {
            AttachMode::Generic => (
                prog.attach(iface, XdpMode::Skb)
                    .map_err(perr("attaching (generic)"))?,
                AttachMode::Generic,
                None,
            ),
            AttachMode::Native => match prog.attach(iface, XdpMode::Driver) {
                Ok(id) => (id, AttachMode::Native, None),
                Err(native) => {
                    let id = prog
                        .attach(iface, XdpMode::Skb)
                        .map_err(perr("attaching (generic fallback)"))?;
                    (id, AttachMode::Generic, Some(native.to_string()))
                }
            },
        };
        if let Some(pin) = pin {
            let link = prog.take_link(id).map_err(perr("taking link"))?;
            let fd_link = FdLink::try_from(link).map_err(|e| KernelError::Link {
                op: "converting to a pinnable link",
                path: pin.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            fd_link.pin(&pin).map_err(|e| KernelError::Link {
                op: "pinning link",
                path: pin.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(Attached {
            iface: iface.into(),
            mode: used,
            fell_back,
            reused_link: false,
        })
    }

    /// Puts `cidr` on `list` until `until` (`CLOCK_BOOTTIME` ns; `common::NEVER` for no
    /// expiry). Enforced when this returns. On error nothing changed.
    pub fn insert(&mut self, list: List, cidr: Cidr, until: u64) -> Result<(), KernelError> {
        self.apply_many([(list, cidr, Some(until))])
    }

    /// Takes `cidr` off `list`.
    pub fn remove(&mut self, list: List, cidr: Cidr) -> Result<(), KernelError> {
        self.apply_many([(list, cidr, None)])
    }

    /// Applies many insertions (`Some(deadline)`) and removals (`None`) in one batched write.
    /// All or nothing: if the maps would overflow or a write fails, the kernel and the twin are
    /// left as they were.
    pub fn apply_many(
        &mut self,
        items: impl IntoIterator<Item = (List, Cidr, Option<u64>)>,
    ) -> Result<(), KernelError> {
        let plan = self.table.set_many(items)?;
        if let Err(e) = self.write(&plan) {
            self.table.undo(&plan);
            // Put back what the failed write may have changed.
            let restore = Plan {
                from_empty: false,
                entries: Vec::new(),
                slots: plan
                    .slots
                    .iter()
                    .map(|c| super::table::SlotChange {
                        slot: c.slot,
                        old: c.new,
                        new: c.old,
                    })
                    .collect(),
                v4_guard: plan
                    .v4_guard
                    .iter()
                    .map(|(w, _)| (*w, self.table.v4_guard_word(*w)))
                    .collect(),
                v6_guard: plan
                    .v6_guard
                    .iter()
                    .map(|(w, _)| (*w, self.table.v6_guard_word(*w)))
                    .collect(),
                v6_unguarded: plan.v6_unguarded.map(|_| self.table.v6_unguarded()),
            };
            let _ = self.write(&restore);
            return Err(e);
        }
        Ok(())
    }

    /// Entries on either list with their deadlines.
    pub fn entries(&self) -> impl Iterator<Item = (Cidr, Deadlines)> + '_ {
        self.table.entries()
    }

    /// The user-space twin (for tests and status).
    pub fn table(&self) -> &IpTable {
        &self.table
    }

    /// Writes a plan: upserts first, then guard words and config, then deletions, so that at
    /// no point does a guard bit hide a slot that still matches, and no entry that stays on a
    /// list stops matching.
    fn write(&self, plan: &Plan) -> Result<(), KernelError> {
        let mut v4h = (Vec::new(), Vec::new(), Vec::new());
        let mut v4n = (Vec::new(), Vec::new(), Vec::new());
        let mut v4w = (Vec::new(), Vec::new());
        let mut v6h = (Vec::new(), Vec::new(), Vec::new());
        let mut v6p: Vec<(Key<[u8; 16]>, Deadlines)> = Vec::new();
        for c in &plan.slots {
            let del = c.new.is_empty();
            match c.slot {
                Slot::V4Host(a) => {
                    if del {
                        v4h.2.push(a)
                    } else {
                        v4h.0.push(a);
                        v4h.1.push(c.new)
                    }
                }
                Slot::V4Net(n) => {
                    if del {
                        v4n.2.push(n)
                    } else {
                        v4n.0.push(n);
                        v4n.1.push(c.new)
                    }
                }
                Slot::V4Wide(i) => {
                    v4w.0.push(i);
                    v4w.1.push(c.new)
                }
                Slot::V6Host(a) => {
                    let k = V6Addr {
                        bytes: a.to_be_bytes(),
                    };
                    if del {
                        v6h.2.push(k)
                    } else {
                        v6h.0.push(k);
                        v6h.1.push(c.new)
                    }
                }
                Slot::V6Prefix(a, l) => v6p.push((Key::new(u32::from(l), a.to_be_bytes()), c.new)),
            }
        }
        let upd = |name: &'static str| {
            move |source| KernelError::Map {
                op: "updating",
                map: name,
                source,
            }
        };
        let del = |name: &'static str| {
            move |source| KernelError::Map {
                op: "deleting from",
                map: name,
                source,
            }
        };
        sys::update_batch_parallel(self.fd(map_name::V4_HOSTS), &v4h.0, &v4h.1)
            .map_err(upd(map_name::V4_HOSTS))?;
        sys::update_batch_parallel(self.fd(map_name::V4_NETS), &v4n.0, &v4n.1)
            .map_err(upd(map_name::V4_NETS))?;
        sys::update_batch(self.fd(map_name::V4_WIDE), &v4w.0, &v4w.1)
            .map_err(upd(map_name::V4_WIDE))?;
        sys::update_batch_parallel(self.fd(map_name::V6_HOSTS), &v6h.0, &v6h.1)
            .map_err(upd(map_name::V6_HOSTS))?;
        let trie = self.fd(map_name::V6_PREFIXES);
        for (key, value) in v6p.iter().filter(|(_, v)| !v.is_empty()) {
            sys::update_elem(trie, key, value).map_err(upd(map_name::V6_PREFIXES))?;
        }
        let (w4, v4): (Vec<u32>, Vec<u64>) = plan.v4_guard.iter().copied().unzip();
        sys::update_batch(self.fd(map_name::V4_GUARD), &w4, &v4)
            .map_err(upd(map_name::V4_GUARD))?;
        let (w6, v6): (Vec<u32>, Vec<u64>) = plan.v6_guard.iter().copied().unzip();
        sys::update_batch(self.fd(map_name::V6_GUARD), &w6, &v6)
            .map_err(upd(map_name::V6_GUARD))?;
        if let Some(unguarded) = plan.v6_unguarded {
            let cfg = Config {
                v6_unguarded: u32::from(unguarded),
                ..self.config()?
            };
            self.set_config(cfg)?;
        }
        for (key, _) in v6p.iter().filter(|(_, v)| v.is_empty()) {
            sys::delete_elem(trie, key).map_err(del(map_name::V6_PREFIXES))?;
        }
        sys::delete_batch(self.fd(map_name::V6_HOSTS), &v6h.2).map_err(del(map_name::V6_HOSTS))?;
        sys::delete_batch(self.fd(map_name::V4_NETS), &v4n.2).map_err(del(map_name::V4_NETS))?;
        sys::delete_batch(self.fd(map_name::V4_HOSTS), &v4h.2).map_err(del(map_name::V4_HOSTS))?;
        Ok(())
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

    /// Counters summed over CPUs, indexed by `common::counter`.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let mut out = Counters::default();
        for slot in 0..common::IF_COUNTER_SLOTS {
            for (o, c) in out.iter_mut().zip(self.slot_counters(slot)?) {
                o.packets += c.packets;
                o.bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// Counters per interface this filter attached to (by name), plus `"other"` for packets
    /// on interfaces without a slot.
    pub fn counters_by_iface(&self) -> Result<Vec<(String, Counters)>, KernelError> {
        let mut out = vec![("other".to_owned(), self.slot_counters(0)?)];
        for (iface, slot) in &self.iface_slots {
            out.push((iface.clone(), self.slot_counters(*slot)?));
        }
        Ok(out)
    }

    fn slot_counters(&self, slot: u32) -> Result<Counters, KernelError> {
        let arr: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map(map_name::COUNTERS))
                .map_err(map_err("opening", map_name::COUNTERS))?;
        let mut out = Counters::default();
        for (i, o) in out.iter_mut().enumerate() {
            let index = slot * common::counter::COUNT + i as u32;
            let per_cpu = arr
                .get(&index, 0)
                .map_err(map_err("reading", map_name::COUNTERS))?;
            for c in per_cpu.iter() {
                o.packets += c.packets;
                o.bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// Gives `iface` its own counter slot (kept across restarts through the pinned map).
    fn assign_slot(&mut self, iface: &str) -> Result<(), KernelError> {
        let Ok(name) = std::ffi::CString::new(iface) else {
            return Ok(());
        };
        // SAFETY: valid C string; resolved in the calling thread's network namespace.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Ok(());
        }
        let key = ifindex & (common::IF_SLOT_INDEX - 1);
        let arr: Array<&MapData, u32> = Array::try_from(self.map(map_name::IF_SLOTS))
            .map_err(map_err("opening", map_name::IF_SLOTS))?;
        let mut slot = arr
            .get(&key, 0)
            .map_err(map_err("reading", map_name::IF_SLOTS))?;
        if slot == 0 || slot >= common::IF_COUNTER_SLOTS {
            let used: std::collections::BTreeSet<u32> = arr.iter().flatten().collect();
            match (1..common::IF_COUNTER_SLOTS).find(|s| !used.contains(s)) {
                Some(free) => slot = free,
                None => return Ok(()), // counted under "other"
            }
            sys::update_batch(self.fd(map_name::IF_SLOTS), &[key], &[slot]).map_err(|source| {
                KernelError::Map {
                    op: "updating",
                    map: map_name::IF_SLOTS,
                    source,
                }
            })?;
        }
        self.iface_slots.insert(iface.to_owned(), slot);
        Ok(())
    }

    /// Takes the sampled drop events waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Result<Vec<DropEvent>, KernelError> {
        let map = self
            .maps
            .get_mut(map_name::EVENTS)
            .ok_or(KernelError::Missing("EVENTS"))?;
        let mut ring: RingBuf<&mut MapData> =
            RingBuf::try_from(map).map_err(map_err("opening", map_name::EVENTS))?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<DropEvent>() {
                // SAFETY: the kernel wrote a whole DropEvent (repr(C), plain integers); the
                // ring buffer only guarantees byte alignment, hence read_unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
            }
        }
        Ok(out)
    }

    /// Makes the kernel maps hold exactly `entries` (after a restart reused pinned maps):
    /// writes what is missing or different first, then removes slots no entry needs, so an
    /// entry that stays never stops matching.
    pub fn reconcile(
        &mut self,
        entries: impl IntoIterator<Item = (List, Cidr, u64)>,
    ) -> Result<ReconcileReport, KernelError> {
        let mut fresh = IpTable::new(self.table_capacity());
        let plan = fresh.set_many(entries.into_iter().map(|(l, c, u)| (l, c, Some(u))))?;
        drop(plan);
        let mut changes = Vec::new();
        let mut report = ReconcileReport::default();
        // Desired slots: written unconditionally (cheap, batched, and idempotent).
        for (slot, value) in fresh.slots() {
            changes.push(super::table::SlotChange {
                slot,
                old: Deadlines::EMPTY,
                new: value,
            });
        }
        report.written = changes.len();
        // Every slot the kernel holds; those no entry needs are removed. Wide slots are an
        // array: all of them are "held".
        let mut held: Vec<Slot> = (0..common::V4_WIDE_SLOTS).map(Slot::V4Wide).collect();
        held.extend(self.held_slots()?.into_keys());
        for slot in held {
            if fresh.slot(slot).is_empty() {
                changes.push(super::table::SlotChange {
                    slot,
                    old: Deadlines::EMPTY,
                    new: Deadlines::EMPTY,
                });
            }
        }
        report.removed = changes.len() - report.written;
        // Wide slots are an array: "removing" one writes EMPTY, which is not a real removal.
        report.removed -= changes
            .iter()
            .filter(|c| matches!(c.slot, Slot::V4Wide(_)) && c.new.is_empty())
            .count();
        let plan = Plan {
            from_empty: false,
            entries: Vec::new(),
            slots: changes,
            v4_guard: (0..common::V4_GUARD_WORDS)
                .map(|w| (w, fresh.v4_guard_word(w)))
                .collect(),
            v6_guard: (0..common::V6_GUARD_WORDS)
                .map(|w| (w, fresh.v6_guard_word(w)))
                .collect(),
            v6_unguarded: Some(fresh.v6_unguarded()),
        };
        self.write(&plan)?;
        self.table = fresh;
        Ok(report)
    }

    fn table_capacity(&self) -> Capacity {
        self.table.capacity()
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

/// What [`Filter::reconcile`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Slots written (every slot the entries need).
    pub written: usize,
    /// Stale slots removed.
    pub removed: usize,
}

/// Removes the pinned link of `iface` under `pin_dir`, which detaches the filter from it once
/// no agent holds the link open. Works whether or not an agent runs. Returns whether a link
/// was pinned.
pub fn detach(pin_dir: &Path, iface: &str) -> Result<bool, KernelError> {
    let pin = link_pin(pin_dir, iface);
    match std::fs::remove_file(&pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(KernelError::Link {
            op: "removing pinned link",
            path: pin,
            source,
        }),
    }
}

/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at `/sys/fs/bpf` unless it is already there: pins need it, and minimal
/// systems (and `ip netns exec`) do not always provide it.
pub fn ensure_bpffs() -> Result<(), KernelError> {
    let path = Path::new("/sys/fs/bpf");
    let c_path = c"/sys/fs/bpf";
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let ok = unsafe { libc::statfs(c_path.as_ptr(), &mut st) } == 0;
    if ok && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| KernelError::PinDir {
        path: path.into(),
        source,
    })?;
    // SAFETY: valid C strings; mounting bpffs has no memory-safety preconditions.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(KernelError::PinDir {
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

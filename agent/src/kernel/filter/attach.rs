//! Attaching to interfaces: native or generic XDP, links pinned so enforcement survives the
//! agent, a counter slot per interface, detaching, and the bpffs mount they need.

use super::*;
use crate::kernel::link::PinnedXdpLink;
use crate::kernel::netlink;

/// How to attach to an interface.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver; falls back to generic with a warning when the driver refuses.
    #[default]
    Native,
    /// In the generic network stack (works everywhere, slower).
    Generic,
}

impl AttachMode {
    /// The name the config, the CLI and `status` use.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
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
    /// An earlier agent's link was there but had to be replaced (another mode, another
    /// interface): the interface was filtered before this attach, so it is not "fresh".
    pub replaced: bool,
}

/// Path of the pinned link for `iface`.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

impl Filter {
    /// Attaches the production program to `iface` in the current network namespace and pins
    /// the link, so enforcement outlives this process. If an earlier agent's link is pinned,
    /// it is switched to this program atomically (no gap).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached, KernelError> {
        self.attach_as(iface, mode, false)
    }

    /// [`Filter::attach`], where `switch_mode` says the operator asked for this mode: a link
    /// running in generic mode is then replaced by a native one. Otherwise it is kept, since
    /// generic is also where a native request lands when the driver refuses native, and
    /// replacing it at every restart would leave a moment without the filter each time.
    pub fn attach_as(
        &mut self,
        iface: &str,
        mode: AttachMode,
        switch_mode: bool,
    ) -> Result<Attached, KernelError> {
        self.load_program(PROGRAM)?;
        self.assign_slot(iface)?;
        let pin = self.pin_dir.as_deref().map(|d| link_pin(d, iface));
        let mut replaced = false;
        if let Some(pin) = &pin
            && let Some(kernel_mode) = reusable_link(pin, iface, mode, switch_mode, &mut replaced)?
        {
            self.swap_program(pin)?;
            return Ok(Attached {
                iface: iface.into(),
                mode: kernel_mode,
                fell_back: None,
                reused_link: true,
                replaced: false,
            });
        }
        let prog = self.production_program()?;
        let perr = |op: &'static str| {
            let iface = iface.to_owned();
            move |e| KernelError::Program {
                op,
                target: iface,
                source: Box::new(e),
            }
        };
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
            replaced,
        })
    }

    /// Makes the link pinned at `pin` run this program, atomically (`BPF_LINK_UPDATE`: every
    /// packet sees the old program or the new one). The pin keeps the link; closing our
    /// descriptor does not detach it, and holding it would keep the filter attached after
    /// `portcullis detach`.
    pub fn swap_program(&mut self, pin: &Path) -> Result<(), KernelError> {
        let prog = self.production_program()?;
        let lerr = |op: &'static str, e: String| KernelError::Link {
            op,
            path: pin.to_owned(),
            source: std::io::Error::other(e),
        };
        let pinned =
            PinnedLink::from_pin(pin).map_err(|e| lerr("opening pinned link", e.to_string()))?;
        let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| lerr("reusing pinned link", e.to_string()))?;
        let id = prog
            .attach_to_link(link)
            .map_err(|e| lerr("replacing the program of the link", e.to_string()))?;
        let link = prog
            .take_link(id)
            .map_err(|e| lerr("taking the link", e.to_string()))?;
        drop(FdLink::try_from(link));
        Ok(())
    }

    /// Gives `iface` its own counter slot (kept across restarts through the pinned map).
    pub(super) fn assign_slot(&mut self, iface: &str) -> Result<(), KernelError> {
        let Some(ifindex) = ifindex(iface) else {
            return Ok(());
        };
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
}

/// The mode of the link pinned for `iface`, when it can be reused as it is: attached to this
/// interface (running its program), in the asked-for mode or in generic mode for a native
/// request not `switch_mode`. A pin whose link was detached, or that runs on another
/// interface or in the other mode, is detached and unpinned so a fresh link replaces it (the
/// kernel runs one XDP mode at a time, so a mode change has a moment without the filter);
/// `replaced` then says whether it was enforcing here until now.
fn reusable_link(
    pin: &Path,
    iface: &str,
    mode: AttachMode,
    switch_mode: bool,
    replaced: &mut bool,
) -> Result<Option<AttachMode>, KernelError> {
    let lerr = |op: &'static str| {
        move |source| KernelError::Link {
            op,
            path: pin.to_owned(),
            source,
        }
    };
    let Some(link) = PinnedXdpLink::open(pin).map_err(lerr("opening pinned link"))? else {
        return Ok(None);
    };
    let info = link.info().map_err(lerr("reading pinned link"))?;
    let here = ifindex(iface);
    let kernel_mode = match info.ifindex {
        Some(i) if Some(i) == here => {
            let seen = netlink::xdp_attachment(i)
                .map_err(lerr("asking the kernel for the interface's XDP mode"))?;
            // The interface must run this link's program, not merely share its index.
            seen.mode.filter(|_| seen.prog_id == info.prog_id)
        }
        _ => None,
    };
    let keep_generic = mode == AttachMode::Native && !switch_mode;
    if kernel_mode == Some(mode) || (keep_generic && kernel_mode == Some(AttachMode::Generic)) {
        if kernel_mode != Some(mode) {
            tracing::info!(
                iface,
                "the pinned link runs in generic mode (native was refused before?); keeping it: `portcullis attach --iface {iface} --xdp-mode native` switches"
            );
        }
        return Ok(kernel_mode);
    }
    *replaced = kernel_mode.is_some();
    match kernel_mode {
        Some(old) => tracing::warn!(
            iface,
            ?old,
            new = ?mode,
            "changing the XDP mode: the kernel runs one mode at a time, so the filter is off for the moment of the switch"
        ),
        None => tracing::info!(
            iface,
            "pinned link no longer attached here; attaching afresh"
        ),
    }
    if info.ifindex.is_some() {
        link.detach().map_err(lerr("detaching pinned link"))?;
    }
    remove_pin(pin)?;
    Ok(None)
}

/// The interface's index in the calling thread's namespace.
pub fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: valid C string; resolved in the calling thread's network namespace.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

fn remove_pin(pin: &Path) -> Result<bool, KernelError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(KernelError::Link {
            op: "removing pinned link",
            path: pin.to_owned(),
            source,
        }),
    }
}

/// Takes the filter off `iface`: detaches the link pinned under `pin_dir` in the kernel, for
/// every process that holds it (a running agent included), then removes the pin. Works
/// whether or not an agent runs. Returns whether a link was pinned.
pub fn detach(pin_dir: &Path, iface: &str) -> Result<bool, KernelError> {
    let pin = link_pin(pin_dir, iface);
    let lerr = |op: &'static str| {
        let path = pin.clone();
        move |source| KernelError::Link { op, path, source }
    };
    if let Some(link) = PinnedXdpLink::open(&pin).map_err(lerr("opening pinned link"))? {
        let attached = link.info().map_err(lerr("reading pinned link"))?.ifindex;
        if attached.is_some() {
            link.detach().map_err(lerr("detaching pinned link"))?;
        }
    }
    remove_pin(&pin)
}

/// Whether the link pinned for `iface` is still attached to it: `false` once someone
/// detached it (`portcullis detach`, `bpftool link detach`) or removed its pin.
pub fn link_attached(pin_dir: &Path, iface: &str) -> Result<bool, KernelError> {
    let pin = link_pin(pin_dir, iface);
    let lerr = |op: &'static str| {
        let path = pin.clone();
        move |source| KernelError::Link { op, path, source }
    };
    let Some(link) = PinnedXdpLink::open(&pin).map_err(lerr("opening pinned link"))? else {
        return Ok(false);
    };
    let info = link.info().map_err(lerr("reading pinned link"))?;
    let Some(i) = info.ifindex.filter(|i| Some(*i) == ifindex(iface)) else {
        return Ok(false);
    };
    let seen = netlink::xdp_attachment(i).map_err(lerr("asking the kernel about the interface"))?;
    Ok(seen.prog_id == info.prog_id)
}

/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether a bpffs is mounted at `/sys/fs/bpf` (where pins live).
pub fn bpffs_mounted() -> bool {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let ok = unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) } == 0;
    ok && st.f_type as i64 == BPF_FS_MAGIC
}

/// Mounts bpffs at `/sys/fs/bpf` unless it is already there: pins need it, and minimal
/// systems (and `ip netns exec`) do not always provide it.
pub fn ensure_bpffs() -> Result<(), KernelError> {
    let path = Path::new("/sys/fs/bpf");
    let c_path = c"/sys/fs/bpf";
    if bpffs_mounted() {
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

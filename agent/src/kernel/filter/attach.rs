//! Attaching to interfaces: native or generic XDP, links pinned so enforcement survives the
//! agent, a counter slot per interface, detaching, and the bpffs mount they need.

use super::*;

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

/// Path of the pinned link for `iface`.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

impl Filter {
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
            .map_err(super::not_xdp(PROGRAM))?;
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

    /// Gives `iface` its own counter slot (kept across restarts through the pinned map).
    pub(super) fn assign_slot(&mut self, iface: &str) -> Result<(), KernelError> {
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

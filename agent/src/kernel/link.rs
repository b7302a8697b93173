//! Pinned XDP links as the kernel holds them: open a pin, ask which interface the link is
//! attached to (none once detached), and detach it for every holder (`BPF_LINK_DETACH`).
//! Removing a pin alone is not enough: a link lives while any process holds it open, so the
//! off switch must ask the kernel to detach it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::sys::{bpf, obj_get};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// The head of `struct bpf_link_info` and its `xdp` member (the union starts 8-aligned).
#[repr(C)]
#[derive(Default)]
struct XdpLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    _pad2: u32,
}

/// `BPF_LINK_TYPE_XDP` in include/uapi/linux/bpf.h.
const BPF_LINK_TYPE_XDP: u32 = 6;

/// A link opened from its pin.
#[derive(Debug)]
pub struct PinnedXdpLink {
    fd: OwnedFd,
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link's id (as `bpftool link` shows it).
    pub id: u32,
    /// The program it runs.
    pub prog_id: u32,
    /// The interface it is attached to; `None` once detached.
    pub ifindex: Option<u32>,
}

impl PinnedXdpLink {
    /// Opens the link pinned at `pin`; `None` when nothing is pinned there.
    pub fn open(pin: &Path) -> io::Result<Option<Self>> {
        match obj_get(pin) {
            Ok(fd) => Ok(Some(Self { fd })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link's id, program and interface; an error if the pin is not an XDP link.
    pub fn info(&self) -> io::Result<LinkInfo> {
        let mut info = XdpLinkInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<XdpLinkInfo>() as u32,
            info: &raw mut info as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        // A pinned program answers this call too (and its type number for XDP is also 6):
        // only a link's fdinfo has a `link_type` line.
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd()))
            .unwrap_or_default();
        if !fdinfo.lines().any(|l| l.starts_with("link_type:")) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the pin is not a BPF link",
            ));
        }
        if info.link_type != BPF_LINK_TYPE_XDP {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pinned link is of type {}, not XDP", info.link_type),
            ));
        }
        Ok(LinkInfo {
            id: info.id,
            prog_id: info.prog_id,
            ifindex: (info.ifindex != 0).then_some(info.ifindex),
        })
    }

    /// Detaches the link from its interface for every process that holds it.
    pub fn detach(&self) -> io::Result<()> {
        let mut attr = LinkDetachAttr {
            link_fd: self.fd.as_raw_fd() as u32,
        };
        bpf(BPF_LINK_DETACH, &mut attr).map(drop)
    }
}

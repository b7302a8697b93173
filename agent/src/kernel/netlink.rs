//! The XDP attachment of an interface as the kernel reports it (rtnetlink `RTM_GETLINK`,
//! attribute `IFLA_XDP`): which mode and which program. A pinned link does not say its mode,
//! and aya does not ask, so `status` asks here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::filter::AttachMode;

use libc::{RTM_GETLINK, RTM_NEWLINK};

// linux/netlink.h (libc has them as c_int; netlink's fields are u16).
const NLMSG_ERROR: u16 = 2;
pub(super) const NLM_F_REQUEST: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
// linux/if_link.h: the link's XDP attribute and what it nests.
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;

/// The mode an `IFLA_XDP_ATTACHED` value names: `XDP_ATTACHED_SKB` (2) is generic;
/// `_DRV` (1), `_HW` (3) and `_MULTI` (4) run below the stack; 0 is none.
fn attached_mode(value: u8) -> Option<AttachMode> {
    match value {
        2 => Some(AttachMode::Generic),
        1 | 3 | 4 => Some(AttachMode::Native),
        _ => None,
    }
}

#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    _pad: u8,
    if_type: u16,
    index: i32,
    if_flags: u32,
    change: u32,
}

/// One interface's XDP attachment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpAttachment {
    /// The mode of the attached program (`None`: nothing attached; offloaded counts as native).
    pub mode: Option<AttachMode>,
    /// The attached program's id (0: none).
    pub prog_id: u32,
}

/// Asks the kernel what XDP program, in which mode, runs on `ifindex` (in the calling
/// thread's network namespace).
pub fn xdp_attachment(ifindex: u32) -> io::Result<XdpAttachment> {
    let sock = open(libc::NETLINK_ROUTE)?;
    let req = Request {
        len: std::mem::size_of::<Request>() as u32,
        kind: RTM_GETLINK,
        flags: NLM_F_REQUEST,
        seq: 1,
        pid: 0,
        family: libc::AF_UNSPEC as u8,
        _pad: 0,
        if_type: 0,
        index: i32::try_from(ifindex).map_err(|_| io::ErrorKind::InvalidInput)?,
        if_flags: 0,
        change: 0,
    };
    // SAFETY: the bytes of a fully initialised repr(C) value without padding holes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const req).cast::<u8>(),
            std::mem::size_of::<Request>(),
        )
    };
    exchange(&sock, bytes, parse_answer)
}

/// A netlink socket of `protocol`.
pub(super) fn open(protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sends one request and reads answers until `parse` finds what it looks for.
pub(super) fn exchange<T>(
    sock: &OwnedFd,
    request: &[u8],
    parse: impl Fn(&[u8]) -> io::Result<Option<T>>,
) -> io::Result<T> {
    // SAFETY: sends `request.len()` initialised bytes.
    let sent = unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receives into a buffer of the length we pass.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::other("netlink answer larger than 64 KiB"));
        }
        if let Some(found) = parse(&buf[..n])? {
            return Ok(found);
        }
    }
}

pub(super) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Netlink attributes in `b` as `(type, payload)`.
pub(super) fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        let payload = b.get(4..len)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, payload))
    })
}

/// The payload (after the 16-byte header) of the first message of type `kind` in one
/// datagram; an error answer becomes the error, a datagram without one is `None`.
pub(super) fn find_message(mut b: &[u8], kind: u16) -> io::Result<Option<&[u8]>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink answer");
    while b.len() >= 16 {
        let len = u32_at(b, 0).ok_or_else(bad)? as usize;
        let t = u16_at(b, 4).ok_or_else(bad)?;
        let msg = b.get(16..len).ok_or_else(bad)?;
        if t == NLMSG_ERROR {
            let code = u32_at(msg, 0).ok_or_else(bad)? as i32;
            if code != 0 {
                return Err(io::Error::from_raw_os_error(
                    code.checked_neg().unwrap_or(0),
                ));
            }
        } else if t == kind {
            return Ok(Some(msg));
        }
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(None)
}

/// Reads one datagram of answers: `Some` once the link message was seen.
fn parse_answer(b: &[u8]) -> io::Result<Option<XdpAttachment>> {
    let Some(msg) = find_message(b, RTM_NEWLINK)? else {
        return Ok(None);
    };
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink answer");
    // After the 16-byte ifinfomsg come the link's attributes.
    let attrs = msg.get(16..).ok_or_else(bad)?;
    let mut out = XdpAttachment::default();
    for (_, xdp) in attributes(attrs).filter(|(t, _)| *t == IFLA_XDP) {
        let mut drv_prog = 0;
        for (t, v) in attributes(xdp) {
            match t {
                IFLA_XDP_ATTACHED => {
                    out.mode = v.first().copied().and_then(attached_mode);
                }
                IFLA_XDP_PROG_ID => out.prog_id = u32_at(v, 0).unwrap_or(0),
                IFLA_XDP_DRV_PROG_ID => drv_prog = u32_at(v, 0).unwrap_or(0),
                _ => {}
            }
        }
        if out.prog_id == 0 {
            out.prog_id = drv_prog;
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_xdp_program() {
        // Every namespace has `lo` at index 1, and nothing attaches XDP to it here.
        let a = xdp_attachment(1).expect("netlink");
        assert_eq!(a, XdpAttachment::default());
    }

    #[test]
    fn a_missing_interface_is_an_error() {
        let e = xdp_attachment(i32::MAX as u32).expect_err("no such interface");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }

    #[test]
    fn truncated_answers_are_refused_not_read_past() {
        let mut msg = vec![0u8; 16];
        msg[0..4].copy_from_slice(&64u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        assert!(parse_answer(&msg).is_err());
    }
}

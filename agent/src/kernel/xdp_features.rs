//! Whether an interface's driver runs XDP natively, as the kernel reports it (generic
//! netlink family `netdev`, `NETDEV_CMD_DEV_GET`, attribute `xdp-features`; Linux ≥ 6.3).
//! Asking is read-only: attaching a test program instead could reset a real NIC's rings.

use std::io;

use super::netlink::{NLM_F_REQUEST, attributes, exchange, find_message, open, u16_at};

// linux/genetlink.h: the controller, which names families.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
// linux/netdev.h.
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_BASIC`: the driver runs XDP programs (pass, drop, tx).
pub const XDP_ACT_BASIC: u64 = 1;

/// What the kernel says about an interface's XDP support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeXdp {
    /// The driver runs XDP itself (`NETDEV_XDP_ACT_BASIC`); the feature bits are kept.
    Supported(u64),
    /// The driver does not: XDP runs in generic mode, after the kernel built an skb.
    Unsupported,
    /// The kernel does not report XDP features (before 6.3).
    Unknown,
}

/// One generic netlink request: header, `genlmsghdr`, one attribute.
fn request(family: u16, cmd: u8, attr: u16, payload: &[u8]) -> Vec<u8> {
    let attr_len = 4 + payload.len();
    let len = 16 + 4 + attr_len.next_multiple_of(4);
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&family.to_ne_bytes());
    b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel's
    b.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: cmd, version, reserved
    b.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    b.extend_from_slice(&attr.to_ne_bytes());
    b.extend_from_slice(payload);
    b.resize(len, 0);
    b
}

/// Netlink attributes as `(type, payload)`, owned.
type Attributes = Vec<(u16, Vec<u8>)>;

/// The attributes of the first message of type `kind` in `b` (after its genl header);
/// an error answer becomes the error.
fn answer(b: &[u8], kind: u16) -> io::Result<Option<Attributes>> {
    let Some(msg) = find_message(b, kind)? else {
        return Ok(None);
    };
    let attrs = msg
        .get(4..)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed netlink answer"))?;
    Ok(Some(
        attributes(attrs).map(|(t, v)| (t, v.to_vec())).collect(),
    ))
}

/// Asks the kernel whether `ifindex`'s driver runs XDP natively (in the calling thread's
/// network namespace).
pub fn native_xdp(ifindex: u32) -> io::Result<NativeXdp> {
    let sock = open(libc::NETLINK_GENERIC)?;
    let family = exchange(
        &sock,
        &request(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            b"netdev\0",
        ),
        |b| answer(b, GENL_ID_CTRL),
    );
    let family = match family {
        Ok(attrs) => attrs
            .iter()
            .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| u16_at(v, 0))
            .ok_or_else(|| io::Error::other("the netdev family has no id"))?,
        // No such family: a kernel before 6.3.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(NativeXdp::Unknown),
        Err(e) => return Err(e),
    };
    let attrs = exchange(
        &sock,
        &request(
            family,
            NETDEV_CMD_DEV_GET,
            NETDEV_A_DEV_IFINDEX,
            &ifindex.to_ne_bytes(),
        ),
        |b| answer(b, family),
    )?;
    let features = attrs
        .iter()
        .find(|(t, _)| *t == NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|(_, v)| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)));
    Ok(match features {
        Some(f) if f & XDP_ACT_BASIC != 0 => NativeXdp::Supported(f),
        Some(_) => NativeXdp::Unsupported,
        None => NativeXdp::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::super::netlink::u32_at;
    use super::*;

    #[test]
    fn loopback_answers_and_a_missing_interface_is_an_error() {
        // `lo` is index 1 in every namespace; it has no native XDP (generic only).
        assert!(matches!(
            native_xdp(1),
            Ok(NativeXdp::Unsupported | NativeXdp::Unknown)
        ));
        if matches!(native_xdp(1), Ok(NativeXdp::Unsupported)) {
            assert!(native_xdp(u32::MAX >> 1).is_err());
        }
    }

    #[test]
    fn a_request_is_padded_to_four_bytes() {
        let r = request(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            b"netdev\0",
        );
        assert_eq!(r.len(), 16 + 4 + 12);
        assert_eq!(u32_at(&r, 0), Some(32));
        assert_eq!(u16_at(&r, 20), Some(11));
    }
}

//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`.

use std::net::{Ipv4Addr, Ipv6Addr};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A VLAN tag: TPID (0x8100 or 0x88a8) and VLAN id.
#[derive(Clone, Copy)]
pub struct Tag(pub u16, pub u16);

fn ethernet(tags: &[Tag], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for Tag(tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4/UDP frame from `src`, optionally VLAN-tagged, with IPv4 fragment fields
/// (`frag` = flags and offset word, e.g. `0x2000` for "more fragments").
pub fn ipv4(src: Ipv4Addr, tags: &[Tag], frag: u16) -> Vec<u8> {
    let mut f = ethernet(tags, 0x0800);
    let payload = 8 + 16;
    let total = (20 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&Ipv4Addr::new(198, 18, 0, 1).octets());
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
    f.extend_from_slice(&(payload as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0xab; 16]);
    f
}

/// An IPv6/UDP frame from `src`.
pub fn ipv6(src: Ipv6Addr, tags: &[Tag]) -> Vec<u8> {
    let mut f = ethernet(tags, 0x86DD);
    let payload: u16 = 8 + 16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(
        &"2001:db8::1"
            .parse::<Ipv6Addr>()
            .map(|a| a.octets())
            .unwrap_or_default(),
    );
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
    f.extend_from_slice(&payload.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0xcd; 16]);
    f
}

/// An ARP request (not IP: always passed).
pub fn arp() -> Vec<u8> {
    let mut f = ethernet(&[], 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[198, 18, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[198, 18, 0, 1]);
    f
}

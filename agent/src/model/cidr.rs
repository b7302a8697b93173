//! IP addresses and CIDR blocks as the lists hold them: canonical, host bits cleared.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest text accepted as a CIDR; anything longer is rejected before parsing.
const MAX_TEXT: usize = 64;

/// An IPv4 or IPv6 block in canonical form: the address has no bits set past `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cidr {
    /// IPv4 block; `addr` in host order, `len` 0..=32.
    V4 {
        /// Network address, host order.
        addr: u32,
        /// Prefix length.
        len: u8,
    },
    /// IPv6 block; `addr` as a big-endian integer, `len` 0..=128.
    V6 {
        /// Network address.
        addr: u128,
        /// Prefix length.
        len: u8,
    },
}

/// Why a text is not a CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// Too long to be an address.
    #[error("{len}-byte value is not an IP address or CIDR (at most {MAX_TEXT} bytes)")]
    TooLong {
        /// Length of the rejected text.
        len: usize,
    },
    /// The address part does not parse.
    #[error(
        "invalid IP address {text:?}: expected e.g. 203.0.113.7, 198.18.0.0/15 or 2001:db8::/32"
    )]
    BadAddress {
        /// The rejected text.
        text: String,
    },
    /// The prefix length does not parse or is too long for the family.
    #[error("invalid prefix length in {text:?}: must be 0..={max}")]
    BadPrefix {
        /// The rejected text.
        text: String,
        /// 32 or 128.
        max: u8,
    },
}

impl Cidr {
    /// A single IPv4 host.
    pub const fn v4_host(addr: u32) -> Self {
        Self::V4 { addr, len: 32 }
    }

    /// A single IPv6 host.
    pub const fn v6_host(addr: u128) -> Self {
        Self::V6 { addr, len: 128 }
    }

    /// The block of `len` bits around `addr`, host bits cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, CidrError> {
        // An IPv4-mapped IPv6 block (`::ffff:a.b.c.d/96+`) is IPv4: packets from it arrive as
        // IPv4, so as IPv6 it would be "enforced" and never match.
        if let IpAddr::V6(a) = addr
            && let Some(v4) = a.to_ipv4_mapped()
            && (96..=128).contains(&len)
        {
            return Self::new(IpAddr::V4(v4), len - 96);
        }
        match addr {
            IpAddr::V4(a) if len <= 32 => Ok(Self::V4 {
                addr: u32::from(a) & mask32(len),
                len,
            }),
            IpAddr::V6(a) if len <= 128 => Ok(Self::V6 {
                addr: u128::from(a) & mask128(len),
                len,
            }),
            IpAddr::V4(_) => Err(CidrError::BadPrefix {
                text: format!("{addr}/{len}"),
                max: 32,
            }),
            IpAddr::V6(_) => Err(CidrError::BadPrefix {
                text: format!("{addr}/{len}"),
                max: 128,
            }),
        }
    }

    /// Prefix length.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a prefix length, not a collection size"
    )]
    pub const fn len(&self) -> u8 {
        match *self {
            Self::V4 { len, .. } | Self::V6 { len, .. } => len,
        }
    }

    /// Whether this is a single address (/32 or /128).
    pub const fn is_host(&self) -> bool {
        matches!(*self, Self::V4 { len: 32, .. } | Self::V6 { len: 128, .. })
    }

    /// Whether `self` covers `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Self::V4 { addr, len }, IpAddr::V4(a)) => u32::from(a) & mask32(len) == addr,
            (Self::V6 { addr, len }, IpAddr::V6(a)) => u128::from(a) & mask128(len) == addr,
            _ => false,
        }
    }

    /// Whether `self` covers all of `other`.
    pub fn covers(&self, other: &Cidr) -> bool {
        match (*self, *other) {
            (Self::V4 { addr, len }, Self::V4 { addr: o, len: ol }) => {
                ol >= len && o & mask32(len) == addr
            }
            (Self::V6 { addr, len }, Self::V6 { addr: o, len: ol }) => {
                ol >= len && o & mask128(len) == addr
            }
            _ => false,
        }
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        match *self {
            Self::V4 { addr, .. } => IpAddr::V4(Ipv4Addr::from(addr)),
            Self::V6 { addr, .. } => IpAddr::V6(Ipv6Addr::from(addr)),
        }
    }
}

/// Netmask of `len` leading ones (IPv4).
pub const fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// Netmask of `len` leading ones (IPv6).
pub const fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `ADDR` or `ADDR/LEN`; host bits past `LEN` are cleared (`10.1.2.3/8` is
    /// `10.0.0.0/8`), as `ip route` does.
    fn from_str(text: &str) -> Result<Self, CidrError> {
        if text.len() > MAX_TEXT {
            return Err(CidrError::TooLong { len: text.len() });
        }
        let text = text.trim();
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::BadAddress {
            text: text.to_owned(),
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(l) => {
                let ok = !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit());
                match l.parse::<u8>() {
                    Ok(n) if ok && n <= max => n,
                    _ => {
                        return Err(CidrError::BadPrefix {
                            text: text.to_owned(),
                            max,
                        });
                    }
                }
            }
        };
        Self::new(addr, len)
    }
}

impl fmt::Display for Cidr {
    /// Canonical text: `203.0.113.0/24`, `2001:db8::/32`; hosts keep their `/32` or `/128`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Cidr, CidrError> {
        s.parse()
    }

    #[test]
    fn canonicalises_and_prints() {
        assert_eq!(
            p("203.0.113.7").map(|c| c.to_string()),
            Ok("203.0.113.7/32".into())
        );
        assert_eq!(
            p("10.1.2.3/8").map(|c| c.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(
            p("2001:db8:bad::1/48").map(|c| c.to_string()),
            Ok("2001:db8:bad::/48".into())
        );
        assert_eq!(p("::/0").map(|c| c.to_string()), Ok("::/0".into()));
        assert_eq!(p("0.0.0.0/0").map(|c| c.len()), Ok(0));
    }

    #[test]
    fn rejects_bad_text_with_a_reason() {
        assert!(matches!(p("10.0.0.256"), Err(CidrError::BadAddress { .. })));
        assert!(matches!(
            p("10.0.0.0/33"),
            Err(CidrError::BadPrefix { max: 32, .. })
        ));
        assert!(matches!(
            p("2001:db8::/129"),
            Err(CidrError::BadPrefix { max: 128, .. })
        ));
        assert!(matches!(p("10.0.0.0/"), Err(CidrError::BadPrefix { .. })));
        assert!(matches!(p("10.0.0.0/+8"), Err(CidrError::BadPrefix { .. })));
        assert!(matches!(
            p("example.com"),
            Err(CidrError::BadAddress { .. })
        ));
        assert!(matches!(p(""), Err(CidrError::BadAddress { .. })));
        assert!(matches!(
            p(&"1".repeat(100)),
            Err(CidrError::TooLong { len: 100 })
        ));
        let msg = p("10.0.0.0/40")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("0..=32"), "{msg}");
    }

    #[test]
    fn containment() {
        let net: Cidr = "198.18.0.0/15".parse().expect("valid");
        assert!(net.contains("198.19.255.255".parse().expect("ip")));
        assert!(!net.contains("198.20.0.0".parse().expect("ip")));
        assert!(net.covers(&"198.18.7.0/24".parse().expect("valid")));
        assert!(!net.covers(&"198.0.0.0/8".parse().expect("valid")));
        assert!(!net.contains("2001:db8::1".parse().expect("ip")));
    }
}

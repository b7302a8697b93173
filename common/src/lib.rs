//! Types shared by the XDP program (`filter-ebpf`) and the agent.
//!
//! This crate is the only place where kernel map names, capacities, key and value layouts,
//! counter indices and event records are defined. Every type is `#[repr(C)]` with explicit
//! integer fields and no implicit padding, so the kernel and user space agree byte for byte.
//!
//! # Map layout (IPv4)
//! A packet's IPv4 source is judged by at most four lookups whose cost does not grow with the
//! size of the lists:
//! 1. [`V4_GUARD`]: a 4 MiB array bitmap with two bits per /24 — "some entry of length /25–/32
//!    lies in this /24" ([`GUARD_HOST`]) and "some entry of length /0–/24 covers this /24"
//!    ([`GUARD_PREFIX`]). Most legitimate traffic stops here after one inlined array read.
//! 2. [`V4_HOSTS`]: hash of /32 addresses (host entries, and /25–/31 entries expanded to hosts).
//! 3. [`V4_NETS`]: hash of /24 networks (entries of length /17–/24 expanded to /24s).
//! 4. [`V4_WIDE`]: array of the 65 536 /16s (entries of length /0–/16 expanded to /16s).
//!
//! Every slot holds [`Deadlines`]: the latest expiry of the allow and deny entries that expand
//! into it. The verdict combines the slots the guard points at.
//!
//! # Map layout (IPv6)
//! [`V6_GUARD`] (two bits per hashed /32), [`V6_HOSTS`] (exact /128) and [`V6_PREFIXES`] (an LPM
//! trie holding only the prefix entries, each slot aggregated with the prefixes covering it).
//! Prefixes shorter than /32 cannot be guarded and set [`Config::v6_unguarded`].
#![no_std]

/// A deadline meaning "never expires".
pub const NEVER: u64 = u64::MAX;

/// Map names, as the kernel and the pin directory know them (at most 15 bytes).
pub mod map_name {
    /// See [`crate::V4_GUARD`].
    pub const V4_GUARD: &str = "V4_GUARD";
    /// Hash of /32 slots.
    pub const V4_HOSTS: &str = "V4_HOSTS";
    /// Hash of /24 slots.
    pub const V4_NETS: &str = "V4_NETS";
    /// Array of /16 slots.
    pub const V4_WIDE: &str = "V4_WIDE";
    /// Hashed-/32 guard bitmap for IPv6.
    pub const V6_GUARD: &str = "V6_GUARD";
    /// Hash of /128 slots.
    pub const V6_HOSTS: &str = "V6_HOSTS";
    /// LPM trie of IPv6 prefixes.
    pub const V6_PREFIXES: &str = "V6_PREFIXES";
    /// Per-CPU counters, indexed by [`crate::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Single-slot [`crate::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// Ring buffer of [`crate::DropEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// Interface index (masked) → counter slot, see [`crate::IF_SLOT_INDEX`].
    pub const IF_SLOTS: &str = "IF_SLOTS";
    /// Per-CPU LRU hash of [`crate::HitKey`] → [`crate::Counter`]: packets per matched slot.
    pub const HITS: &str = "HITS";
    /// Every map the production program pins, in a fixed order.
    pub const ALL: [&str; 12] = [
        V4_GUARD,
        V4_HOSTS,
        V4_NETS,
        V4_WIDE,
        V6_GUARD,
        V6_HOSTS,
        V6_PREFIXES,
        COUNTERS,
        CONFIG,
        EVENTS,
        IF_SLOTS,
        HITS,
    ];
}

/// Interfaces get their own counters: `IF_SLOTS[ifindex & (IF_SLOT_INDEX - 1)]` is the slot
/// (1.., set by the agent on attach; 0 = not attached by name, or an index collision), and
/// `COUNTERS[slot * counter::COUNT + verdict]` the counter.
pub const IF_SLOT_INDEX: u32 = 4096;
/// Counter slots: slot 0 plus up to 31 interfaces.
pub const IF_COUNTER_SLOTS: u32 = 32;

/// Entries of the IPv4 guard bitmap: 2^24 /24s, two bits each, 32 /24s per `u64` word.
pub const V4_GUARD_WORDS: u32 = 1 << 19;
/// Hashed /32 slots in the IPv6 guard bitmap (two bits each).
pub const V6_GUARD_SLOTS_LOG2: u32 = 22;
/// Words of the IPv6 guard bitmap.
pub const V6_GUARD_WORDS: u32 = 1 << (V6_GUARD_SLOTS_LOG2 - 5);
/// Guard bit: the /24 (or hashed IPv6 /32) holds host-level slots.
pub const GUARD_HOST: u64 = 0b01;
/// Guard bit: the /24 (or hashed IPv6 /32) is covered by prefix-level slots.
pub const GUARD_PREFIX: u64 = 0b10;

/// Default capacity of [`map_name::V4_HOSTS`]; the agent may override it at load time.
pub const V4_HOSTS_DEFAULT_CAPACITY: u32 = 2 << 20;
/// Default capacity of [`map_name::V4_NETS`].
pub const V4_NETS_DEFAULT_CAPACITY: u32 = 1 << 20;
/// Number of /16 slots.
pub const V4_WIDE_SLOTS: u32 = 1 << 16;
/// Default capacity of [`map_name::V6_HOSTS`].
pub const V6_HOSTS_DEFAULT_CAPACITY: u32 = 1 << 20;
/// Default capacity of [`map_name::V6_PREFIXES`].
pub const V6_PREFIXES_DEFAULT_CAPACITY: u32 = 1 << 18;
/// Byte size of the drop-event ring buffer.
pub const EVENTS_BYTES: u32 = 1 << 18;
/// Slots of [`map_name::HITS`]. Keys are matched *slots*, not sources, so a flood of spoofed
/// sources inside one listed /16 or /24 is one key; the least recently hit keys make room
/// when more slots than this see traffic between two reads of the agent.
pub const HITS_CAPACITY: u32 = 1 << 14;

/// Where an IPv4 address's /24 lives in [`map_name::V4_GUARD`]: (word index, bit shift).
#[inline(always)]
pub const fn v4_guard_slot(addr: u32) -> (u32, u32) {
    let net24 = addr >> 8;
    (net24 >> 5, (net24 & 31) * 2)
}

/// Where an IPv6 address's /32 lives in [`map_name::V6_GUARD`]: (word index, bit shift).
/// The top 32 bits are hashed (multiplicative) so that nearby /32s spread over the bitmap.
#[inline(always)]
pub const fn v6_guard_slot(top32: u32) -> (u32, u32) {
    let slot = top32.wrapping_mul(0x9E37_79B1) >> (32 - V6_GUARD_SLOTS_LOG2);
    (slot >> 5, (slot & 31) * 2)
}

/// The value of every slot: when the allow and deny entries that expand into it expire, in
/// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`). `0` means "no entry", [`NEVER`]
/// means "no expiry". An address is allowed if any allow deadline is in the future, else
/// denied if any deny deadline is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// Latest expiry among allow entries (0 = none).
    pub allow_until: u64,
    /// Latest expiry among deny entries (0 = none).
    pub deny_until: u64,
}

impl Deadlines {
    /// No entry.
    pub const EMPTY: Self = Self {
        allow_until: 0,
        deny_until: 0,
    };

    /// The later of each deadline: the slot value when two entries expand into one slot.
    #[inline(always)]
    #[must_use]
    pub const fn max(self, other: Self) -> Self {
        Self {
            allow_until: if self.allow_until > other.allow_until {
                self.allow_until
            } else {
                other.allow_until
            },
            deny_until: if self.deny_until > other.deny_until {
                self.deny_until
            } else {
                other.deny_until
            },
        }
    }

    /// Whether no entry expands into this slot.
    #[inline(always)]
    pub const fn is_empty(&self) -> bool {
        self.allow_until == 0 && self.deny_until == 0
    }
}

/// Key of [`map_name::V6_HOSTS`]: an IPv6 address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6Addr {
    /// Address bytes, network order.
    pub bytes: [u8; 16],
}

/// Kernel-side enforcement mode, in [`Config::mode`].
pub mod mode {
    /// Drop denied packets.
    pub const ENFORCE: u32 = 0;
    /// Pass denied packets and count them as "would drop".
    pub const MONITOR: u32 = 1;
}

/// Runtime configuration read by the XDP program on every packet (slot 0 of
/// [`map_name::CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`mode::ENFORCE`] or [`mode::MONITOR`].
    pub mode: u32,
    /// A drop event is sampled when the per-CPU drop count `& sample_mask == 0`
    /// (`0` = every drop, `u32::MAX` = practically none).
    pub sample_mask: u32,
    /// Non-zero when IPv6 prefixes shorter than /32 exist: the IPv6 guard cannot rule them
    /// out, so the prefix trie is always consulted.
    pub v6_unguarded: u32,
    /// Non-zero turns the per-slot hit counters ([`map_name::HITS`]) on: every listed
    /// packet then costs a hash update. Zero (a fresh map) leaves them off.
    pub count_hits: u32,
}

/// Packet and byte counts of one counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (whole frame).
    pub bytes: u64,
}

/// Indices into [`map_name::COUNTERS`]: one per verdict and reason.
pub mod counter {
    /// Passed: no entry matched.
    pub const PASS_NO_MATCH: u32 = 0;
    /// Passed: an allow entry matched (possibly over a deny).
    pub const PASS_ALLOWED: u32 = 1;
    /// Dropped: a deny entry matched.
    pub const DROP_DENIED: u32 = 2;
    /// Passed in monitor mode although a deny entry matched.
    pub const MONITOR_WOULD_DROP: u32 = 3;
    /// Passed: not IPv4 or IPv6 (ARP, LLDP, ...).
    pub const PASS_NOT_IP: u32 = 4;
    /// Passed: frame too short for the headers it claims (fail-open).
    pub const PASS_TRUNCATED: u32 = 5;
    /// Number of counter slots.
    pub const COUNT: u32 = 6;
    /// Stable names for logs, metrics and JSON, in index order.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_no_match",
        "pass_allowed",
        "drop_denied",
        "monitor_would_drop",
        "pass_not_ip",
        "pass_truncated",
    ];
}

/// Which list a [`HitKey`] counts for.
pub mod hit_list {
    /// An allow entry passed the packet.
    pub const ALLOW: u32 = 0;
    /// A deny entry dropped the packet (or would have, in monitor mode).
    pub const DENY: u32 = 1;
}

/// Key of [`map_name::HITS`]: the slot that decided a packet, as the source address masked
/// to the slot's prefix length (IPv4 /16, /24 or /32; IPv6 /128), and the deciding list.
/// The agent attributes each key to the most specific entry of that list covering it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HitKey {
    /// Masked source, network order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
    /// Prefix length the address is masked to.
    pub prefix_len: u32,
    /// [`family::V4`] or [`family::V6`].
    pub family: u32,
    /// [`hit_list::ALLOW`] or [`hit_list::DENY`].
    pub list: u32,
    /// Zero.
    pub reserved: u32,
}

/// Address family tags used in [`DropEvent::family`].
pub mod family {
    /// IPv4: the address is in the first 4 bytes.
    pub const V4: u32 = 4;
    /// IPv6.
    pub const V6: u32 = 6;
}

/// A sampled drop (or would-drop) record written to [`map_name::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// Source address, network order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub time_ns: u64,
    /// Deny deadline of the matching slot (which entry matched, by expiry).
    pub deny_until: u64,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// [`family::V4`] or [`family::V6`].
    pub family: u32,
    /// [`counter::DROP_DENIED`] or [`counter::MONITOR_WOULD_DROP`].
    pub verdict: u32,
    /// Outer VLAN id, 0 if untagged.
    pub vlan: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers, with no padding.
    unsafe impl aya::Pod for super::Deadlines {}
    unsafe impl aya::Pod for super::V6Addr {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::HitKey {}
}

/// Compile-time checks that the layouts have no padding.
const _: () = {
    assert!(core::mem::size_of::<Deadlines>() == 16);
    assert!(core::mem::size_of::<V6Addr>() == 16);
    assert!(core::mem::size_of::<Config>() == 16);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<DropEvent>() == 48);
    assert!(core::mem::size_of::<HitKey>() == 32);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_takes_later_deadline_per_list() {
        let a = Deadlines {
            allow_until: 5,
            deny_until: 0,
        };
        let b = Deadlines {
            allow_until: 1,
            deny_until: NEVER,
        };
        assert_eq!(
            a.max(b),
            Deadlines {
                allow_until: 5,
                deny_until: NEVER
            }
        );
        assert!(Deadlines::EMPTY.is_empty());
        assert!(!a.is_empty());
    }

    #[test]
    fn v4_guard_slot_packs_32_nets_per_word() {
        assert_eq!(v4_guard_slot(0x0000_00ff), (0, 0));
        assert_eq!(v4_guard_slot(0x0000_0100), (0, 2));
        assert_eq!(v4_guard_slot(0x0000_1f00), (0, 62));
        assert_eq!(v4_guard_slot(0x0000_2000), (1, 0));
        assert_eq!(v4_guard_slot(0xffff_ffff).0, V4_GUARD_WORDS - 1);
    }

    #[test]
    fn v6_guard_slot_stays_in_bounds() {
        for top in [0u32, 1, 0x2001_0db8, u32::MAX] {
            let (w, s) = v6_guard_slot(top);
            assert!(w < V6_GUARD_WORDS);
            assert!(s < 64 && s % 2 == 0);
        }
    }
}

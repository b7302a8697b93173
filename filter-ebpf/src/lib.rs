//! The Portcullis XDP fast path: frame parsing, the source-address lookups and the verdict.
//!
//! Both the production program (`main.rs`) and the benchmark programs (`bin/bench.rs`) call
//! [`filter`] / [`classify_v4`] / [`classify_v6`], so what is measured is what runs.
//!
//! Error policy: Portcullis fails open. A frame too short for the headers it announces is
//! passed and counted ([`counter::PASS_TRUNCATED`]); the L7 checker still stands in front of
//! the API.
#![no_std]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use portcullis_common::{
    Config, Counter, Deadlines, DropEvent, EVENTS_BYTES, GUARD_HOST, GUARD_PREFIX, HITS_CAPACITY,
    HitKey, IF_COUNTER_SLOTS, IF_SLOT_INDEX, NEVER, V4_GUARD_WORDS, V4_HOSTS_DEFAULT_CAPACITY,
    V4_NETS_DEFAULT_CAPACITY, V4_WIDE_SLOTS, V6_GUARD_WORDS, V6_HOSTS_DEFAULT_CAPACITY,
    V6_PREFIXES_DEFAULT_CAPACITY, V6Addr, counter, family, hit_list, mode, v4_guard_slot,
    v6_guard_slot,
};

/// Two bits per /24 (see `portcullis_common`).
#[map]
pub static V4_GUARD: Array<u64> = Array::with_max_entries(V4_GUARD_WORDS, 0);
/// /32 slots.
#[map]
pub static V4_HOSTS: HashMap<u32, Deadlines> =
    HashMap::with_max_entries(V4_HOSTS_DEFAULT_CAPACITY, 0);
/// /24 slots, keyed by `addr >> 8`.
#[map]
pub static V4_NETS: HashMap<u32, Deadlines> =
    HashMap::with_max_entries(V4_NETS_DEFAULT_CAPACITY, 0);
/// /16 slots, indexed by `addr >> 16`.
#[map]
pub static V4_WIDE: Array<Deadlines> = Array::with_max_entries(V4_WIDE_SLOTS, 0);
/// Two bits per hashed IPv6 /32.
#[map]
pub static V6_GUARD: Array<u64> = Array::with_max_entries(V6_GUARD_WORDS, 0);
/// /128 slots.
#[map]
pub static V6_HOSTS: HashMap<V6Addr, Deadlines> =
    HashMap::with_max_entries(V6_HOSTS_DEFAULT_CAPACITY, 0);
/// IPv6 prefixes (/0–/127), each aggregated with the prefixes covering it.
#[map]
pub static V6_PREFIXES: LpmTrie<[u8; 16], Deadlines> =
    LpmTrie::with_max_entries(V6_PREFIXES_DEFAULT_CAPACITY, 0);
/// Per-CPU packet and byte counters per verdict.
#[map]
pub static COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(counter::COUNT * IF_COUNTER_SLOTS, 0);
/// Interface index (masked) → counter slot.
#[map]
pub static IF_SLOTS: Array<u32> = Array::with_max_entries(IF_SLOT_INDEX, 0);
/// Runtime configuration, slot 0.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Sampled drop events.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
/// Packets and bytes per deciding slot and list (allow passes, deny drops), per CPU.
#[map]
pub static HITS: LruPerCpuHashMap<HitKey, Counter> =
    LruPerCpuHashMap::with_max_entries(HITS_CAPACITY, 0);

/// What a lookup found for a source: the deadlines that apply, and the prefix length of the
/// most specific slot that held any (the hit counter's key; 0 when nothing matched).
#[derive(Clone, Copy)]
pub struct Matched {
    /// Deadlines of every slot covering the source, combined.
    pub deadlines: Deadlines,
    /// Prefix length of the most specific non-empty slot.
    pub slot_len: u32,
}

impl Matched {
    /// Nothing matched.
    pub const NONE: Self = Self {
        deadlines: Deadlines::EMPTY,
        slot_len: 0,
    };

    /// `d` found in a slot of length `slot_len` (nothing, when `d` is empty).
    #[inline(always)]
    #[must_use]
    pub fn slot(d: Deadlines, slot_len: u32) -> Self {
        Self {
            deadlines: d,
            slot_len: if d.is_empty() { 0 } else { slot_len },
        }
    }

    /// Adds a more specific slot: its deadlines join the others, and it keys the hit when
    /// it holds an entry.
    #[inline(always)]
    #[must_use]
    fn then(self, d: Deadlines, slot_len: u32) -> Self {
        Self {
            deadlines: self.deadlines.max(d),
            slot_len: if d.is_empty() {
                self.slot_len
            } else {
                slot_len
            },
        }
    }
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
const IPV4_MIN_HLEN: usize = 20;
const IPV4_SRC_OFF: usize = 12;
const IPV6_HLEN: usize = 40;
const IPV6_SRC_OFF: usize = 8;

/// Where the source address of a parsed frame lies.
#[derive(Clone, Copy)]
pub enum Source {
    /// IPv4, byte offset of the source address in the frame.
    V4(usize),
    /// IPv6, byte offset of the source address in the frame.
    V6(usize),
    /// Not an IP frame.
    NotIp,
    /// Shorter than its headers.
    Truncated,
}

/// The parsed source and the outer VLAN id.
pub struct Parsed {
    /// The source.
    pub source: Source,
    /// Outer VLAN id, 0 when untagged.
    pub vlan: u32,
}

/// Returns whether `len` bytes from `off` lie inside the frame. The verifier needs to see this
/// comparison against `data_end` before any read.
#[inline(always)]
fn fits(ctx: &XdpContext, off: usize, len: usize) -> bool {
    ctx.data() + off + len <= ctx.data_end()
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    if !fits(ctx, off, 2) {
        return None;
    }
    // SAFETY: bounds checked just above.
    let bytes = unsafe { *((ctx.data() + off) as *const [u8; 2]) };
    Some(u16::from_be_bytes(bytes))
}

/// Finds the source address: Ethernet, up to two VLAN tags (802.1Q or 802.1ad), then IPv4 or
/// IPv6. Only the source matters, so every fragment of a datagram gets the same verdict.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let mut off = ETH_HLEN;
    let Some(mut proto) = read_be16(ctx, 12) else {
        return Parsed {
            source: Source::Truncated,
            vlan: 0,
        };
    };
    let mut vlan = 0u32;
    // Two tags at most (QinQ); unrolled so the verifier sees a bounded path.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let (Some(tci), Some(next)) = (read_be16(ctx, off), read_be16(ctx, off + 2)) else {
            return Parsed {
                source: Source::Truncated,
                vlan: 0,
            };
        };
        vlan = u32::from(tci & 0x0fff);
        proto = next;
        off += VLAN_HLEN;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(next) = read_be16(ctx, off + 2) else {
                return Parsed {
                    source: Source::Truncated,
                    vlan,
                };
            };
            proto = next;
            off += VLAN_HLEN;
        }
    }
    let source = match proto {
        ETH_P_IP => {
            if fits(ctx, off, IPV4_MIN_HLEN) {
                Source::V4(off + IPV4_SRC_OFF)
            } else {
                Source::Truncated
            }
        }
        ETH_P_IPV6 => {
            if fits(ctx, off, IPV6_HLEN) {
                Source::V6(off + IPV6_SRC_OFF)
            } else {
                Source::Truncated
            }
        }
        _ => Source::NotIp,
    };
    Parsed { source, vlan }
}

/// Reads an IPv4 source at `off` as a host-order integer.
#[inline(always)]
pub fn load_v4(ctx: &XdpContext, off: usize) -> Option<u32> {
    if !fits(ctx, off, 4) {
        return None;
    }
    // SAFETY: bounds checked just above.
    let bytes = unsafe { *((ctx.data() + off) as *const [u8; 4]) };
    Some(u32::from_be_bytes(bytes))
}

/// Reads an IPv6 source at `off`.
#[inline(always)]
pub fn load_v6(ctx: &XdpContext, off: usize) -> Option<[u8; 16]> {
    if !fits(ctx, off, 16) {
        return None;
    }
    // SAFETY: bounds checked just above.
    Some(unsafe { *((ctx.data() + off) as *const [u8; 16]) })
}

#[inline(always)]
fn guard_bits(map: &Array<u64>, word: u32, shift: u32) -> u64 {
    match map.get(word) {
        Some(w) => (*w >> shift) & (GUARD_HOST | GUARD_PREFIX),
        None => 0,
    }
}

#[inline(always)]
fn hash_get<K>(map: &HashMap<K, Deadlines>, key: &K) -> Deadlines {
    // SAFETY: values are plain integers; a concurrent update can at worst tear between the two
    // deadlines of one slot, each of which is a valid deadline.
    match unsafe { map.get(key) } {
        Some(d) => *d,
        None => Deadlines::EMPTY,
    }
}

/// The deadlines that apply to an IPv4 source (host order). At most one array read for
/// addresses in a /24 that no entry touches; at most four lookups in all.
#[inline(always)]
pub fn classify_v4(addr: u32) -> Matched {
    let (word, shift) = v4_guard_slot(addr);
    let bits = guard_bits(&V4_GUARD, word, shift);
    if bits == 0 {
        return Matched::NONE;
    }
    let mut m = Matched::NONE;
    if bits & GUARD_PREFIX != 0 {
        if let Some(w) = V4_WIDE.get(addr >> 16) {
            m = Matched::slot(*w, 16);
        }
        m = m.then(hash_get(&V4_NETS, &(addr >> 8)), 24);
    }
    if bits & GUARD_HOST != 0 {
        m = m.then(hash_get(&V4_HOSTS, &addr), 32);
    }
    m
}

/// The deadlines that apply to an IPv6 source. A host slot keys hits by the whole source;
/// a prefix match by its /64 (the trie does not say which prefix matched, and keying by
/// the source would let one client with a /64 of its own churn the hit counters).
#[inline(always)]
pub fn classify_v6(addr: &[u8; 16], cfg: &Config) -> Matched {
    let top = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
    let (word, shift) = v6_guard_slot(top);
    let mut bits = guard_bits(&V6_GUARD, word, shift);
    if cfg.v6_unguarded != 0 {
        bits |= GUARD_PREFIX;
    }
    if bits == 0 {
        return Matched::NONE;
    }
    let mut m = Matched::NONE;
    if bits & GUARD_PREFIX != 0
        && let Some(p) = V6_PREFIXES.get(Key::new(128, *addr))
    {
        m = Matched::slot(*p, 64);
    }
    if bits & GUARD_HOST != 0 {
        m = m.then(hash_get(&V6_HOSTS, &V6Addr { bytes: *addr }), 128);
    }
    m
}

/// First counter of the interface the packet arrived on (one inlined array read).
#[inline(always)]
fn counter_base(ctx: &XdpContext) -> u32 {
    // SAFETY: reads the xdp_md context the kernel handed us.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let slot = match IF_SLOTS.get(ifindex & (IF_SLOT_INDEX - 1)) {
        Some(s) if *s < IF_COUNTER_SLOTS => *s,
        _ => 0,
    };
    slot * counter::COUNT
}

#[inline(always)]
fn count(index: u32, bytes: u64) -> u64 {
    match COUNTERS.get_ptr_mut(index) {
        Some(c) => {
            // SAFETY: per-CPU slot, only this CPU writes it while we run.
            let c = unsafe { &mut *c };
            c.packets += 1;
            c.bytes += bytes;
            c.packets
        }
        None => 0,
    }
}

/// Counts a packet for the slot that decided it (`list`): one per-CPU hash update, on the
/// hit path only.
#[inline(always)]
fn count_hit(addr: &[u8; 16], m: &Matched, fam: u32, list: u32, bytes: u64) {
    let mut key = HitKey {
        addr: *addr,
        prefix_len: m.slot_len,
        family: fam,
        list,
        reserved: 0,
    };
    if fam == family::V4 && m.slot_len < 32 {
        let host = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
        let net = (host & !(u32::MAX >> m.slot_len)).to_be_bytes();
        key.addr[0] = net[0];
        key.addr[1] = net[1];
        key.addr[2] = net[2];
        key.addr[3] = net[3];
    } else if fam == family::V6 && m.slot_len == 64 {
        key.addr[8..].copy_from_slice(&[0; 8]);
    }
    match HITS.get_ptr_mut(&key) {
        Some(c) => {
            // SAFETY: per-CPU value, only this CPU writes it while we run.
            let c = unsafe { &mut *c };
            c.packets += 1;
            c.bytes += bytes;
        }
        None => {
            // A full map evicts the least recently hit slot; a failed insert loses one count,
            // never the verdict.
            let _ = HITS.insert(&key, &Counter { packets: 1, bytes }, 0);
        }
    }
}

/// Whether a program counts hits per deciding slot.
#[derive(Clone, Copy)]
pub enum CountHits {
    /// As [`Config::count_hits`] says (production).
    ByConfig,
    /// Always (the benchmark's counted variant).
    Always,
}

/// Turns deadlines into an XDP action: allow beats deny; expired entries do not match. The
/// clock is read only when a slot matched, so unlisted traffic never pays for it. When
/// `hits` says so, the deciding slot's hit counter is bumped.
#[inline(always)]
fn decide(
    ctx: &XdpContext,
    m: Matched,
    cfg: &Config,
    addr: [u8; 16],
    fam: u32,
    vlan: u32,
    hits: CountHits,
) -> u32 {
    let d = m.deadlines;
    let hits = match hits {
        CountHits::ByConfig => cfg.count_hits != 0,
        CountHits::Always => true,
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let base = counter_base(ctx);
    if d.is_empty() {
        count(base + counter::PASS_NO_MATCH, bytes);
        return xdp_action::XDP_PASS;
    }
    // Entries without expiry (the common case) need no clock read.
    let now = if d.allow_until == NEVER || (d.allow_until == 0 && d.deny_until == NEVER) {
        0
    } else {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_boot_ns() }
    };
    if d.allow_until > now {
        count(base + counter::PASS_ALLOWED, bytes);
        if hits {
            count_hit(&addr, &m, fam, hit_list::ALLOW, bytes);
        }
        return xdp_action::XDP_PASS;
    }
    if d.deny_until <= now {
        count(base + counter::PASS_NO_MATCH, bytes);
        return xdp_action::XDP_PASS;
    }
    let (verdict, action) = if cfg.mode == mode::MONITOR {
        (counter::MONITOR_WOULD_DROP, xdp_action::XDP_PASS)
    } else {
        (counter::DROP_DENIED, xdp_action::XDP_DROP)
    };
    let seen = count(base + verdict, bytes);
    if hits {
        count_hit(&addr, &m, fam, hit_list::DENY, bytes);
    }
    if seen & u64::from(cfg.sample_mask) == 0 {
        let event = DropEvent {
            addr,
            // SAFETY: helper without preconditions; sampled drops only.
            time_ns: unsafe { bpf_ktime_get_boot_ns() },
            deny_until: d.deny_until,
            // SAFETY: reads the xdp_md context the kernel handed us.
            ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
            family: fam,
            verdict,
            vlan,
        };
        // A full ring buffer loses the sample, never the verdict.
        let _ = EVENTS.output::<DropEvent>(&event, 0);
    }
    action
}

const DEFAULT_CONFIG: Config = Config {
    mode: mode::ENFORCE,
    sample_mask: 63,
    v6_unguarded: 0,
    count_hits: 0,
};

/// The whole per-packet path: parse, look up, decide, count.
#[inline(always)]
pub fn filter(ctx: &XdpContext) -> u32 {
    filter_with(ctx, classify_v4, classify_v6, CountHits::ByConfig)
}

/// [`filter`] with the lookups passed in, so benchmark programs can swap the map layout while
/// parsing, deciding and counting stay the very same code; `hits` says whether the per-slot
/// hit counters count (production: as configured; benchmarks: always, to measure them).
#[inline(always)]
pub fn filter_with(
    ctx: &XdpContext,
    lookup_v4: impl Fn(u32) -> Matched,
    lookup_v6: impl Fn(&[u8; 16], &Config) -> Matched,
    hits: CountHits,
) -> u32 {
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => DEFAULT_CONFIG,
    };
    let parsed = parse(ctx);
    match parsed.source {
        Source::V4(off) => match load_v4(ctx, off) {
            Some(addr) => {
                let mut bytes = [0u8; 16];
                let be = addr.to_be_bytes();
                bytes[0] = be[0];
                bytes[1] = be[1];
                bytes[2] = be[2];
                bytes[3] = be[3];
                decide(
                    ctx,
                    lookup_v4(addr),
                    &cfg,
                    bytes,
                    family::V4,
                    parsed.vlan,
                    hits,
                )
            }
            None => truncated(ctx),
        },
        Source::V6(off) => match load_v6(ctx, off) {
            Some(addr) => decide(
                ctx,
                lookup_v6(&addr, &cfg),
                &cfg,
                addr,
                family::V6,
                parsed.vlan,
                hits,
            ),
            None => truncated(ctx),
        },
        Source::NotIp => {
            count(
                counter_base(ctx) + counter::PASS_NOT_IP,
                (ctx.data_end() - ctx.data()) as u64,
            );
            xdp_action::XDP_PASS
        }
        Source::Truncated => truncated(ctx),
    }
}

#[inline(always)]
fn truncated(ctx: &XdpContext) -> u32 {
    count(
        counter_base(ctx) + counter::PASS_TRUNCATED,
        (ctx.data_end() - ctx.data()) as u64,
    );
    xdp_action::XDP_PASS
}

//! Benchmark-only XDP programs, run through `BPF_PROG_TEST_RUN` by `cargo xtask bench xdp`.
//!
//! A single repeated frame would let the CPU cache hide lookup cost, so each program first
//! copies the next address of a probe array into the frame's source field, then runs the very
//! same filter code as production with one of three map layouts:
//! - `bench_portcullis`: the production layout (guards, hashes, /16 array, IPv6 trie);
//! - `bench_lpm`: one kernel LPM trie per family (the textbook design);
//! - `bench_hash`: one exact-match hash of host entries (a cost reference, not a filter);
//! - `bench_counted`: the production layout with the per-slot hit counters always on (what
//!   `hit_counters = true` costs on the hit path; the others count as configured, i.e. not);
//! - `bench_base`: the probe copy and parse alone (the harness's own cost).
//!
//! `wire_loop` is the packet generator of `cargo xtask bench wire` (real frames on a veth).
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use filter_ebpf::{CountHits, Matched, Source, classify_v4, classify_v6, filter_with, parse};
use portcullis_common::{Deadlines, V6Addr};

/// Probe slots; the harness fills a power-of-two count and sets `PROBE_MASK`.
const PROBE_SLOTS: u32 = 1 << 18;

/// IPv4 probes, host order.
#[map]
static PROBES_V4: Array<u32> = Array::with_max_entries(PROBE_SLOTS, 0);
/// IPv6 probes.
#[map]
static PROBES_V6: Array<[u8; 16]> = Array::with_max_entries(PROBE_SLOTS, 0);
/// Slot 0: probe count minus one (a power of two minus one).
#[map]
static PROBE_MASK: Array<u32> = Array::with_max_entries(1, 0);
/// Per-CPU position in the probe array.
#[map]
static PROBE_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// Reference: every entry in one IPv4 LPM trie (key bytes in network order).
#[map]
static LPM_V4: LpmTrie<[u8; 4], Deadlines> = LpmTrie::with_max_entries(1 << 21, 0);
/// Reference: every entry in one IPv6 LPM trie.
#[map]
static LPM_V6: LpmTrie<[u8; 16], Deadlines> = LpmTrie::with_max_entries(1 << 20, 0);
/// Reference: host entries only, exact match.
#[map]
static HASH_V4: HashMap<u32, Deadlines> = HashMap::with_max_entries(1 << 21, 0);
/// Reference: IPv6 host entries only, exact match.
#[map]
static HASH_V6: HashMap<V6Addr, Deadlines> = HashMap::with_max_entries(1 << 20, 0);

/// Copies the next probe over the frame's source address. Frames are untagged IPv4 or IPv6.
#[inline(always)]
fn next_probe(ctx: &XdpContext) {
    let Some(mask) = PROBE_MASK.get(0) else {
        return;
    };
    let Some(cursor) = PROBE_CURSOR.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while we run.
    let idx = unsafe { *cursor } & *mask;
    // SAFETY: as above.
    unsafe { *cursor = idx.wrapping_add(1) };
    // The bounds check must come after the map lookup: the verifier forgets packet bounds
    // across a helper call.
    match parse(ctx).source {
        Source::V4(off) => {
            if let Some(a) = PROBES_V4.get(idx).copied() {
                let (start, end) = (ctx.data(), ctx.data_end());
                if start + off + 4 <= end {
                    // SAFETY: bounds checked just above.
                    unsafe { *((start + off) as *mut [u8; 4]) = a.to_be_bytes() };
                }
            }
        }
        Source::V6(off) => {
            if let Some(a) = PROBES_V6.get(idx).copied() {
                let (start, end) = (ctx.data(), ctx.data_end());
                if start + off + 16 <= end {
                    // SAFETY: bounds checked just above.
                    unsafe { *((start + off) as *mut [u8; 16]) = a };
                }
            }
        }
        _ => {}
    }
}

/// A reference lookup's result, keyed like a host slot (`len`: 32 or 128).
#[inline(always)]
fn found(d: Option<&Deadlines>, len: u32) -> Matched {
    match d {
        Some(d) => Matched::slot(*d, len),
        None => Matched::NONE,
    }
}

/// Production layout.
#[xdp]
pub fn bench_portcullis(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_ebpf::filter(&ctx)
}

/// Production layout, hit counters on.
#[xdp]
pub fn bench_counted(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_with(&ctx, classify_v4, classify_v6, CountHits::Always)
}

/// LPM tries only.
#[xdp]
pub fn bench_lpm(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_with(
        &ctx,
        |a| found(LPM_V4.get(Key::new(32, a.to_be_bytes())), 32),
        |a, _| found(LPM_V6.get(Key::new(128, *a)), 128),
        CountHits::ByConfig,
    )
}

/// Exact-match hashes only.
#[xdp]
pub fn bench_hash(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_with(
        &ctx,
        // SAFETY: plain-integer values.
        |a| found(unsafe { HASH_V4.get(&a) }, 32),
        // SAFETY: plain-integer values.
        |a, _| found(unsafe { HASH_V6.get(&V6Addr { bytes: *a }) }, 128),
        CountHits::ByConfig,
    )
}

/// Harness cost: probe copy, parse, no lookup.
#[xdp]
pub fn bench_base(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_with(
        &ctx,
        |_| Matched::NONE,
        |_, _| Matched::NONE,
        CountHits::ByConfig,
    )
}

/// The floor: `BPF_PROG_TEST_RUN`'s own per-packet cost.
#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Probe copy alone, no parse or lookup.
#[xdp]
pub fn bench_probe(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Wire generator: source addresses (host order) for `wire_loop`, filled by the harness.
#[map]
static WIRE_SOURCES: Array<u32> = Array::with_max_entries(WIRE_SLOTS, 0);
/// Wire generator settings, filled by the harness: [`WIRE_MASK`], [`WIRE_SUM`],
/// [`WIRE_BUDGET`], [`WIRE_GAP`].
#[map]
static WIRE_CONFIG: Array<u32> = Array::with_max_entries(4, 0);
/// Per-CPU wire generator state: slot 0 the position in `WIRE_SOURCES`, slot 1 the frames
/// sent towards the receiver.
#[map]
static WIRE_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(2, 0);
/// Per-CPU pacing state: slot 0 the time (boot ns) the next burst may leave towards the
/// receiver, slot 1 the frames left in the current burst.
#[map]
static WIRE_PACE: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
/// Paced frames leave in bursts of this many, as a NIC's interrupt moderation hands them
/// over: one wake-up of the receiver per burst, not per frame.
const WIRE_BURST: u64 = 64;
/// Where each frame goes: slot 0 the veth towards the receiver, slot 1 the veth that feeds
/// the frame back into this program.
#[map]
static WIRE_PORTS: DevMap = DevMap::with_max_entries(2, 0);

/// Source slots of the wire generator (enough for a million distinct senders).
const WIRE_SLOTS: u32 = 1 << 21;
/// `WIRE_CONFIG` slot: the source count minus one (a power of two minus one).
const WIRE_MASK: u32 = 0;
/// `WIRE_CONFIG` slot: the template's IPv4 header sum without source and checksum.
const WIRE_SUM: u32 = 1;
/// `WIRE_CONFIG` slot: frames each CPU sends before the loop stops.
const WIRE_BUDGET: u32 = 2;
/// `WIRE_CONFIG` slot: ns between two frames towards the receiver, per CPU (0: unpaced).
const WIRE_GAP: u32 = 3;
/// Offsets in the untagged IPv4 template frame: header checksum, source address.
const WIRE_CSUM: usize = 14 + 10;
/// Offset of the IPv4 identification field, and the value that marks the template.
const WIRE_IDENT: usize = 14 + 4;
const WIRE_MARK: [u8; 2] = *b"PC";
const WIRE_SRC: usize = 14 + 12;

/// The wire benchmark's packet generator: a frame loop. Attached to one end of a veth pair
/// whose other end is the loop's second port, it gives every frame the next source address
/// (with a correct IPv4 header checksum, so `ip_rcv` accepts it) and broadcasts it to both
/// ports: one copy leaves towards the receiver, the other comes back here as a fresh frame.
/// A few seed frames thus become a stream of kernel-built frames (`xdp_frame`s, as a NIC
/// driver would hand over) until each CPU has sent its budget; then the loop drops them.
#[xdp]
pub fn wire_loop(ctx: XdpContext) -> u32 {
    use aya_ebpf::bindings::{
        BPF_F_BROADCAST,
        xdp_action::{XDP_ABORTED, XDP_DROP},
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + WIRE_SRC + 4 > end {
        return XDP_DROP;
    }
    // SAFETY: bounds checked just above.
    let (ethertype, ident) = unsafe {
        (
            *((start + 12) as *const [u8; 2]),
            *((start + WIRE_IDENT) as *const [u8; 2]),
        )
    };
    // Only the harness's template circulates: whatever else reaches the loop's veth (the
    // kernel's own IPv6 multicast reports, say) is dropped, not rewritten and sent on.
    if ethertype != [0x08, 0x00] || ident != WIRE_MARK {
        return XDP_DROP;
    }
    let (Some(mask), Some(sum), Some(budget), Some(gap)) = (
        WIRE_CONFIG.get(WIRE_MASK),
        WIRE_CONFIG.get(WIRE_SUM),
        WIRE_CONFIG.get(WIRE_BUDGET),
        WIRE_CONFIG.get(WIRE_GAP),
    ) else {
        return XDP_ABORTED;
    };
    let (Some(cursor), Some(sent)) = (WIRE_STATE.get_ptr_mut(0), WIRE_STATE.get_ptr_mut(1)) else {
        return XDP_ABORTED;
    };
    // SAFETY: per-CPU slots, only this CPU writes them while we run.
    let (idx, done) = unsafe { (*cursor & *mask, *sent) };
    if done >= *budget {
        return XDP_DROP;
    }
    if *gap != 0 {
        let (Some(next), Some(tokens)) = (WIRE_PACE.get_ptr_mut(0), WIRE_PACE.get_ptr_mut(1))
        else {
            return XDP_ABORTED;
        };
        // SAFETY: per-CPU slots, only this CPU writes them while we run.
        if unsafe { *tokens } == 0 {
            // SAFETY: a helper without arguments.
            let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
            // SAFETY: as above.
            let due = unsafe { *next };
            if now < due {
                // Not yet: the frame goes round the loop once more, and nothing leaves.
                return WIRE_PORTS.redirect(1, 0).unwrap_or(XDP_ABORTED);
            }
            // At most a millisecond of catching up after a pause.
            let from = if due + 1_000_000 < now { now } else { due };
            // SAFETY: as above.
            unsafe {
                *next = from + u64::from(*gap) * WIRE_BURST;
                *tokens = WIRE_BURST;
            }
        }
        // SAFETY: as above.
        unsafe { *tokens -= 1 };
    }
    // SAFETY: as above.
    unsafe {
        *cursor = idx.wrapping_add(1);
        *sent = done + 1;
    }
    let Some(src) = WIRE_SOURCES.get(idx).copied() else {
        return XDP_ABORTED;
    };
    let mut s = *sum + (src >> 16) + (src & 0xffff);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    let csum = !(s as u16);
    // The verifier forgets packet bounds across the map lookups above: check again.
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + WIRE_SRC + 4 > end {
        return XDP_DROP;
    }
    // SAFETY: bounds checked just above; the frame is the IPv4 template.
    unsafe {
        *((start + WIRE_CSUM) as *mut [u8; 2]) = csum.to_be_bytes();
        *((start + WIRE_SRC) as *mut [u8; 4]) = src.to_be_bytes();
    }
    WIRE_PORTS
        .redirect(0, u64::from(BPF_F_BROADCAST))
        .unwrap_or(XDP_ABORTED)
}

/// The cheapest possible receiver, drop everything: the wire generator's own ceiling.
#[xdp]
pub fn wire_drop(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

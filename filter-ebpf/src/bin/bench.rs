//! Benchmark-only XDP programs, run through `BPF_PROG_TEST_RUN` by `cargo xtask bench xdp`.
//!
//! A single repeated frame would let the CPU cache hide lookup cost, so each program first
//! copies the next address of a probe array into the frame's source field, then runs the very
//! same filter code as production with one of three map layouts:
//! - `bench_portcullis`: the production layout (guards, hashes, /16 array, IPv6 trie);
//! - `bench_lpm`: one kernel LPM trie per family (the textbook design);
//! - `bench_hash`: one exact-match hash of host entries (a cost reference, not a filter);
//! - `bench_base`: the probe copy and parse alone (the harness's own cost).
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use filter_ebpf::{Source, filter_with, parse};
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

#[inline(always)]
fn found(d: Option<&Deadlines>) -> Deadlines {
    match d {
        Some(d) => *d,
        None => Deadlines::EMPTY,
    }
}

/// Production layout.
#[xdp]
pub fn bench_portcullis(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_ebpf::filter(&ctx)
}

/// LPM tries only.
#[xdp]
pub fn bench_lpm(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_with(
        &ctx,
        |a| found(LPM_V4.get(Key::new(32, a.to_be_bytes()))),
        |a, _| found(LPM_V6.get(Key::new(128, *a))),
    )
}

/// Exact-match hashes only.
#[xdp]
pub fn bench_hash(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_with(
        &ctx,
        // SAFETY: plain-integer values.
        |a| found(unsafe { HASH_V4.get(&a) }),
        // SAFETY: plain-integer values.
        |a, _| found(unsafe { HASH_V6.get(&V6Addr { bytes: *a }) }),
    )
}

/// Harness cost: probe copy, parse, no lookup.
#[xdp]
pub fn bench_base(ctx: XdpContext) -> u32 {
    next_probe(&ctx);
    filter_with(&ctx, |_| Deadlines::EMPTY, |_, _| Deadlines::EMPTY)
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! `cargo xtask bench xdp`: per-packet cost of the XDP filter through `BPF_PROG_TEST_RUN`.
//!
//! A single repeated packet lets caches hide lookup cost, so the bench programs copy the next
//! of 65 536 distinct probe addresses into the frame before running the production filter
//! code. Lists are shaped like real feeds: 99% random hosts, 1% random prefixes (/12–/28 for
//! IPv4, /32–/64 for IPv6). Hits are drawn from the entries, misses are random addresses no
//! entry covers. In the same run, the same probes go through one kernel LPM trie (`lpm_only`)
//! and one exact-match hash of the hosts (`hash_only`, a cost reference, not a filter); at 10k
//! entries Debian's `xdp-filter` gets the same hosts and both it and Portcullis's production
//! program are measured by one method: 4096 distinct frames, each run 8 times. Every program
//! runs as configured by default, without the per-slot hit counters; `counted` is the
//! production program with them (`hit_counters = true`), so the pair shows what they cost
//! on the hit path (and that the miss path, which never reaches them, is unchanged). The hit
//! probes are 65 536 distinct addresses, more slots than the counter map holds: every hit
//! may evict a key, the worst case; the "hit, 1k sources" case cycles through 1024 of them,
//! whose counters stay in the map.
//!
//! Writes `target/bench/xdp.json` and prints a markdown table.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use portcullis::kernel::reference::Rng;
use portcullis::kernel::sys;
use portcullis::kernel::{AttachMode, Capacity, Filter, LoadOptions, Object, PROGRAM};
use portcullis::model::List;
use portcullis::model::{Cidr, mask32, mask128};
use portcullis_common::{Deadlines, NEVER};
use portcullis_tests::frames;
use portcullis_tests::netns::{NetnsPair, in_netns};
use portcullis_tests::report::{self, Table};

const PROBES: usize = 1 << 16;
/// Distinct sources of the steady "hot" hit case.
const HOT_SOURCES: usize = 1024;
/// The steady hit case's name.
const HOT: &str = "hit, 1k sources";
const REPEAT: u32 = 1 << 18;
const DENY: Deadlines = Deadlines {
    allow_until: 0,
    deny_until: NEVER,
};

struct Row {
    family: &'static str,
    entries: usize,
    case: &'static str,
    portcullis: f64,
    counted: f64,
    lpm: f64,
    hash: f64,
    base: f64,
    empty: f64,
    xdp_filter: Option<f64>,
    portcullis_frames: Option<f64>,
}

impl Row {
    /// A row of [`run_variants`]' timings, without the xdp-filter comparison.
    fn new(
        family: &'static str,
        entries: usize,
        case: &'static str,
        [portcullis, counted, lpm, hash, base, empty]: [f64; 6],
    ) -> Self {
        Self {
            family,
            entries,
            case,
            portcullis,
            counted,
            lpm,
            hash,
            base,
            empty,
            xdp_filter: None,
            portcullis_frames: None,
        }
    }
}

/// Median ns per packet of each program over five rounds of `REPEAT` packets; the programs
/// take turns within a round so that drift on a noisy machine hits them alike.
fn measure_all<const N: usize>(
    f: &mut Filter,
    progs: [&str; N],
    frame: &[u8],
) -> anyhow::Result<[f64; N]> {
    for p in progs {
        f.load_program(p)?;
        sys::test_run(f.program_fd(p)?, frame, REPEAT / 4)?; // warm up
    }
    let mut runs = vec![Vec::new(); N];
    for _ in 0..5 {
        for (i, p) in progs.iter().enumerate() {
            runs[i].push(
                sys::test_run(f.program_fd(p)?, frame, REPEAT)?
                    .per_run
                    .as_nanos() as f64,
            );
        }
    }
    let mut out = [0.0; N];
    for (o, mut r) in out.iter_mut().zip(runs) {
        r.sort_by(f64::total_cmp);
        *o = r[2];
    }
    Ok(out)
}

/// Mean ns per packet over many distinct frames, each run a few times, for two programs
/// taking turns frame by frame: a method that works for any XDP program, ours or another
/// tool's.
fn per_frame(
    a: std::os::fd::BorrowedFd<'_>,
    b: std::os::fd::BorrowedFd<'_>,
    frames: &[Vec<u8>],
) -> anyhow::Result<(f64, f64)> {
    let (mut ta, mut tb) = (0.0, 0.0);
    for fr in frames {
        ta += sys::test_run(a, fr, 8)?.per_run.as_nanos() as f64;
        tb += sys::test_run(b, fr, 8)?.per_run.as_nanos() as f64;
    }
    Ok((ta / frames.len() as f64, tb / frames.len() as f64))
}

/// A random deny list of one family for the benchmark, with sets to tell a hit from a miss.
/// Addresses are held as 128-bit integers (IPv4 in the low 32 bits).
struct AddrList {
    v6: bool,
    entries: Vec<Cidr>,
    hosts: HashSet<u128>,
    /// Network addresses by prefix length.
    prefixes: Vec<HashSet<u128>>,
}

fn rand128(rng: &mut Rng) -> u128 {
    (u128::from(rng.next()) << 64) | u128::from(rng.next())
}

impl AddrList {
    /// The entries as rows of the raw LPM-trie baseline: (prefix length, address bytes,
    /// denied); `N` is 4 or 16, the list's family.
    fn lpm_rows<const N: usize>(&self) -> Vec<(u32, [u8; N], Deadlines)> {
        let row = |len: u8, bytes: &[u8]| {
            let addr = bytes.try_into().expect("one family per list");
            (u32::from(len), addr, DENY)
        };
        self.entries
            .iter()
            .map(|c| match *c {
                Cidr::V4 { addr, len } => row(len, &addr.to_be_bytes()),
                Cidr::V6 { addr, len } => row(len, &addr.to_be_bytes()),
            })
            .collect()
    }

    /// `n` distinct entries: hosts, and every hundredth a prefix (IPv4 /12–/28, IPv6
    /// /32–/64 in global unicast, 2000::/3).
    fn new(v6: bool, n: usize, rng: &mut Rng) -> Self {
        let bits = if v6 { 128 } else { 32 };
        let mut l = Self {
            v6,
            entries: Vec::with_capacity(n),
            hosts: HashSet::new(),
            prefixes: vec![HashSet::new(); bits + 1],
        };
        let mut seen = HashSet::new();
        while l.entries.len() < n {
            let addr = l.draw(rng);
            let len = if l.entries.len() % 100 != 99 {
                bits as u8
            } else if v6 {
                32 + (rng.next() % 33) as u8
            } else {
                12 + (rng.next() % 17) as u8
            };
            let addr = addr & l.mask(len);
            let c = if v6 {
                Cidr::V6 { addr, len }
            } else {
                Cidr::V4 {
                    addr: addr as u32,
                    len,
                }
            };
            if seen.insert(c) {
                if usize::from(len) == bits {
                    l.hosts.insert(addr);
                } else {
                    l.prefixes[usize::from(len)].insert(addr);
                }
                l.entries.push(c);
            }
        }
        l
    }

    /// Any IPv4 address, or an IPv6 global unicast one.
    fn draw(&self, rng: &mut Rng) -> u128 {
        if self.v6 {
            (rand128(rng) & (u128::MAX >> 3)) | (1u128 << 125)
        } else {
            u128::from(rng.next() as u32)
        }
    }

    fn mask(&self, len: u8) -> u128 {
        if self.v6 {
            mask128(len)
        } else {
            u128::from(mask32(len))
        }
    }

    fn covers(&self, a: u128) -> bool {
        self.hosts.contains(&a)
            || (0..self.prefixes.len() as u8 - 1)
                .any(|len| self.prefixes[usize::from(len)].contains(&(a & self.mask(len))))
    }

    /// [`PROBES`] source addresses: covered by an entry (`case` "hit"), the same
    /// [`HOT_SOURCES`] covered addresses over and over ("hit, 1k sources": a steady set of
    /// attackers, whose hit counters stay in the map), or covered by none ("miss").
    fn probes(&self, case: &str, rng: &mut Rng) -> Vec<u128> {
        let hot: Vec<u128> = (0..HOT_SOURCES).map(|_| self.hit(rng)).collect();
        (0..PROBES)
            .map(|i| match case {
                "hit" => self.hit(rng),
                HOT => hot[i % HOT_SOURCES],
                _ => self.miss(rng),
            })
            .collect()
    }

    /// An address inside a random entry.
    fn hit(&self, rng: &mut Rng) -> u128 {
        let (addr, len) = match self.entries[(rng.next() % self.entries.len() as u64) as usize] {
            Cidr::V4 { addr, len } => (u128::from(addr), len),
            Cidr::V6 { addr, len } => (addr, len),
        };
        addr | (self.draw(rng) & !self.mask(len))
    }

    /// An address no entry covers.
    fn miss(&self, rng: &mut Rng) -> u128 {
        loop {
            let a = self.draw(rng);
            if !self.covers(a) {
                return a;
            }
        }
    }
}

fn bench_filter() -> anyhow::Result<Filter> {
    let capacity = Capacity {
        v4_hosts: 2 << 20,
        v4_nets: 1 << 20,
        v6_hosts: 1 << 20,
        v6_prefixes: 1 << 18,
    };
    Ok(Filter::load(&LoadOptions {
        object: Object::Bench,
        capacity,
        ..LoadOptions::default()
    })?)
}

/// Per-packet ns of: production layout, the same with hit counters, LPM only, hash only,
/// harness, empty program.
fn run_variants(f: &mut Filter, frame: &[u8]) -> anyhow::Result<[f64; 6]> {
    measure_all(
        f,
        [
            "bench_portcullis",
            "bench_counted",
            "bench_lpm",
            "bench_hash",
            "bench_base",
            "bench_empty",
        ],
        frame,
    )
}

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("bench xdp") {
        bail!("the XDP benchmark loads BPF programs: run it as root");
    }
    let mut rng = Rng(0x5eed_0f0c_a7c0_1100);
    let mut rows = Vec::new();
    let mut bulk_load_1m_s = None;
    let mut lpm_load_1m_s = None;
    let sizes: Vec<usize> = match std::env::var("PORTCULLIS_BENCH_SIZES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![1, 10_000, 100_000, 1_000_000],
    };
    for &n in &sizes {
        eprintln!("bench: {n} IPv4 entries");
        let list = AddrList::new(false, n, &mut rng);
        let mut f = bench_filter()?;
        let t = Instant::now();
        f.apply_many(list.entries.iter().map(|c| (List::Deny, *c, Some(NEVER))))?;
        let load = t.elapsed().as_secs_f64();
        let lpm = list.lpm_rows::<4>();
        let t = Instant::now();
        f.raw_lpm_insert("LPM_V4", &lpm)?;
        let lpm_load = t.elapsed().as_secs_f64();
        if n == 1_000_000 {
            bulk_load_1m_s = Some(load);
            lpm_load_1m_s = Some(lpm_load);
        }
        let hosts: Vec<u32> = list.hosts.iter().map(|a| *a as u32).collect();
        f.raw_update("HASH_V4", &hosts, &vec![DENY; hosts.len()])?;
        f.raw_update("PROBE_MASK", &[0u32], &[(PROBES - 1) as u32])?;
        let frame = frames::ipv4(Ipv4Addr::new(198, 18, 0, 2), &[], 0);
        let idx: Vec<u32> = (0..PROBES as u32).collect();
        for case in ["hit", HOT, "miss"] {
            let probes: Vec<u32> = list
                .probes(case, &mut rng)
                .into_iter()
                .map(|a| a as u32)
                .collect();
            f.raw_update("PROBES_V4", &idx, &probes)?;
            let timings = run_variants(&mut f, &frame)?;
            let (xdp_filter, portcullis_frames) = if n == 10_000 {
                let (a, b) = against_xdp_filter(&list, &probes)?;
                (Some(a), Some(b))
            } else {
                (None, None)
            };
            rows.push(Row {
                xdp_filter,
                portcullis_frames,
                ..Row::new("ipv4", n, case, timings)
            });
        }
    }
    {
        let n = 100_000;
        eprintln!("bench: {n} IPv6 entries");
        let list = AddrList::new(true, n, &mut rng);
        let mut f = bench_filter()?;
        f.apply_many(list.entries.iter().map(|c| (List::Deny, *c, Some(NEVER))))?;
        f.raw_lpm_insert("LPM_V6", &list.lpm_rows::<16>())?;
        let hosts: Vec<[u8; 16]> = list.hosts.iter().map(|a| a.to_be_bytes()).collect();
        f.raw_update("HASH_V6", &hosts, &vec![DENY; hosts.len()])?;
        f.raw_update("PROBE_MASK", &[0u32], &[(PROBES - 1) as u32])?;
        let frame = frames::ipv6("2001:db8::2".parse::<Ipv6Addr>()?, &[]);
        let idx: Vec<u32> = (0..PROBES as u32).collect();
        for case in ["hit", HOT, "miss"] {
            let probes: Vec<[u8; 16]> = list
                .probes(case, &mut rng)
                .into_iter()
                .map(u128::to_be_bytes)
                .collect();
            f.raw_update("PROBES_V6", &idx, &probes)?;
            let timings = run_variants(&mut f, &frame)?;
            rows.push(Row::new("ipv6", n, case, timings));
        }
    }
    report(&rows, bulk_load_1m_s, lpm_load_1m_s)
}

/// Loads Debian's xdp-filter on a veth in a throwaway namespace, gives it the list's hosts,
/// and measures it and Portcullis's production program by the same per-frame method.
fn against_xdp_filter(list: &AddrList, probes: &[u32]) -> anyhow::Result<(f64, f64)> {
    let pair = NetnsPair::new()?;
    let load = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.server))
        .args([
            "xdp-filter",
            "load",
            &pair.server_if,
            "-m",
            "skb",
            "-f",
            "ipv4,ipv6",
            "-p",
            "allow",
        ])
        .env("LIBXDP_SKIP_DISPATCHER", "1")
        .output()
        .context("running xdp-filter (apt-get install xdp-tools)")?;
    if !load.status.success() {
        bail!(
            "xdp-filter load failed: {}",
            String::from_utf8_lossy(&load.stderr)
        );
    }
    let result = (|| {
        let show = Command::new("ip")
            .args(["-n", &pair.server, "-d", "link", "show", &pair.server_if])
            .output()?;
        let text = String::from_utf8_lossy(&show.stdout);
        let id: u32 = text
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .context("xdp-filter's program id")?;
        let prog = sys::prog_fd_by_id(id)?;
        // xdp-filter's map: per-CPU hash, key = address in network order, value = flags
        // (1 = match source) per CPU, as `xdp-filter ip ADDR -m src` writes it.
        let map = sys::obj_get(std::path::Path::new("/sys/fs/bpf/xdp-filter/filter_ipv4"))?;
        let cpus = sys::possible_cpus()?;
        let keys: Vec<u32> = list
            .hosts
            .iter()
            .map(|a| u32::from_ne_bytes((*a as u32).to_be_bytes()))
            .collect();
        let values: Vec<u64> = vec![1u64; cpus];
        for k in &keys {
            sys::update_elem_raw(map_fd(&map), k, &values)?;
        }
        let frames: Vec<Vec<u8>> = probes
            .iter()
            .take(4096)
            .map(|a| frames::ipv4(Ipv4Addr::from(*a), &[], 0))
            .collect();
        // Sanity: xdp-filter really drops a listed host.
        if let Some(h) = list.hosts.iter().next() {
            let h = Ipv4Addr::from(*h as u32);
            let r = sys::test_run(map_fd(&prog), &frames::ipv4(h, &[], 0), 1)?;
            anyhow::ensure!(
                r.retval == 1,
                "xdp-filter did not drop a listed host (action {})",
                r.retval
            );
        }
        // Attached, like xdp-filter, so both run through the kernel's XDP dispatcher.
        let mut ours = Filter::load(&LoadOptions::default())?;
        ours.apply_many(
            list.hosts
                .iter()
                .map(|a| (List::Deny, Cidr::v4_host(*a as u32), Some(NEVER))),
        )?;
        let iface = pair.client_if.clone();
        in_netns(&pair.client, || ours.attach(&iface, AttachMode::Generic))??;
        let (theirs, mine) = per_frame(map_fd(&prog), ours.program_fd(PROGRAM)?, &frames)?;
        anyhow::Ok((theirs, mine))
    })();
    let _ = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.server))
        .args(["xdp-filter", "unload", &pair.server_if, "--all"])
        .output();
    result
}

fn map_fd(fd: &std::os::fd::OwnedFd) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd as _;
    fd.as_fd()
}

fn report(rows: &[Row], bulk: Option<f64>, lpm_load: Option<f64>) -> anyhow::Result<()> {
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "family": r.family, "entries": r.entries, "case": r.case,
                "portcullis_ns": r.portcullis, "with_hit_counters_ns": r.counted,
                "lpm_only_ns": r.lpm, "hash_only_ns": r.hash,
                "xdp_filter_ns": r.xdp_filter, "portcullis_per_frame_ns": r.portcullis_frames,
                "harness_ns": r.base, "empty_program_ns": r.empty,
            })
        })
        .collect();
    let json = serde_json::json!({
        "rows": json_rows, "bulk_load_1m_s": bulk, "lpm_one_by_one_load_1m_s": lpm_load,
    });
    let mut t = Table::new(&[
        "family",
        ">entries",
        "case",
        ">portcullis",
        ">with hit counters",
        ">lpm_only",
        ">hash_only",
        ">xdp-filter",
        ">harness",
        ">test-run floor",
        ">vs hash (net)",
        ">lpm / portcullis (net)",
    ]);
    let ratio = |x: f64| format!("{x:.2}x");
    for r in rows {
        let net = |x: f64| (x - r.empty).max(0.1);
        let xf = match (r.xdp_filter, r.portcullis_frames) {
            (Some(t), Some(m)) => format!("{} (portcullis {})", report::num(t), report::num(m)),
            _ => "–".into(),
        };
        t.row([
            r.family.to_string(),
            r.entries.to_string(),
            r.case.to_string(),
            report::num(r.portcullis),
            format!(
                "{} ({:+.1})",
                report::num(r.counted),
                r.counted - r.portcullis
            ),
            report::num(r.lpm),
            report::num(r.hash),
            xf,
            report::num(r.base),
            report::num(r.empty),
            format!(
                "{} ({})",
                ratio(r.portcullis / r.hash),
                ratio(net(r.portcullis) / net(r.hash))
            ),
            format!(
                "{} ({})",
                ratio(r.lpm / r.portcullis),
                ratio(net(r.lpm) / net(r.portcullis))
            ),
        ]);
    }
    let mut notes = vec![
        "ns per packet; (net) = minus the empty program's cost, BPF_PROG_TEST_RUN's own floor"
            .to_string(),
    ];
    if let Some(b) = bulk {
        notes.push(format!(
            "bulk load of 1M IPv4 entries: {} (one-by-one into an LPM trie: {})",
            report::secs(b),
            lpm_load.map_or("–".into(), report::secs)
        ));
    }
    report::write("xdp", json, &t, &notes)?;
    Ok(())
}

//! Real frames on a veth pair from many sources, for the wire benchmark and the flood tests.
//!
//! `BPF_PROG_TEST_RUN`'s live-frames mode answers EPERM on this kernel, so the generator is
//! a frame loop instead: the bench object's `wire_loop` XDP program sits on one end of a
//! second veth pair in the client namespace; every frame it gets is given the next source
//! address and broadcast through a device map to the client's veth (towards the server)
//! and back into the loop. A few seed frames written with a packet socket become a stream
//! of kernel-built `xdp_frame`s, as a NIC driver would hand them over, until the loop has
//! sent its budget. Where the loop runs (the CPU the seeds were sent from) the receiver's
//! NAPI runs too, unless the receiver is made threaded ([`Wire::threaded_receiver`]).
//!
//! Addresses stay in the test's namespaces: the server end has the pair's addresses from
//! 198.18.0.0/15, and nothing routes anywhere else.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use portcullis::kernel::filter::ifindex;
use portcullis::kernel::{Filter, LoadOptions, Object};

use crate::frames;
use crate::netns::{NetnsPair, in_netns, run};

/// Source slots the generator holds (`WIRE_SLOTS` in the bench object).
pub const MAX_SOURCES: usize = 1 << 21;
/// `WIRE_CONFIG` slots (see the bench object).
const MASK: u32 = 0;
const SUM: u32 = 1;
const BUDGET: u32 = 2;
const GAP: u32 = 3;
/// Frames in flight in the loop: enough to fill NAPI batches.
const SEEDS: usize = 64;

/// Pins the calling thread (and what it starts later) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    pin_task(0, cpu)
}

/// Pins task `tid` (0: the calling thread) to one CPU.
pub fn pin_task(tid: i32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        rc == 0,
        "pinning task {tid} to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Busy time per CPU from `/proc/stat`, in clock ticks: (system + softirq, softirq).
#[derive(Clone, Debug, Default)]
pub struct CpuTimes(Vec<[u64; 2]>);

impl CpuTimes {
    /// Now.
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self(
            text.lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .map(|l| {
                    let v: Vec<u64> = l
                        .split_whitespace()
                        .skip(1)
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    let at = |i: usize| v.get(i).copied().unwrap_or(0);
                    // user nice system idle iowait irq softirq
                    [at(2) + at(5) + at(6), at(6)]
                })
                .collect(),
        )
    }

    /// Seconds of (kernel, softirq) time on `cpu` since `earlier`.
    pub fn since(&self, earlier: &Self, cpu: usize) -> (f64, f64) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let (a, b) = (
            earlier.0.get(cpu).copied().unwrap_or_default(),
            self.0.get(cpu).copied().unwrap_or_default(),
        );
        (
            b[0].saturating_sub(a[0]) as f64 / hz,
            b[1].saturating_sub(a[1]) as f64 / hz,
        )
    }
}

/// What one burst did.
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    /// Frames the receiver's veth took in (sent minus those refused by a full ring).
    pub frames: u64,
    /// From the seeds to the loop's last frame.
    pub secs: f64,
    /// Kernel time (system + softirq) on the loop's CPU, seconds.
    pub kernel_secs: f64,
    /// Softirq time on the loop's CPU, seconds.
    pub softirq_secs: f64,
}

impl Burst {
    /// Frames per second into the receiver.
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.secs.max(1e-9)
    }

    /// Kernel ns per frame on the loop's CPU (generator and, unthreaded, receiver).
    pub fn kernel_ns(&self) -> f64 {
        self.kernel_secs * 1e9 / self.frames.max(1) as f64
    }
}

/// The generator: a [`NetnsPair`] (the server side receives), the loop's veth pair in the
/// client namespace, and the bench object running `wire_loop`.
pub struct Wire {
    /// The namespaces; the server end receives the frames.
    pub pair: NetnsPair,
    /// The loop veth the seeds go into.
    seed_if: String,
    generator: Filter,
    template: Vec<u8>,
}

impl Wire {
    /// The namespaces, the loop, and the template frame: IPv4/UDP to the server's address
    /// and MAC (so the host stack takes it as its own), marked for the loop.
    pub fn new() -> anyhow::Result<Self> {
        let pair = NetnsPair::new()?;
        let (seed_if, loop_if) = (format!("{}a", pair.client), format!("{}b", pair.client));
        let client = |args: &[&str]| {
            let mut v = vec!["ip", "-n", pair.client.as_str()];
            v.extend_from_slice(args);
            run(&v)
        };
        client(&[
            "link", "add", &seed_if, "type", "veth", "peer", "name", &loop_if,
        ])?;
        client(&["link", "set", &seed_if, "up"])?;
        client(&["link", "set", &loop_if, "up"])?;
        // Spoofed sources have no route back: with reverse-path filtering (Ubuntu's and
        // systemd's default, which a new namespace inherits) the stack would drop them before
        // UDP, and the benchmark's check that passed frames reach the host would fail.
        for conf in ["all", "default", pair.server_if.as_str()] {
            run(&[
                "ip",
                "netns",
                "exec",
                &pair.server,
                "sh",
                "-c",
                &format!("echo 0 > /proc/sys/net/ipv4/conf/{conf}/rp_filter"),
            ])?;
        }
        let mut generator = Filter::load(&LoadOptions {
            object: Object::Bench,
            ..LoadOptions::default()
        })?;
        let mut template = frames::ipv4(Ipv4Addr::UNSPECIFIED, &[], 0);
        template[0..6].copy_from_slice(&mac(&pair.server, &pair.server_if)?);
        template[18..20].copy_from_slice(b"PC");
        let sum: u32 = template[14..34]
            .chunks(2)
            .enumerate()
            // Leave out the checksum (word 5) and the source address (words 6 and 7).
            .filter(|(i, _)| !(5..=7).contains(i))
            .map(|(_, w)| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        generator.raw_update("WIRE_CONFIG", &[SUM, BUDGET, GAP], &[sum, 0, 0])?;
        let (towards_server, loop_back) = (pair.client_if.clone(), seed_if.clone());
        let loop_if2 = loop_if.clone();
        // Device map entries and the attachment resolve names in the caller's namespace.
        in_netns(&pair.client, || -> anyhow::Result<()> {
            generator.attach_bench("wire_loop", &loop_if2)?;
            for (slot, dev) in [(0u32, &towards_server), (1, &loop_back)] {
                let index = ifindex(dev).with_context(|| format!("no interface {dev}"))?;
                generator.raw_set("WIRE_PORTS", &slot, &[index, 0u32])?;
            }
            Ok(())
        })??;
        Ok(Self {
            pair,
            seed_if,
            generator,
            template,
        })
    }

    /// The source addresses the frames cycle through; their count must be a power of two.
    pub fn set_sources(&mut self, sources: &[u32]) -> anyhow::Result<()> {
        ensure!(
            sources.len().is_power_of_two() && sources.len() <= MAX_SOURCES,
            "{} sources: need a power of two up to {MAX_SOURCES}",
            sources.len()
        );
        let idx: Vec<u32> = (0..sources.len() as u32).collect();
        self.generator.raw_update("WIRE_SOURCES", &idx, sources)?;
        self.generator
            .raw_update("WIRE_CONFIG", &[MASK], &[sources.len() as u32 - 1])?;
        Ok(())
    }

    /// Frames the loop has sent, all CPUs.
    fn sent(&self) -> anyhow::Result<u64> {
        Ok(self
            .generator
            .raw_per_cpu("WIRE_STATE", 1)?
            .iter()
            .map(|v| u64::from(*v))
            .sum())
    }

    /// Frames the server's veth took in so far (the client end's successful transmits).
    pub fn delivered(&self) -> anyhow::Result<u64> {
        veth_stat(
            &self.pair.client,
            &self.pair.client_if,
            "tx_queue_",
            "_xdp_xmit",
        )
    }

    /// Frames an XDP program on the server's veth dropped so far, as the kernel's veth
    /// driver counts them (not the program's own counters).
    pub fn server_xdp_drops(&self) -> anyhow::Result<u64> {
        veth_stat(
            &self.pair.server,
            &self.pair.server_if,
            "rx_queue_",
            "_xdp_drops",
        )
    }

    /// Arms the loop for `frames` more frames per CPU, at most `pps` a second (0: as fast
    /// as it goes), and seeds it from `cpu`.
    fn seed(&mut self, frames: u32, pps: u32, cpu: usize) -> anyhow::Result<()> {
        self.generator.raw_per_cpu_zero("WIRE_STATE", 1)?;
        let gap = if pps == 0 {
            0
        } else {
            1_000_000_000 / pps.max(1)
        };
        self.generator
            .raw_update("WIRE_CONFIG", &[BUDGET, GAP], &[frames, gap])?;
        let (ns, dev, frame) = (&self.pair.client, &self.seed_if, &self.template);
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<()> {
                pin_to_cpu(cpu)?;
                in_netns(ns, || send_raw(dev, frame, SEEDS))??;
                Ok(())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("seeding thread panicked"))?
        })
    }

    /// Sends `frames` frames with the loop (and, unthreaded, the receiver) on `cpu`, and
    /// waits until the loop has sent them all.
    pub fn burst(&mut self, frames: u32, cpu: usize) -> anyhow::Result<Burst> {
        let delivered = self.delivered()?;
        let times = CpuTimes::now();
        let start = Instant::now();
        self.seed(frames, 0, cpu)?;
        let (mut last, mut last_change) = (0, Instant::now());
        let end = loop {
            std::thread::sleep(Duration::from_millis(1));
            let sent = self.sent()?;
            if sent >= u64::from(frames) {
                break Instant::now();
            }
            if sent != last {
                (last, last_change) = (sent, Instant::now());
            } else if last_change.elapsed() > Duration::from_millis(500) {
                bail!(
                    "the generator's loop died after {sent} of {frames} frames (seed frames lost?)"
                );
            }
        };
        let (kernel_secs, softirq_secs) = CpuTimes::now().since(&times, cpu);
        // The last frames may still sit in the receiver's ring for a moment.
        std::thread::sleep(Duration::from_millis(20));
        Ok(Burst {
            frames: self.delivered()? - delivered,
            secs: (end - start).as_secs_f64(),
            kernel_secs,
            softirq_secs,
        })
    }

    /// Starts a flood of `pps` frames a second (0: as fast as the loop goes) from `cpu`
    /// that lasts until [`Wire::stop`], or at most about `secs` seconds (its budget).
    pub fn flood(&mut self, pps: u32, secs: u32, cpu: usize) -> anyhow::Result<()> {
        let rate = if pps == 0 { 5_000_000 } else { pps };
        let budget = u64::from(rate) * u64::from(secs);
        self.seed(u32::try_from(budget).unwrap_or(u32::MAX), pps, cpu)
    }

    /// Stops the loop: every frame still in it is dropped on its next pass.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.generator
            .raw_update("WIRE_CONFIG", &[BUDGET], &[0u32])?;
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    }

    /// Gives both ends of the pair two queues and sends what the client end transmits from
    /// CPU `cpu` through queue 1 (XPS): the generator's frames (from the other CPU) fill
    /// queue 0's ring, the legitimate client's packets arrive on queue 1, as flows spread
    /// over a NIC's queues.
    pub fn separate_queues(&self, cpu: usize) -> anyhow::Result<()> {
        for (ns, dev) in [
            (&self.pair.server, &self.pair.server_if),
            (&self.pair.client, &self.pair.client_if),
        ] {
            run(&[
                "ip", "netns", "exec", ns, "ethtool", "-L", dev, "rx", "2", "tx", "2",
            ])?;
        }
        let other = if cpu == 0 { 1 } else { 0 };
        for (queue, cpu) in [(0, other), (1, cpu)] {
            run(&[
                "ip",
                "netns",
                "exec",
                &self.pair.client,
                "sh",
                "-c",
                &format!(
                    "echo {:x} > /sys/class/net/{}/queues/tx-{queue}/xps_cpus",
                    1u32 << cpu,
                    self.pair.client_if
                ),
            ])?;
        }
        Ok(())
    }

    /// Makes the server end's NAPI run in kernel threads pinned to `cpu` at real-time
    /// priority, as softirq work preempts tasks: the receiving work then lands on `cpu`
    /// instead of the generator's CPU.
    pub fn threaded_receiver(&self, cpu: usize) -> anyhow::Result<()> {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.pair.server,
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{}/threaded", self.pair.server_if),
        ])?;
        let prefix: String = format!("napi/{}", self.pair.server_if)
            .chars()
            .take(15)
            .collect();
        let mut found = 0;
        for entry in std::fs::read_dir("/proc")? {
            let entry = entry?;
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(&prefix) {
                continue;
            }
            pin_task(pid, cpu)?;
            let param = libc::sched_param { sched_priority: 50 };
            // SAFETY: plain syscall on a pid we just found, with a valid parameter.
            let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
            ensure!(
                rc == 0,
                "making {} real-time: {}",
                comm.trim(),
                std::io::Error::last_os_error()
            );
            found += 1;
        }
        ensure!(found > 0, "no NAPI thread for {}", self.pair.server_if);
        Ok(())
    }
}

/// The sum of a veth's per-queue `ethtool -S` counters `{prefix}N{suffix}`.
fn veth_stat(ns: &str, dev: &str, prefix: &str, suffix: &str) -> anyhow::Result<u64> {
    let out = run(&["ip", "netns", "exec", ns, "ethtool", "-S", dev])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(suffix))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum())
}

/// The MAC address of `dev` in namespace `ns`.
fn mac(ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = run(&["ip", "-n", ns, "link", "show", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .with_context(|| format!("no MAC address for {dev}: {text}"))?;
    let mut mac = [0u8; 6];
    let mut parts = hex.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next().context("short MAC")?, 16)?;
    }
    Ok(mac)
}

/// Writes `frame` `count` times out of `dev` (calling thread's namespace), raw.
fn send_raw(dev: &str, frame: &[u8], count: usize) -> anyhow::Result<()> {
    let index = ifindex(dev).with_context(|| format!("no interface {dev}"))?;
    // SAFETY: plain socket calls on a descriptor we own and close; the address is a valid
    // sockaddr_ll of the size we pass.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        ensure!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        let mut result = Ok(());
        for _ in 0..count {
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent < 0 {
                result = Err(anyhow::anyhow!(
                    "sending a seed frame: {}",
                    std::io::Error::last_os_error()
                ));
                break;
            }
        }
        libc::close(fd);
        result
    }
}

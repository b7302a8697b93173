//! `portcullis doctor`: whether this machine can run the filter, before anything is loaded.
//! Each check is read-only and says, when it fails, what to do about it.

use serde::Serialize;

use crate::kernel::xdp_features::{NativeXdp, native_xdp};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works, but not as well as it could (e.g. generic XDP).
    Warn,
    /// The agent will not run, or will not enforce, until this is fixed.
    Fail,
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked (`kernel`, `btf`, `bpffs`, `capabilities`, `iface NAME`).
    pub check: String,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found.
    pub found: String,
    /// What to do about it (empty when fine).
    pub fix: String,
}

impl Check {
    fn new(check: impl Into<String>, outcome: Outcome, found: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            outcome,
            found: found.into(),
            fix: String::new(),
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }
}

/// The oldest kernel the agent runs on: XDP through BPF links with `BPF_LINK_DETACH`, ring
/// buffers, LPM tries.
const MIN_KERNEL: (u32, u32) = (5, 9);

/// Every check, for `ifaces` (in the calling thread's network namespace), with the agent's
/// pins in `pin_dir` (to tell its own XDP program from another one).
pub fn run(ifaces: &[String], pin_dir: &std::path::Path) -> Vec<Check> {
    let mut out = vec![
        kernel(&release()),
        btf(),
        bpffs(),
        capabilities(effective_caps()),
    ];
    for i in ifaces {
        let c = iface(i);
        let present = c.outcome != Outcome::Fail;
        out.push(c);
        if present {
            out.extend(occupied(i, pin_dir));
        }
    }
    out
}

/// Whether an XDP program is on `name` already, and whose: Portcullis's own (its pinned
/// link) is fine; another one stops the attach, since Portcullis does not chain.
fn occupied(name: &str, pin_dir: &std::path::Path) -> Option<Check> {
    let index = crate::kernel::ifindex(name)?;
    let a = crate::kernel::netlink::xdp_attachment(index).ok()?;
    if a.prog_id == 0 {
        return None;
    }
    let check = format!("xdp {name}");
    match crate::kernel::link_attached(pin_dir, name) {
        Ok(true) => {
            return Some(Check::new(
                check,
                Outcome::Ok,
                format!("Portcullis attached (program {})", a.prog_id),
            ));
        }
        Ok(false) => {}
        Err(e) => {
            return Some(
                Check::new(
                    check,
                    Outcome::Warn,
                    format!(
                        "an XDP program (id {}) is attached; cannot tell whose: {e}",
                        a.prog_id
                    ),
                )
                .fix("run doctor as root to read the pins"),
            );
        }
    }
    Some(
        Check::new(
            check,
            Outcome::Fail,
            format!(
                "another XDP program (id {}) is attached, not pinned in {}",
                a.prog_id,
                pin_dir.display()
            ),
        )
        .fix(format!(
            "Portcullis does not chain behind another program: find it (`bpftool net show dev {name}`) and detach it (`ip link set dev {name} xdp off`, or its owner's tool), or check the config's pin_dir"
        )),
    )
}

/// `uname -r`.
fn release() -> String {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates its fields.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `major.minor` of a kernel release string (`6.18.0-1-amd64`).
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn kernel(release: &str) -> Check {
    match version(release) {
        Some(v) if v >= MIN_KERNEL => Check::new("kernel", Outcome::Ok, format!("Linux {release}")),
        Some(_) => Check::new("kernel", Outcome::Fail, format!("Linux {release}")).fix(format!(
            "upgrade to Linux {}.{} or later (XDP links with detach, ring buffers, LPM tries); Debian 11's 5.10 or newer will do",
            MIN_KERNEL.0, MIN_KERNEL.1
        )),
        None => Check::new("kernel", Outcome::Warn, format!("unreadable release {release:?}"))
            .fix("check `uname -r`; Portcullis needs Linux 5.9 or later"),
    }
}

fn btf() -> Check {
    let path = "/sys/kernel/btf/vmlinux";
    if std::path::Path::new(path).exists() {
        Check::new("btf", Outcome::Ok, path)
    } else {
        Check::new("btf", Outcome::Warn, format!("no {path}")).fix(
            "the filter loads without it, but `bpftool map dump` cannot show typed values: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's are)",
        )
    }
}

fn bpffs() -> Check {
    if crate::kernel::bpffs_mounted() {
        Check::new("bpffs", Outcome::Ok, "mounted at /sys/fs/bpf")
    } else {
        Check::new("bpffs", Outcome::Warn, "not mounted at /sys/fs/bpf").fix(
            "mount it at boot (systemd's sys-fs-bpf.mount does, or an fstab line `bpf /sys/fs/bpf bpf defaults 0 0`); now: `mount -t bpf bpf /sys/fs/bpf`. The shipped unit cannot mount it (no CAP_SYS_ADMIN), and without it the maps and links cannot outlive the agent",
        )
    }
}

/// The effective capability set (`CapEff` of /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// What loading, pinning and attaching need (linux/capability.h numbers).
const NEEDED: [(u32, &str); 3] = [
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
];
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

fn capabilities(effective: u64) -> Check {
    let has = |bit: u32| effective & (1 << bit) != 0;
    let missing: Vec<&str> = NEEDED
        .iter()
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (and on kernels before 5.8 is
        // the only way).
        .filter(|(bit, _)| {
            let covered = has(*bit) || (*bit != CAP_NET_ADMIN && has(CAP_SYS_ADMIN));
            !covered
        })
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Check::new(
            "capabilities",
            Outcome::Ok,
            "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN",
        )
    } else {
        Check::new("capabilities", Outcome::Fail, format!("missing {}", missing.join(", "))).fix(
            "run the agent as root, or with CAP_BPF CAP_PERFMON CAP_NET_ADMIN (the shipped systemd unit grants them); run `doctor` the same way to check",
        )
    }
}

/// The interface's driver (`/sys/class/net/NAME/device/driver`), or what kind of virtual
/// device it is.
fn driver(name: &str) -> String {
    let base = std::path::Path::new("/sys/class/net").join(name);
    std::fs::read_link(base.join("device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .or_else(|| {
            let uevent = std::fs::read_to_string(base.join("uevent")).ok()?;
            uevent
                .lines()
                .find_map(|l| l.strip_prefix("DEVTYPE="))
                .map(|t| format!("virtual {t}"))
        })
        .unwrap_or_else(|| "virtual".into())
}

fn iface(name: &str) -> Check {
    let check = format!("iface {name}");
    let Some(index) = crate::kernel::ifindex(name) else {
        return Check::new(check, Outcome::Fail, "no such interface")
            .fix("check the name (`ip link`) and the config's `interfaces`");
    };
    let driver = driver(name);
    match native_xdp(index) {
        Ok(NativeXdp::Supported(_)) => {
            Check::new(check, Outcome::Ok, format!("native XDP (driver {driver})"))
        }
        Ok(NativeXdp::Unsupported) => Check::new(
            check,
            Outcome::Warn,
            format!("driver {driver} has no native XDP: generic mode only"),
        )
        .fix("the filter still drops, but after the kernel built a packet buffer (several times the cost): use a NIC whose driver runs XDP, or set xdp_mode = \"generic\" to say you mean it"),
        Ok(NativeXdp::Unknown) => Check::new(
            check,
            Outcome::Warn,
            format!("driver {driver}: this kernel does not report XDP features (before 6.3)"),
        )
        .fix("the agent tries native XDP and falls back to generic; `portcullis status` shows which it got"),
        Err(e) => Check::new(check, Outcome::Warn, format!("could not ask the kernel: {e}"))
            .fix("`portcullis status` shows the mode the agent got once it runs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_before_5_9_fail_with_advice_and_release_strings_parse() {
        assert_eq!(version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(version("5.10.0"), Some((5, 10)));
        assert_eq!(version("garbage"), None);
        assert_eq!(kernel("5.10.0-28-amd64").outcome, Outcome::Ok);
        let old = kernel("4.19.0-27-amd64");
        assert_eq!(old.outcome, Outcome::Fail);
        assert!(old.fix.contains("5.9"), "{old:?}");
    }

    #[test]
    fn missing_capabilities_are_named_and_sys_admin_stands_in_for_bpf() {
        let none = capabilities(0);
        assert_eq!(none.outcome, Outcome::Fail);
        assert_eq!(none.found, "missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN");
        assert!(none.fix.contains("root"));
        let admin_only = capabilities(1 << CAP_SYS_ADMIN);
        assert_eq!(admin_only.found, "missing CAP_NET_ADMIN");
        assert_eq!(
            capabilities((1 << 39) | (1 << 38) | (1 << 12)).outcome,
            Outcome::Ok
        );
    }

    #[test]
    fn an_unknown_interface_fails_and_says_where_to_look() {
        let c = iface("no-such-if0");
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.fix.contains("ip link"));
    }
}

//! `cargo xtask setup`: make a fresh Debian machine with rustup's stable and nightly
//! toolchains able to build and test Portcullis.
//!
//! 1. nightly `rust-src` (the eBPF crate builds `core` itself);
//! 2. `bpf-linker`, built against nightly's own LLVM shared library (no system LLVM of the
//!    same major exists), cached under `~/.cache/portcullis` and linked into `~/.cargo/bin`
//!    so a plain `cargo build` finds it;
//! 3. the Debian packages the tests and demo use.
//!
//! Each step checks first, so a second run takes about a second.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// bpf-linker release known to build against nightly's LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages: netns/veth and traffic tools (ethtool reads the veth counters the flood
/// test checks), xdp-tools for the benchmark comparison.
/// curl and openssl for the L7 checker's tests (real TLS client, throwaway certificates).
/// g++ for libFuzzer, which the fuzz targets link (`cargo xtask fuzz`, and `test` briefly).
/// python3-websockets: a real WebSocket client and server for the WebSocket API tests.
/// nginx: the real gateway of the sideband test (`auth_request`), and the benchmarks' proxy.
/// redis-server: the fleet's Redis, started and stopped by the fleet tests themselves.
const DEBIAN_PACKAGES: &[&str] = &[
    "nginx",
    "redis-server",
    "g++",
    "iproute2",
    "iputils-ping",
    "ethtool",
    "xdp-tools",
    "bpftool",
    "netcat-openbsd",
    "curl",
    "openssl",
    "python3-websockets",
];

/// What later steps need from setup.
pub struct Env {
    /// `PATH` with the cached tools first.
    pub path: OsString,
}

/// Where the built tools are cached: `$XDG_CACHE_HOME/portcullis`, else
/// `~/.cache/portcullis`.
fn cache_dir() -> anyhow::Result<PathBuf> {
    Ok(match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    }
    .join("portcullis"))
}

/// Runs every step.
pub fn run() -> anyhow::Result<Env> {
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let cache = cache_dir()?;
    let tools = cache.join("tools");
    rust_src()?;
    lint_components()?;
    bpf_linker(&cache, &tools)?;
    debian_packages()?;
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cargo"))
        .join("bin");
    link_into(&tools.join("bin/bpf-linker"), &cargo_bin)?;
    let mut paths = vec![tools.join("bin"), cargo_bin];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(Env {
        path: std::env::join_paths(paths)?,
    })
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// rustfmt and clippy for `cargo xtask lint` (in rustup's default profile, but not minimal).
fn lint_components() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    for c in ["rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(c)) {
            eprintln!("setup: adding {c} to the stable toolchain");
            status(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("rustup's nightly toolchain is needed (rustup toolchain install nightly)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The real nightly `libLLVM.so.*-rust-*-nightly` (the `libLLVM-NN*.so` beside it is a
/// linker script that llvm-sys cannot use).
fn nightly_llvm() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}: is the nightly toolchain complete?",
        lib.display()
    )
}

fn bpf_linker(cache: &Path, tools: &Path) -> anyhow::Result<()> {
    let llvm = nightly_llvm()?;
    let stamp = cache.join("bpf-linker.stamp");
    let want = format!("{BPF_LINKER_VERSION} {}", llvm.display());
    let have = std::fs::read_to_string(&stamp).unwrap_or_default();
    if have.trim() == want && tools.join("bin/bpf-linker").is_file() {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        llvm.display()
    );
    let prefix = cache.join("llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let name = llvm.file_name().context("LLVM library has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    status(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(tools)
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

fn link_into(tool: &Path, dir: &Path) -> anyhow::Result<()> {
    let link = dir.join(tool.file_name().context("tool has no name")?);
    if std::fs::read_link(&link).is_ok_and(|t| t == tool) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(tool, &link).with_context(|| format!("linking {}", link.display()))
}

/// cargo-fuzz release `cargo xtask fuzz` (and `test`, briefly) runs the fuzz targets with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs cargo-fuzz (cached like bpf-linker); returns its path.
pub fn cargo_fuzz() -> anyhow::Result<PathBuf> {
    let tools = cache_dir()?.join("fuzz-tools");
    let bin = tools.join("bin/cargo-fuzz");
    let stamp = tools.join("version");
    if bin.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|v| v == CARGO_FUZZ_VERSION) {
        return Ok(bin);
    }
    eprintln!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (about two minutes)");
    status(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--force", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(&tools)
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    std::fs::write(&stamp, CARGO_FUZZ_VERSION)?;
    Ok(bin)
}

/// Packages only the checker benchmark needs: nginx as the comparison proxy, wrk as load.
pub fn bench_packages() -> anyhow::Result<()> {
    install(&["nginx", "wrk"])
}

/// What `cargo xtask bench wire` compares Portcullis with, and drives it with.
pub fn wire_packages() -> anyhow::Result<()> {
    install(&[
        "nftables",
        "ipset",
        "iptables",
        "ethtool",
        "xdp-tools",
        "wrk",
    ])
}

/// What `cargo xtask deb` and the package test use besides dpkg: lintian, strip (binutils),
/// and systemd-analyze (systemd) to verify the installed unit.
pub fn package_packages() -> anyhow::Result<()> {
    install(&["lintian", "binutils", "systemd"])
}

fn debian_packages() -> anyhow::Result<()> {
    install(DEBIAN_PACKAGES)
}

fn install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!(
            "missing Debian packages {missing:?}: run `sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {missing:?}");
    status(Command::new("apt-get").arg("update").arg("-qq"))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

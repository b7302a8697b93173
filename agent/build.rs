//! Builds the eBPF programs (`filter-ebpf`) with nightly for `bpfel-unknown-none`, as
//! aya-template does, so a plain `cargo build` yields an agent with its XDP object embedded.
//! `cargo xtask setup` installs what this needs (nightly `rust-src`, `bpf-linker`).

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../common/src");
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` once (it installs bpf-linker \
             and nightly rust-src), then build again"
        ));
    }
    let package = aya_build::Package {
        name: "filter-ebpf",
        root_dir: "../filter-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the eBPF programs in filter-ebpf")
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}

//! `cargo xtask fuzz [--seconds N]`: every cargo-fuzz target in `fuzz/` for N seconds, from
//! its seed corpus in `fuzz/seeds/<target>` (read only: what libFuzzer finds goes to
//! `target/fuzz-corpus/<target>`, crashes to `fuzz/artifacts/<target>`). `cargo xtask test`
//! runs each for [`TEST_SECONDS`].

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::setup;

/// How long `cargo xtask test` fuzzes each target.
pub const TEST_SECONDS: u64 = 10;

/// The targets, one per parser of outside input (see `fuzz/fuzz_targets/*.rs`).
const TARGETS: &[&str] = &[
    "abs_attacklist",
    "api_file",
    "import_lines",
    "control_request",
    "headers",
    "path",
    "cidr",
    "table_sequences",
];

/// Builds every target once, then runs each for `seconds`; fails when any crashed, broke an
/// assertion or timed out, naming each such target and the input libFuzzer saved.
pub fn run(env: &setup::Env, seconds: u64) -> anyhow::Result<()> {
    let cargo_fuzz = setup::cargo_fuzz()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = root.join("target/fuzz");
    let mut path = vec![
        cargo_fuzz
            .parent()
            .context("cargo-fuzz path")?
            .to_path_buf(),
    ];
    path.extend(std::env::split_paths(&env.path));
    let path = std::env::join_paths(path)?;
    // Release with debug assertions and overflow checks; no sanitizer (safe Rust on these
    // paths), so each run gets millions of inputs rather than thousands.
    let common = ["-s", "none", "--debug-assertions", "--target-dir"];
    let fuzz = |args: &[&str]| {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .env("PATH", &path)
            .env_remove("CARGO_TARGET_DIR")
            .args(["+nightly", "fuzz"])
            .args(args);
        cmd
    };
    let target_dir = target_dir.to_str().context("utf-8 target dir")?;
    let mut build = fuzz(&["build"]);
    build.args(common).arg(target_dir);
    let st = build.status().context("running cargo fuzz build")?;
    if !st.success() {
        bail!("cargo fuzz build failed ({st})");
    }
    let (mut totals, mut failed) = (Vec::new(), Vec::new());
    for t in TARGETS {
        let corpus = root.join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let seeds = root.join("fuzz/seeds").join(t);
        let mut run = fuzz(&["run"]);
        run.args(common)
            .arg(target_dir)
            .arg(t)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]);
        eprintln!("fuzz: {t} for {seconds} s");
        let out = run.output().context("running cargo fuzz run")?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
            failed.push(format!(
                "{t} ({}): its input is saved under fuzz/artifacts/{t}",
                out.status
            ));
            continue;
        }
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map_or("?".to_owned(), |n| n.trim().to_owned());
        totals.push(format!("{t}: {runs} inputs in {seconds} s, no failure"));
    }
    println!("\n== cargo xtask fuzz ==");
    for t in &totals {
        println!("{t}");
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join("; "));
    }
    Ok(())
}

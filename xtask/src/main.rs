//! `cargo xtask`: the project's own set-up and workflow verbs.
//!
//! - `setup`: installs what builds and tests need (idempotent, seconds when done);
//! - `test`: every test, privileged ones single-threaded;
//! - `demo`: the main job: a denied client dropped by XDP in throwaway namespaces;
//! - `deb`: the Debian package, `target/debian/portcullis_VERSION_ARCH.deb`, lintian-checked;
//! - `bench xdp|agent|checker|abs|restart|sideband|fleet|wire`: a benchmark (writes `target/bench/<name>.json`), then
//!   `readme`;
//! - `fuzz [--seconds N]`: every cargo-fuzz target for N seconds (default 60);
//! - `readme`: puts the benchmark tables from `target/bench/*.json` into README.md.
//!
//! Every verb runs `setup` first.

mod deb;
mod fuzz;
mod readme;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verb = args.first().map(String::as_str).unwrap_or("help");
    let rest = args.get(1..).unwrap_or_default();
    match verb {
        "setup" => setup::run().map(drop),
        "build" => {
            let env = setup::run()?;
            // The agent alone: built with the workspace, feature unification would give it
            // the test kit (the reference model and the benchmark eBPF object).
            cargo(
                &env,
                &["build", "--release", "-p", "portcullis-agent", "--bins"],
            )
        }
        "test" => {
            let env = setup::run()?;
            lint(&env)?;
            test(&env, rest)
        }
        "lint" => {
            let env = setup::run()?;
            lint(&env)
        }
        "deb" => {
            let env = setup::run()?;
            setup::package_packages()?;
            deb::build(&env).map(drop)
        }
        "demo" => {
            let env = setup::run()?;
            cargo(
                &env,
                &[
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    "portcullis-agent",
                    "--bins",
                ],
            )?;
            cargo(
                &env,
                &[
                    "run",
                    "--release",
                    "--quiet",
                    "-p",
                    "portcullis-tests",
                    "--bin",
                    "demo",
                ],
            )
        }
        "bench" => {
            let env = setup::run()?;
            let name = rest.first().map_or("xdp", String::as_str);
            if ![
                "xdp", "agent", "checker", "abs", "restart", "sideband", "fleet", "wire",
            ]
            .contains(&name)
            {
                bail!(
                    "unknown benchmark {name:?}: try `cargo xtask bench xdp|agent|checker|abs|restart|sideband|fleet|wire`"
                );
            }
            if name == "checker" || name == "restart" || name == "sideband" {
                setup::bench_packages()?;
            }
            if name == "wire" {
                setup::wire_packages()?;
            }
            if name != "xdp" {
                // These drive the real binary.
                cargo(
                    &env,
                    &["build", "--release", "-p", "portcullis-agent", "--bins"],
                )?;
            }
            cargo(&env, &["bench", "-p", "portcullis-tests", "--bench", name])?;
            update_readme()
        }
        "fuzz" => {
            let env = setup::run()?;
            let seconds = match rest {
                [] => 60,
                [flag, n] if flag == "--seconds" => n
                    .parse()
                    .with_context(|| format!("--seconds takes a whole number, not {n:?}"))?,
                _ => bail!("usage: cargo xtask fuzz [--seconds N]"),
            };
            fuzz::run(&env, seconds)
        }
        "readme" => update_readme(),
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <setup|build|lint|test|demo|deb|fuzz [--seconds N]|bench xdp|agent|checker|abs|restart|sideband|fleet|wire|readme>"
            );
            Ok(())
        }
        other => bail!("unknown verb {other:?}: try `cargo xtask help`"),
    }
}

/// Regenerates the README's benchmark tables from the reports in `target/bench`.
fn update_readme() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let done = readme::update(&root)?;
    println!("README.md: benchmark tables updated from target/bench: {done:?}");
    Ok(())
}

/// One lint regime: rustfmt everywhere, clippy with warnings as errors on the host crates
/// (the eBPF crate is checked by its own build; feature unification would otherwise build its
/// panic handler twice).
fn lint(env: &setup::Env) -> anyhow::Result<()> {
    cargo(env, &["fmt", "--all", "--check"])?;
    cargo(
        env,
        &[
            "clippy",
            "-p",
            "portcullis-agent",
            "-p",
            "portcullis-common",
            "-p",
            "portcullis-tests",
            "-p",
            "xtask",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )
}

/// Unit tests in parallel, then the privileged integration tests one at a time (they share
/// the kernel: namespaces, pins, XDP attachments). Both run to the end (`--no-fail-fast`);
/// the summary names every failed step and every skipped test, and skips fail the run when
/// `PORTCULLIS_REQUIRE_PRIVILEGED` is set (CI).
fn test(env: &setup::Env, extra: &[String]) -> anyhow::Result<()> {
    // The workspace's target directory, wherever the command was started from.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).context("creating the target directory")?;
    let skip_log = target.join("test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let mut failed = Vec::new();
    let mut unit = vec![
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "portcullis-tests",
        "--exclude",
        "filter-ebpf",
    ];
    unit.extend(extra.iter().map(String::as_str));
    if let Err(e) = cargo(env, &unit) {
        failed.push(format!("unit tests: {e:#}"));
    }
    // Each fuzz target briefly, from its seed corpus: a crash or a reference mismatch fails
    // the run like a failed test.
    if let Err(e) = fuzz::run(env, fuzz::TEST_SECONDS) {
        failed.push(format!("fuzz targets: {e:#}"));
    }
    // The package test installs what `cargo xtask deb` builds.
    setup::package_packages()?;
    let deb = match deb::build(env) {
        Ok(deb) => Some(deb),
        Err(e) => {
            failed.push(format!("cargo xtask deb: {e:#}"));
            None
        }
    };
    // The integration tests drive the real binary.
    cargo(env, &["build", "-p", "portcullis-agent", "--bins"])?;
    let mut privileged = vec!["test", "--no-fail-fast", "-p", "portcullis-tests"];
    privileged.extend(extra.iter().map(String::as_str));
    privileged.extend(["--", "--test-threads=1"]);
    let run = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&privileged)
        .env("PATH", &env.path)
        .env("PORTCULLIS_SKIP_LOG", &skip_log)
        .envs(deb.iter().map(|d| ("PORTCULLIS_DEB", d)))
        .status()
        .context("running the integration tests")?;
    if !run.success() {
        failed.push(format!(
            "integration tests ({run}): the failing test binaries are listed just above"
        ));
    }
    let skipped = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skipped: Vec<&str> = skipped.lines().collect();
    println!("\n== cargo xtask test summary ==");
    if skipped.is_empty() {
        println!("skipped: none");
    } else {
        println!("skipped: {} test(s):", skipped.len());
        for s in &skipped {
            println!("  SKIPPED {s}");
        }
        let forbidden =
            std::env::var("PORTCULLIS_REQUIRE_PRIVILEGED").is_ok_and(|v| !v.is_empty() && v != "0");
        if forbidden {
            failed.push(format!(
                "{} test(s) skipped and PORTCULLIS_REQUIRE_PRIVILEGED forbids skips",
                skipped.len()
            ));
        }
    }
    if failed.is_empty() {
        if skipped.is_empty() {
            println!("result: every test ran and passed");
        } else {
            println!(
                "result: passed, {} skipped (not run; see above)",
                skipped.len()
            );
        }
        return Ok(());
    }
    for f in &failed {
        println!("FAILED {f}");
    }
    bail!("{} test step(s) failed", failed.len())
}

fn cargo(env: &setup::Env, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .env("PATH", &env.path)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

//! `cargo xtask`: the project's own set-up and workflow verbs.
//!
//! - `setup`: installs what builds and tests need (idempotent, seconds when done);
//! - `test`: every test, privileged ones single-threaded;
//! - `demo`: the main job: a denied client dropped by XDP in throwaway namespaces;
//! - `bench xdp`: the XDP benchmark (writes `target/bench/xdp.json`).
//!
//! Every verb runs `setup` first.

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
            cargo(&env, &["build", "--release", "--workspace"])
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
            if !["xdp", "agent", "checker", "abs"].contains(&name) {
                bail!("unknown benchmark {name:?}: try `cargo xtask bench xdp|agent|checker|abs`");
            }
            if name == "checker" {
                setup::bench_packages()?;
            }
            if name != "xdp" {
                // These drive the real binary.
                cargo(
                    &env,
                    &["build", "--release", "-p", "portcullis-agent", "--bins"],
                )?;
            }
            cargo(&env, &["bench", "-p", "portcullis-tests", "--bench", name])
        }
        "help" | "--help" | "-h" => {
            println!("usage: cargo xtask <setup|build|lint|test|demo|bench xdp|agent|checker|abs>");
            Ok(())
        }
        other => bail!("unknown verb {other:?}: try `cargo xtask help`"),
    }
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
/// the kernel: namespaces, pins, XDP attachments).
fn test(env: &setup::Env, extra: &[String]) -> anyhow::Result<()> {
    let mut unit = vec![
        "test",
        "--workspace",
        "--exclude",
        "portcullis-tests",
        "--exclude",
        "filter-ebpf",
    ];
    unit.extend(extra.iter().map(String::as_str));
    cargo(env, &unit)?;
    // The integration tests drive the real binary.
    cargo(env, &["build", "-p", "portcullis-agent", "--bins"])?;
    let mut privileged = vec!["test", "-p", "portcullis-tests"];
    privileged.extend(extra.iter().map(String::as_str));
    privileged.extend(["--", "--test-threads=1"]);
    cargo(env, &privileged)
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

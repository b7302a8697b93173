//! README.md's "Install and run" section, followed literally: its commands, in the order the
//! README gives them, on a copy of this checkout, ending with a running agent that drops a
//! denied client.
//!
//! The first command (`cargo xtask setup`, idempotent, then the release build) runs on the
//! host, in the copy, with cargo's per-test environment removed, as in a fresh checkout. The
//! others run in the server's network namespace, in a private mount namespace where `/etc`
//! and `/var/lib` are overlays and `/usr/local/bin`, `/run/portcullis` and `/sys/fs/bpf` are
//! fresh mounts, so nothing they install, create or pin reaches the machine (only the empty
//! mount point `/run/portcullis`, removed after, if it was not there). The one edit the
//! README asks for ("edit interfaces") is made where it asks for it; the foreground agent is
//! started in the background (and killed on any failure), and trailing `# comments` are
//! dropped. Every step is bounded in time.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use portcullis_tests::privileged;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The commands of the first `sh` block under "## Install and run", comments dropped.
fn install_commands(readme: &str) -> Vec<String> {
    let section = readme
        .split_once("\n## Install and run\n")
        .expect("README has an \"Install and run\" section")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("the section starts with a sh block")
        .0;
    block
        .lines()
        .map(|l| match l.find("   #") {
            Some(at) => l[..at].trim_end(),
            None => l.trim_end(),
        })
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A copy of the checkout's tracked files (as they are in the working tree) in `dest`.
fn copy_checkout(dest: &Path) {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        // CI may run as root on a checkout another user owns.
        .args(["-c", "safe.directory=*", "ls-files", "-z"])
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).expect("utf8 path");
        let (from, to) = (root().join(name), dest.join(name));
        if !from.exists() {
            continue; // deleted in the working tree
        }
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {name}: {e}"));
    }
}

/// Runs `script` with `sh` in `dir` (in network namespace `netns`), killed after `limit`.
fn sh(script: &str, dir: &Path, netns: Option<&str>, limit: &str) -> std::process::Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=10", limit]);
    if let Some(ns) = netns {
        cmd.args(["ip", "netns", "exec", ns]);
    }
    cmd.args(["sh", "-c", script]);
    // The copy builds into its own target directory with its own toolchain choice, as a
    // fresh checkout does: none of what cargo sets for a test.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("RUST") && k != "RUSTUP_HOME"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.current_dir(dir)
        .env(
            "PATH",
            format!(
                "/usr/local/bin:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("sh")
}

#[test]
fn the_install_section_followed_literally_ends_with_an_enforcing_agent() {
    privileged!();
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let commands = install_commands(&readme);
    assert!(
        commands.len() == 6
            && commands[0].starts_with("cargo xtask setup && cargo build --release")
            && commands[2].starts_with("install -d /etc/portcullis")
            && commands[5] == "portcullis agent --config /etc/portcullis/portcullis.toml",
        "the install section changed; update this test with it: {commands:#?}"
    );
    let tmp = Scratch::new();
    let src = tmp.0.join("src");
    copy_checkout(&src);

    // 1. The build, on the host (it needs the package registries).
    let built = sh(&commands[0], &src, None, "1800");
    assert!(
        built.status.success(),
        "{}: {}",
        commands[0],
        String::from_utf8_lossy(&built.stderr)
    );

    // 2–6, in the server's namespace, in a mount namespace of their own.
    let pair = NetnsPair::new().expect("netns pair");
    let t = tmp.0.display();
    let (client, server_if) = (&pair.client, &pair.server_if);
    let script = format!(
        r#"set -eu
# The sandbox (overlay upper layers on a tmpfs: the temporary directory may be overlayfs).
mkdir -p {t}/ovl /run/portcullis
mount -t tmpfs tmpfs {t}/ovl
mkdir -p {t}/ovl/etc-up {t}/ovl/etc-work {t}/ovl/lib-up {t}/ovl/lib-work
mount -t overlay overlay -o lowerdir=/etc,upperdir={t}/ovl/etc-up,workdir={t}/ovl/etc-work /etc
mount -t overlay overlay -o lowerdir=/var/lib,upperdir={t}/ovl/lib-up,workdir={t}/ovl/lib-work /var/lib
mount -t tmpfs tmpfs /usr/local/bin
mount -t tmpfs tmpfs /run/portcullis
mount -t bpf bpf /sys/fs/bpf
# README, "Install and run", in order.
{c1} || exit 1
{c2} || exit 1
sed -i 's/^interfaces = .*/interfaces = ["{server_if}"]/' /etc/portcullis/portcullis.toml
grep -q '^interfaces = \["{server_if}"\]' /etc/portcullis/portcullis.toml || {{ echo "the interfaces line changed shape"; exit 1; }}
{c3} || exit 1
{c4} || exit 1
{c5} > {t}/agent.log 2>&1 &
agent=$!
trap 'kill -KILL $agent 2>/dev/null || true' EXIT
for _ in $(seq 150); do [ -S /run/portcullis/control.sock ] && break; sleep 0.2; done
timeout 30 portcullis status
ip netns exec {client} ping -q -c 2 -W 1 -I {cv4} {sv4} > /dev/null || {{ echo "no answer before the deny"; exit 1; }}
timeout 30 portcullis deny add ip {cv4}
if ip netns exec {client} ping -q -c 3 -W 1 -I {cv4} {sv4} > /dev/null; then echo "a denied client was answered"; exit 1; fi
ip netns exec {client} ping -q -c 2 -W 1 -I {other} {sv4} > /dev/null || {{ echo "another client lost its answers"; exit 1; }}
kill -TERM $agent
for _ in $(seq 150); do kill -0 $agent 2>/dev/null || break; sleep 0.1; done
kill -0 $agent 2>/dev/null && {{ echo "the agent did not stop on SIGTERM"; exit 1; }}
wait $agent
"#,
        c1 = commands[1],
        c2 = commands[2],
        c3 = commands[3],
        c4 = commands[4],
        c5 = commands[5],
        cv4 = CLIENT_V4[0],
        other = CLIENT_V4[1],
        sv4 = SERVER_V4,
    );
    let ran = sh(&script, &src, Some(&pair.server), "300");
    let log = std::fs::read_to_string(tmp.0.join("agent.log")).unwrap_or_default();
    assert!(
        ran.status.success(),
        "the install section did not end with an enforcing agent:\n{}\n{}\nagent log:\n{log}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
}

/// The test's scratch directory (the copy, its release build, the sandbox's layers),
/// removed on drop, pass or fail, with the `/run/portcullis` mount point if the test made it.
struct Scratch(PathBuf, bool);

impl Scratch {
    fn new() -> Self {
        let d = std::env::temp_dir().join(portcullis_tests::unique("pc-readme-"));
        std::fs::create_dir_all(&d).expect("tmp");
        Self(d, !Path::new("/run/portcullis").exists())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if self.1 {
            let _ = std::fs::remove_dir("/run/portcullis");
        }
    }
}

//! README.md, followed literally: every command it gives, in the order it gives them, on a
//! copy of this checkout, from the install to the uninstall.
//!
//! Commands are the lines of its `sh` blocks, the `$ ` lines of its `console` blocks (each
//! output line shown under one must be a line of what the command prints), and the requests
//! of the control API's block, sent to the control socket with `nc` (each must be answered
//! with the protocol version). The block under "The two commands" is what CI runs, and is
//! left to it. The first command (`cargo xtask setup`, then the release build) runs on the
//! host, in the copy, with cargo's per-test environment removed, as in a fresh checkout. The
//! others run in the server's network namespace, in a private mount namespace where `/etc`,
//! `/var/lib`, `/usr/local` and `/root` are overlays and `/run/portcullis` and `/sys/fs/bpf`
//! are fresh mounts, so nothing they install, create or pin reaches the machine (only the
//! empty mount point `/run/portcullis`, removed after, if it was not there).
//!
//! What the test adds, and only where the README asks for it:
//! - the edits it asks for: the interface in the config ("edit interfaces"; `eth0` in
//!   commands is that interface too), and the L7 checker switched on before the socket unit
//!   ("With the L7 checker on"), with a self-signed certificate and the README's API file;
//! - the foreground agent runs in the background and is stopped with SIGINT (Ctrl-C) where
//!   the README says so; before that, a denied client's pings must go unanswered;
//! - systemd is not PID 1 here, so `systemctl` is a stand-in (`SYSTEMCTL` below): it runs
//!   `systemd-analyze verify` on the installed units at `daemon-reload`, starts the
//!   installed unit's `ExecStart=` (under `systemd-socket-activate` with the socket unit's
//!   `ListenStream=` once that is enabled), waits for readiness and stops with SIGTERM;
//! - checks after the socket unit (an HTTPS client is answered through the passed socket)
//!   and after the uninstall (no XDP on the interface, no pins, the group gone, the denied
//!   client answered again).
//!
//! Every step is bounded in time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use portcullis_tests::privileged;
use portcullis_tests::readme::{Step, api_example, steps};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `systemctl` for the sandbox, where systemd is not PID 1 (see the script's header).
const SYSTEMCTL: &str = include_str!("../src/systemctl-stand-in.sh");

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

/// A command as a fresh checkout's shell would run it: none of what cargo sets for a test,
/// `PATH` starting with `bin` (the stand-ins) and `/usr/local/bin`.
fn fresh_shell(mut cmd: Command, dir: &Path, bin: &Path) -> Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("RUST") && k != "RUSTUP_HOME"
        {
            cmd.env_remove(&k);
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.current_dir(dir)
        .env("PATH", format!("{}:/usr/local/bin:{path}", bin.display()));
    cmd
}

/// The private mount namespace, held by a sleeping process; commands enter it with nsenter.
struct Sandbox {
    holder: Child,
    dir: PathBuf,
    bin: PathBuf,
    agent: Option<Child>,
}

impl Sandbox {
    fn new(netns: &str, scratch: &Path, dir: &Path) -> Self {
        let t = scratch.display();
        let setup = format!(
            r#"set -eu
mkdir -p {t}/ovl
mount -t tmpfs tmpfs {t}/ovl
for d in etc var/lib usr/local root; do
  n=$(echo $d | tr / -)
  mkdir -p {t}/ovl/$n-up {t}/ovl/$n-work
  mount -t overlay overlay -o lowerdir=/$d,upperdir={t}/ovl/$n-up,workdir={t}/ovl/$n-work /$d
done
mount -t tmpfs tmpfs /run/portcullis
mount -t bpf bpf /sys/fs/bpf
# A command that bypassed the stand-in would not reach the host's service manager.
for d in /run/systemd /run/dbus; do
  if [ -d $d ]; then mount -t tmpfs tmpfs $d; fi
done
echo ready
exec sleep infinity
"#
        );
        let mut holder = Command::new("ip")
            .args(["netns", "exec", netns, "unshare", "--mount"])
            .args(["--propagation", "private", "sh", "-c", &setup])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut ready = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(holder.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("read");
        assert_eq!(ready.trim(), "ready", "the sandbox could not be set up");
        let bin = scratch.join("bin");
        std::fs::create_dir_all(scratch.join("systemd")).expect("mkdir");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let systemctl = SYSTEMCTL.replace("STATE", &scratch.join("systemd").to_string_lossy());
        std::fs::write(bin.join("systemctl"), systemctl).expect("systemctl");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("systemctl"), PermissionsExt::from_mode(0o755))
            .expect("chmod");
        Self {
            holder,
            dir: dir.to_owned(),
            bin,
            agent: None,
        }
    }

    /// `script` run by `sh` inside, killed after `secs` (or, without, the process is the
    /// script's last command: signals reach it as they would in a terminal).
    fn command(&self, script: &str, secs: Option<u32>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder.id().to_string())
            // Entering a mount namespace moves to its root: --wd comes back.
            .arg(format!("--wd={}", self.dir.display()))
            .args(["-m", "-n"]);
        match secs {
            Some(secs) => cmd
                .args(["timeout", "--kill-after=5", &secs.to_string()])
                .args(["sh", "-c", script]),
            None => cmd.args(["sh", "-c", &format!("exec {script}")]),
        };
        fresh_shell(cmd, &self.dir, &self.bin)
    }

    fn run(&self, script: &str, secs: u32) -> Output {
        self.command(script, Some(secs))
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Runs `script` and panics with `what` and its output unless it succeeds.
    fn check(&self, script: &str, what: &str) -> String {
        let out = self.run(script, 60);
        assert!(
            out.status.success(),
            "{what}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(agent) = &mut self.agent {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        // The stand-in's service, if it is still running (and still the agent).
        let pid = self.bin.with_file_name("systemd").join("pid");
        if let Some(pid) = std::fs::read_to_string(pid)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|p| *p > 1)
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("portcullis"))
            })
        {
            nix_kill(pid, "KILL");
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn the_readme_followed_literally_installs_runs_enforces_and_uninstalls() {
    privileged!();
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let steps = steps(&readme);
    let api = api_example(&readme);
    let has = |s: &str| {
        steps
            .iter()
            .any(|st| matches!(st, Step::Run { cmd, .. } if cmd == s))
    };
    const FOREGROUND: &str = "portcullis agent --config /etc/portcullis/portcullis.toml";
    const CONFIG: &str =
        "install -d /etc/portcullis && install -m 0644 dist/portcullis.toml /etc/portcullis/";
    const SOCKET: &str = "install -m 0644 dist/portcullis.socket /etc/systemd/system/";
    assert!(
        has(FOREGROUND) && has(CONFIG) && has(SOCKET),
        "the README's install steps changed; update this test with them: {steps:#?}"
    );

    let tmp = Scratch::new();
    let src = tmp.0.join("src");
    copy_checkout(&src);
    let pair = NetnsPair::new().expect("netns pair");
    let mut sandbox: Option<Sandbox> = None;
    let (denied, other, late) = (CLIENT_V4[0], CLIENT_V4[1], CLIENT_V4[2]);
    let ping = |src: &str, n: u32| {
        let count = n.to_string();
        pair.client_cmd(&["ping", "-q", "-c", &count, "-W", "1", "-I", src, SERVER_V4])
            .expect("ping")
            .status
            .success()
    };

    let mut denied_before_uninstall = false;
    for step in &steps {
        let (line, cmd, shows, heading) = match step {
            Step::Request { line, json } => {
                let sb = sandbox.as_ref().expect("the sandbox");
                let json = json.replace("eth0", &pair.server_if);
                let out = sb.run(
                    &format!(
                        "printf '%s\\n' '{json}' | nc -U -N -w 10 /run/portcullis/control.sock"
                    ),
                    30,
                );
                let answer = String::from_utf8_lossy(&out.stdout);
                let parsed: serde_json::Value =
                    serde_json::from_str(answer.trim()).unwrap_or_else(|e| {
                        panic!("README:{line}: {json} got no answer ({e}): {answer:?} {out:?}")
                    });
                // Every example request works, but a restore of a file the README only
                // names (it is not there).
                let refused = json.contains(r#""op":"restore""#);
                assert!(
                    parsed["version"] == 2 && parsed["ok"] == !refused,
                    "README:{line}: {json} was answered {answer}"
                );
                continue;
            }
            Step::Run {
                line,
                cmd,
                shows,
                heading,
            } => (*line, cmd.replace("eth0", &pair.server_if), shows, heading),
        };

        // The first build needs the package registries: on the host, before the sandbox
        // (the upgrade's, later, finds everything in place).
        if sandbox.is_none() && cmd.starts_with("cargo xtask setup") {
            let out = fresh_shell(Command::new("timeout"), &src, &tmp.0.join("bin"))
                .args(["--kill-after=10", "1800", "sh", "-c", &cmd])
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "README:{line}: {cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            sandbox = Some(Sandbox::new(&pair.server, &tmp.0, &src));
            continue;
        }
        let sb = sandbox.as_mut().expect("the build comes first");

        // Ctrl-C on the foreground agent, where the README says so.
        if heading == "Run as a systemd service"
            && let Some(mut agent) = sb.agent.take()
        {
            nix_kill(agent.id(), "INT");
            let status = wait_bounded(&mut agent, 15);
            assert!(
                status.is_some_and(|s| s.success()),
                "the foreground agent did not stop cleanly on Ctrl-C ({status:?}): {}",
                std::fs::read_to_string(tmp.0.join("agent.log")).unwrap_or_default()
            );
            assert!(!ping(denied, 2), "the filter stopped with the agent");
        }
        // "With the L7 checker on": the checker as the L7 section shows it.
        if cmd == SOCKET {
            let api = api.replace('\'', "'\\''");
            sb.check(
                &format!(
                    r#"set -eu
install -d /etc/portcullis/tls /etc/portcullis/apis
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=api.test \
  -addext subjectAltName=DNS:api.test -keyout /etc/portcullis/tls/key.pem \
  -out /etc/portcullis/tls/cert.pem 2>/dev/null
printf '%s\n' '{api}' > /etc/portcullis/apis/shop.json
sed -i 's/^https = ""/https = "0.0.0.0:443"/' /etc/portcullis/portcullis.toml
grep -q '^https = "0.0.0.0:443"' /etc/portcullis/portcullis.toml
portcullis agent --config /etc/portcullis/portcullis.toml --check-config > /dev/null
"#
                ),
                "switching the L7 checker on",
            );
        }

        // Before the uninstall, a denied client, to see the uninstall lift it.
        if heading == "Uninstall" && !denied_before_uninstall {
            denied_before_uninstall = true;
            sb.check(&format!("portcullis deny add ip {denied}"), "deny add");
            assert!(
                !ping(denied, 3),
                "a denied client was answered before the uninstall"
            );
        }

        if cmd == FOREGROUND {
            let log = std::fs::File::create(tmp.0.join("agent.log")).expect("log");
            let agent = sb
                .command(&cmd, None)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("agent");
            sb.agent = Some(agent);
            sb.check(
                "for _ in $(seq 150); do portcullis status > /dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1",
                &format!(
                    "README:{line}: the agent did not come up: {}",
                    std::fs::read_to_string(tmp.0.join("agent.log")).unwrap_or_default()
                ),
            );
            assert!(ping(denied, 2), "no answer before the deny");
            sb.check(&format!("portcullis deny add ip {denied}"), "deny add");
            assert!(!ping(denied, 3), "a denied client was answered");
            assert!(ping(other, 2), "another client lost its answers");
            continue;
        }

        let out = sb.run(&cmd, if cmd.starts_with("cargo ") { 900 } else { 60 });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "README:{line}: `{cmd}` failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for shown in shows {
            assert!(
                stdout.lines().any(|l| l.trim_end() == shown),
                "README:{line}: `{cmd}` does not print the line the README shows:\n{shown}\nit printed:\n{stdout}"
            );
        }
        if cmd == CONFIG {
            let iface = &pair.server_if;
            sb.check(
                &format!(
                    "sed -i 's/^interfaces = .*/interfaces = [\"{iface}\"]/' /etc/portcullis/portcullis.toml && grep -q '^interfaces = \\[\"{iface}\"\\]' /etc/portcullis/portcullis.toml"
                ),
                "the interfaces line changed shape",
            );
        }
        // A change after the upgrade's backup, which going back must undo (in the kernel too).
        if cmd.starts_with("systemctl daemon-reload && systemctl restart portcullis") {
            sb.check(&format!("portcullis deny add ip {late}"), "deny add");
            assert!(
                !ping(late, 2),
                "a denied client was answered after the upgrade"
            );
        }
        if heading.starts_with("Upgrades") && cmd == "systemctl start portcullis" {
            let list = sb.check("portcullis deny list --kind ip", "deny list");
            assert!(
                !list.contains(late),
                "going back kept a later entry:\n{list}"
            );
            assert!(ping(late, 2), "going back left a later entry in the kernel");
        }
        // The README's outputs are of its own commands only: the test's deny goes.
        if cmd == "systemctl daemon-reload && systemctl enable --now portcullis" {
            sb.check(
                &format!("portcullis deny remove ip {denied}"),
                "deny remove",
            );
        }
        if cmd.starts_with("systemctl enable --now portcullis.socket") {
            let out = sb.check(
                &format!(
                    "ip netns exec {} curl -sk --max-time 5 --interface {other} -o /dev/null -w '%{{http_code}}' --resolve api.test:443:{SERVER_V4} https://api.test/shop/",
                    pair.client
                ),
                "an HTTPS client through the socket unit",
            );
            assert_ne!(
                out, "000",
                "the checker did not answer through the passed socket"
            );
        }
    }

    // After the uninstall: nothing of it left in the sandbox, the denied client answered.
    let sb = sandbox.as_ref().expect("the sandbox");
    let pid = std::fs::read_to_string(tmp.0.join("systemd/pid")).unwrap_or_default();
    let left = sb.check(
        &format!(
            "link=$(ip link show dev {}); case $link in *xdp*) echo xdp;; esac; [ -e /sys/fs/bpf/portcullis ] && echo pins; getent group portcullis && echo group; [ -e /usr/local/bin/portcullis ] && echo binary; [ -n '{}' ] && kill -0 {} 2>/dev/null && echo agent; echo checked",
            pair.server_if,
            pid.trim(),
            pid.trim()
        ),
        "looking for what the uninstall left",
    );
    assert_eq!(left.trim(), "checked", "the uninstall left these");
    assert!(ping(denied, 2), "the uninstall left the client denied");
}

/// Sends signal `sig` (a name for `kill -s`) to `pid`.
fn nix_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status();
}

/// Waits up to `secs` for `child`; its status if it exited.
fn wait_bounded(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// The test's scratch directory (the copy, its release build, the sandbox's layers),
/// removed on drop, pass or fail, with the `/run/portcullis` mount point if the test made it.
struct Scratch(PathBuf, bool);

impl Scratch {
    fn new() -> Self {
        let d = std::env::temp_dir().join(portcullis_tests::unique("pc-readme-"));
        std::fs::create_dir_all(&d).expect("tmp");
        let made = !Path::new("/run/portcullis").exists();
        std::fs::create_dir_all("/run/portcullis").expect("/run/portcullis");
        Self(d, made)
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

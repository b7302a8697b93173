//! Runs the real `portcullis agent` binary for tests and the demo, and drives it through the
//! real CLI binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portcullis::control::answer::{EntryView, Interface, Stats, Status};

/// The `portcullis` binary next to the test executable (`cargo xtask test` builds it).
/// Panics when it is missing or older than the agent's sources: a stale binary would test
/// yesterday's code and pass.
pub fn portcullis_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let found = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("portcullis"))
        .find(|c| c.is_file());
    let Some(bin) = found else {
        panic!(
            "portcullis binary not found near {}: run `cargo build -p portcullis-agent --bins` (cargo xtask test does)",
            exe.display()
        );
    };
    let built = modified(&bin);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = [
        "agent/src",
        "agent/build.rs",
        "agent/Cargo.toml",
        "common/src",
        "common/Cargo.toml",
        "filter-ebpf/src",
        "filter-ebpf/Cargo.toml",
        "Cargo.lock",
    ]
    .iter()
    .filter_map(|p| newest_file(&workspace.join(p)))
    .max_by_key(|(t, _)| *t);
    if let Some((time, path)) = newest
        && time > built
    {
        panic!(
            "{} is older than {}: run `cargo build -p portcullis-agent --bins` (cargo xtask test does) so the tests run today's agent",
            bin.display(),
            path.display()
        );
    }
    bin
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// The most recently modified file under `path` (or `path` itself).
fn newest_file(path: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    if path.is_file() {
        return Some((modified(path), path.to_path_buf()));
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|e| newest_file(&e.path()))
        .max_by_key(|(t, _)| *t)
}

/// Where a test agent keeps its state; removed on drop.
pub struct AgentDirs {
    /// Temporary directory (state, socket, config, log).
    pub root: PathBuf,
    /// Pin directory on bpffs.
    pub pins: crate::PinDir,
}

impl AgentDirs {
    /// Fresh directories.
    pub fn new() -> Self {
        let root = std::env::temp_dir().join(crate::unique("pcagent"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("temp dir");
        Self {
            root,
            pins: crate::PinDir::new(),
        }
    }

    /// The control socket path.
    pub fn socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }
}

impl Default for AgentDirs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AgentDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A running agent process.
pub struct Agent {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

/// How to start an agent.
#[derive(Default, Clone)]
pub struct AgentOpts {
    /// Network namespace to run in (only the network namespace: bpffs pins stay shared).
    pub netns: Option<String>,
    /// Interfaces to attach to.
    pub ifaces: Vec<String>,
    /// Extra config file text.
    pub config: String,
    /// Extra arguments.
    pub args: Vec<String>,
    /// State directory (database), when not the temporary root.
    pub state_dir: Option<PathBuf>,
    /// Listening sockets to pass as systemd socket activation does (descriptors 3, 4, …
    /// with `LISTEN_FDS` and `LISTEN_PID`); the test keeps them open.
    pub listen_fds: Vec<std::os::fd::RawFd>,
    /// Extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
}

impl AgentOpts {
    /// An agent inside `pair`'s server namespace, attached to its end of the veth pair.
    pub fn on_server(pair: &crate::netns::NetnsPair) -> Self {
        Self {
            netns: Some(pair.server.clone()),
            ifaces: vec![pair.server_if.clone()],
            ..Self::default()
        }
    }
}

impl Agent {
    /// Starts an agent with this extra configuration (TOML) and the default options.
    pub fn with_config(dirs: &AgentDirs, config: String) -> anyhow::Result<Self> {
        Self::start(
            dirs,
            &AgentOpts {
                config,
                ..AgentOpts::default()
            },
        )
    }

    /// Starts an agent with the default options and its metrics page on a free local port,
    /// which is returned with it.
    pub fn with_metrics(dirs: &AgentDirs) -> anyhow::Result<(Self, std::net::SocketAddr)> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let opts = AgentOpts {
            args: vec!["--metrics".into(), addr.to_string()],
            ..AgentOpts::default()
        };
        Ok((Self::start(dirs, &opts)?, addr))
    }

    /// Starts an agent using `dirs`, waits until its control socket answers.
    pub fn start(dirs: &AgentDirs, opts: &AgentOpts) -> anyhow::Result<Self> {
        let config = dirs.root.join("portcullis.toml");
        let text = format!("prune_interval = \"1s\"\n{}", opts.config);
        std::fs::write(&config, text)?;
        let log = dirs.root.join(format!("agent-{}.log", crate::unique("")));
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--");
                c
            }
            None => Command::new("env"),
        };
        let mut copies = Vec::new();
        if !opts.listen_fds.is_empty() {
            // The shell learns its pid and execs the agent, which keeps it: LISTEN_PID must
            // name the agent itself.
            let n = opts.listen_fds.len();
            let script = format!(r#"LISTEN_PID=$$ LISTEN_FDS={n} exec "$@""#);
            cmd.args(["sh", "-c", &script, "sh"]);
            // Copies above where they go, so moving one cannot overwrite another; closed in
            // the parent once the child has its own (when `cmd` is dropped).
            let fds: Vec<std::os::fd::RawFd> = opts
                .listen_fds
                .iter()
                // SAFETY: F_DUPFD_CLOEXEC on a descriptor the test holds open.
                .map(|fd| unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100) })
                .collect();
            if fds.iter().any(|fd| *fd < 0) {
                return Err(std::io::Error::last_os_error()).context("copying listen_fds");
            }
            copies.extend(fds.iter().map(|fd| {
                // SAFETY: a fresh descriptor of ours, owned here alone.
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd) }
            }));
            // SAFETY: dup2 is async-signal-safe; the closure only moves descriptors the
            // test holds open to where socket activation puts them (dup2 clears CLOEXEC).
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    for (i, fd) in fds.iter().enumerate() {
                        if libc::dup2(*fd, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd.arg(portcullis_bin())
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(opts.state_dir.as_ref().unwrap_or(&dirs.root))
            .arg("--pin-dir")
            .arg(&dirs.pins.0)
            .arg("--socket")
            .arg(dirs.socket());
        if !opts.args.iter().any(|a| a == "--metrics") {
            cmd.arg("--metrics").arg("");
        }
        for i in &opts.ifaces {
            cmd.arg("--iface").arg(i);
        }
        cmd.args(&opts.args);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = cmd.spawn().context("starting portcullis agent")?;
        drop(copies);
        let mut agent = Self {
            child: Some(child),
            socket: dirs.socket(),
            log,
        };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                // Reaped: nothing left for `Drop` to stop.
                self.child = None;
                bail!("agent exited with {status}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent not ready after 20 s: {}", self.log_text())
    }

    /// The agent's process id (of `nsenter` when run in a namespace, which execs the agent).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.socket, args)
    }

    /// `status --json`, read as the agent's typed answer.
    pub fn status(&self) -> Status {
        answer(&self.cli(&["status", "--json"]))
    }

    /// `stats --json`, read as the agent's typed answer.
    pub fn stats(&self) -> Stats {
        answer(&self.cli(&["stats", "--json"]))
    }

    /// `LIST list --json` (`allow` or `deny`): the entries, typed.
    pub fn entries(&self, list: &str) -> Vec<EntryView> {
        answer(&self.cli(&[list, "list", "--json"]))
    }

    /// `LIST list --source SOURCE --json`: the entries one source put on a list, typed.
    pub fn entries_from(&self, list: &str, source: &str) -> Vec<EntryView> {
        answer(&self.cli(&[list, "list", "--source", source, "--json"]))
    }

    /// The interface's entry in `status`; panics when the agent does not list it.
    pub fn interface(&self, iface: &str) -> Interface {
        let s = self.status();
        s.interfaces
            .iter()
            .find(|i| i.iface == iface)
            .cloned()
            .unwrap_or_else(|| panic!("{iface} missing from status: {s:?}"))
    }

    /// Packets the XDP program counted under `verdict` (`drop_denied`, `pass_allowed`, …).
    pub fn xdp_packets(&self, verdict: &str) -> u64 {
        self.stats().kernel.get(verdict).map_or(0, |c| c.packets)
    }

    /// `LIST add IDENT...` for each identifier (`["ip", "198.18.0.1"]`,
    /// `["cookie", "JSESSIONID", "v"]`); panics on a refusal.
    pub fn add(&self, list: &str, idents: &[&[&str]]) {
        for ident in idents {
            let mut args = vec![list, "add"];
            args.extend_from_slice(ident);
            ok(&self.cli(&args));
        }
    }

    /// Kills the agent with SIGKILL (no chance to clean up).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the agent with SIGTERM and waits up to 10 s. An agent that hangs (then killed)
    /// or exits with a failure status is an error: a clean stop is part of the contract.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = c.try_wait()? {
                if !st.success() {
                    bail!("agent exited with {st} on SIGTERM: {}", self.log_text());
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!(
            "agent still running 10 s after SIGTERM (killed): {}",
            self.log_text()
        )
    }
}

impl Drop for Agent {
    /// Stops the agent; a hang or a failed exit fails the test (unless it is already failing).
    fn drop(&mut self) {
        if let Err(e) = self.stop()
            && !std::thread::panicking()
        {
            panic!("{e:#}");
        }
    }
}

/// Sends one raw JSON line on the control socket and returns the agent's one-line answer
/// (for what the CLI never sends: foreign clients, hostile or outdated ones).
pub fn control_line(socket: &Path, line: &str) -> String {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("control socket");
    s.write_all(line.as_bytes()).expect("write");
    s.write_all(b"\n").expect("write");
    let mut answer = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut answer)
        .expect("answer");
    answer
}

/// Runs `portcullis --socket SOCKET args...`.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(portcullis_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("PORTCULLIS_LOG", "warn")
        .output()
        .expect("running the portcullis CLI")
}

/// Stdout of a successful CLI run; panics with stderr otherwise.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "CLI failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A successful `--json` CLI run's answer, read as the typed answer the agent sends
/// (`portcullis::control::answer`); panics with the output when it does not read.
pub fn answer<T: serde::de::DeserializeOwned>(out: &Output) -> T {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not the expected answer ({e}): {text}"))
}

/// Stderr of a failed CLI run; panics if it succeeded.
pub fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "CLI should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A system group made for one test (the control socket's group), removed on drop.
pub struct TempGroup {
    /// Its name.
    pub name: String,
    /// Its id.
    pub gid: u32,
}

impl TempGroup {
    /// Creates a new system group.
    pub fn new() -> anyhow::Result<Self> {
        let name = crate::unique("pcg");
        let made = Command::new("groupadd")
            .args(["--system", &name])
            .status()
            .context("groupadd")?;
        if !made.success() {
            bail!("groupadd {name} failed");
        }
        let out = Command::new("getent").args(["group", &name]).output()?;
        let gid = String::from_utf8_lossy(&out.stdout)
            .split(':')
            .nth(2)
            .and_then(|g| g.trim().parse().ok())
            .context("gid of the new group")?;
        Ok(Self { name, gid })
    }

    /// Runs `portcullis --socket SOCKET args...` as `nobody`, a member of this group only.
    pub fn cli_as_member(&self, socket: &Path, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup"])
            .arg(format!("--groups={}", self.gid))
            .arg(portcullis_bin())
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
            .expect("setpriv")
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

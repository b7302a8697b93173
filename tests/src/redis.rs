//! A real `redis-server` for the fleet tests: started on a loopback port (in a network
//! namespace when asked), killed with SIGKILL or stopped, restarted on the same port and
//! directory, and queried with `redis-cli`.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running (or killed) Redis.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Where it binds (`127.0.0.1`, or also a namespace's address).
    pub bind: String,
    dir: PathBuf,
    netns: Option<String>,
    /// `--appendonly yes` with `appendfsync always`.
    pub aof: bool,
}

impl Redis {
    /// Starts Redis in `dir` on `port`, binding `bind` (space-separated addresses), in
    /// `netns` when given; with `aof`, every write is fsynced to the append-only file.
    pub fn start(
        dir: PathBuf,
        port: u16,
        bind: &str,
        netns: Option<&str>,
        aof: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut r = Self {
            child: None,
            port,
            bind: bind.to_owned(),
            dir,
            netns: netns.map(str::to_owned),
            aof,
        };
        r.restart()?;
        Ok(r)
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts it again (after [`Redis::kill9`]), with whatever its directory holds.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("redis.log");
        let mut cmd = self.command("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .arg("--bind")
            .args(self.bind.split(' '))
            .args(["--dir", &self.dir.display().to_string()])
            .args(["--save", ""])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--protected-mode", "no"])
            .args(["--logfile", &log.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            cmd.spawn()
                .context("starting redis-server (cargo xtask setup installs it)")?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .cli(&["PING"])
                .map(|o| o.status.success() && o.stdout.starts_with(b"PONG"))
                .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "redis-server did not answer: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis-cli -p PORT ARGS…`.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self
            .command("redis-cli")
            .args(["-p", &self.port.to_string(), "--no-raw"])
            .args(args)
            .output()?)
    }

    /// `redis-cli` with the output as text; fails when redis-cli does.
    pub fn text(&self, args: &[&str]) -> String {
        let out = self.cli(args).expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's `used_memory` in bytes.
    pub fn used_memory(&self) -> u64 {
        self.text(&["INFO", "memory"])
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

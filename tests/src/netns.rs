//! Throwaway network namespaces joined by a veth pair, removed on drop.
//!
//! Addresses come only from 198.18.0.0/15 and 2001:db8::/32; the namespaces have no route
//! anywhere else, so test traffic cannot leave them.

use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Server-side address of the pair.
pub const SERVER_V4: &str = "198.18.0.1";
/// Server-side IPv6 address.
pub const SERVER_V6: &str = "2001:db8::1";
/// Client-side IPv4 addresses (several, so one can be denied and another not).
pub const CLIENT_V4: [&str; 3] = ["198.18.0.2", "198.18.0.3", "198.18.0.4"];
/// Client-side IPv6 addresses.
pub const CLIENT_V6: [&str; 2] = ["2001:db8::2", "2001:db8::3"];

/// Runs a command, failing with its stderr on a non-zero exit.
pub fn run(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Two namespaces, `server` and `client`, joined by veth `server_if` <-> `client_if`.
pub struct NetnsPair {
    /// Server namespace name (XDP is attached here, on `server_if`).
    pub server: String,
    /// Client namespace name.
    pub client: String,
    /// Server-side veth.
    pub server_if: String,
    /// Client-side veth.
    pub client_if: String,
}

impl NetnsPair {
    /// Creates the namespaces, the veth pair and the addresses, and waits until both ends are up.
    pub fn new() -> anyhow::Result<Self> {
        let tag = crate::unique("pc");
        let pair = Self {
            server: format!("{tag}s"),
            client: format!("{tag}c"),
            server_if: format!("{tag}S"),
            client_if: format!("{tag}C"),
        };
        // From here on, Drop cleans up whatever was created.
        run(&["ip", "netns", "add", &pair.server])?;
        run(&["ip", "netns", "add", &pair.client])?;
        run(&[
            "ip",
            "link",
            "add",
            &pair.server_if,
            "netns",
            &pair.server,
            "type",
            "veth",
            "peer",
            "name",
            &pair.client_if,
            "netns",
            &pair.client,
        ])?;
        let s = |args: &[&str]| {
            let mut v = vec!["ip", "-n", pair.server.as_str()];
            v.extend_from_slice(args);
            run(&v)
        };
        let c = |args: &[&str]| {
            let mut v = vec!["ip", "-n", pair.client.as_str()];
            v.extend_from_slice(args);
            run(&v)
        };
        s(&[
            "addr",
            "add",
            &format!("{SERVER_V4}/24"),
            "dev",
            &pair.server_if,
        ])?;
        s(&[
            "-6",
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            &pair.server_if,
            "nodad",
        ])?;
        for a in CLIENT_V4 {
            c(&["addr", "add", &format!("{a}/24"), "dev", &pair.client_if])?;
        }
        for a in CLIENT_V6 {
            c(&[
                "-6",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                &pair.client_if,
                "nodad",
            ])?;
        }
        for (f, ifname) in [
            (
                &s as &dyn Fn(&[&str]) -> anyhow::Result<Output>,
                &pair.server_if,
            ),
            (&c, &pair.client_if),
        ] {
            f(&["link", "set", "lo", "up"])?;
            f(&["link", "set", ifname, "up"])?;
        }
        Ok(pair)
    }

    /// The XDP program on the server end as `ip -d link` reports it: "native", "generic" or
    /// "none" (what the kernel has, independent of what the agent says).
    pub fn server_xdp_mode(&self) -> &'static str {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.server,
                "-d",
                "link",
                "show",
                "dev",
                &self.server_if,
            ])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if text.contains("xdpgeneric") {
            "generic"
        } else if text.contains("prog/xdp") {
            "native"
        } else {
            "none"
        }
    }

    /// Runs a command inside the client namespace.
    pub fn client_cmd(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.client])
            .args(args)
            .output()
    }

    /// Starts `count` pings from `src` to `dst`, one per 0.1 s, on another thread, and
    /// returns once the first ones are out (for tests that restart something mid-way).
    pub fn ping_in_background(&self, src: &str, dst: &str, count: u32) -> Pinger {
        let (client, src, dst) = (self.client.clone(), src.to_owned(), dst.to_owned());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let out = Command::new("ip")
                .args(["netns", "exec", &client, "ping", "-n", "-q", "-c"])
                .arg(count.to_string())
                .args(["-i", "0.1", "-W", "1", "-I", &src, &dst])
                .output();
            (out, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(300));
        Pinger {
            thread,
            count,
            started,
        }
    }

    /// `curl -s --max-time 3` from `src` in the client namespace to `https://host:port path`
    /// on the server, trusting `ca`, with more curl `args`.
    pub fn curl_https(
        &self,
        src: &str,
        ca: &std::path::Path,
        (host, port): (&str, u16),
        path: &str,
        args: &[&str],
    ) -> std::io::Result<Output> {
        let ca = ca.to_string_lossy();
        let resolve = format!("{host}:{port}:{SERVER_V4}");
        let url = format!("https://{host}:{port}{path}");
        let mut cmd = vec!["curl", "-s", "--max-time", "3", "--interface", src];
        cmd.extend(["--cacert", &ca, "--resolve", &resolve]);
        cmd.extend(args);
        cmd.push(&url);
        self.client_cmd(&cmd)
    }

    /// Panics unless `answered` of `count` pings from `src` to `dst` are answered.
    pub fn assert_pings(&self, src: &str, dst: &str, count: u32, answered: u32, why: &str) {
        let got = self.ping(src, dst, count).expect("ping");
        assert_eq!(got, answered, "{src} -> {dst}: {why}");
    }

    /// How many of `count` pings from `src` to `dst` were answered (one per 0.2 s, 1 s wait).
    pub fn ping(&self, src: &str, dst: &str, count: u32) -> anyhow::Result<u32> {
        let count_s = count.to_string();
        let out = self.client_cmd(&[
            "ping", "-n", "-q", "-c", &count_s, "-i", "0.2", "-W", "1", "-I", src, dst,
        ])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let received = text
            .split(',')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(" received")
                    .and_then(|n| n.trim().parse().ok())
            })
            .with_context(|| format!("unexpected ping output: {text}"))?;
        Ok(received)
    }
}

/// Pings running in the background across something that must not let one through.
pub struct Pinger {
    thread: std::thread::JoinHandle<(std::io::Result<Output>, Instant)>,
    count: u32,
    started: Instant,
}

impl Pinger {
    /// Waits for the pings; panics if one was answered, or if they ended less than 0.5 s
    /// after `done` (when what they spanned finished): the window must provably contain all
    /// of `what`.
    pub fn assert_none_answered(self, done: Instant, what: &str) {
        let (out, finished) = self.thread.join().expect("pinger");
        let text = String::from_utf8_lossy(&out.expect("ping").stdout).into_owned();
        let count = self.count;
        assert!(
            text.contains(&format!("{count} packets transmitted, 0 received")),
            "a ping got through {what}: {text}"
        );
        assert!(
            finished > done + Duration::from_millis(500),
            "the pings ended {:?} after they began, before {what} was done ({:?}): the window did not contain it",
            finished - self.started,
            done - self.started
        );
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and with it the peer.
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (sockets it creates, and
/// interfaces it names, are that namespace's). Only that thread changes namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening netns {ns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: valid namespace fd; affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns({ns}): {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {ns} panicked"))?
    })
}

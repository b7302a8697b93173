//! `cargo xtask bench restart`: what clients see while the agent restarts under load. wrk
//! drives the L7 checker over TLS with keep-alive (16 connections); after 3 s the agent is
//! stopped (SIGTERM: it drains) and started again, as `systemctl restart` does. Two ways,
//! side by side in one run:
//!
//! - the listening socket passed by the service manager (a systemd socket unit; here the
//!   benchmark holds it), which outlives the agent;
//! - the agent binding its own socket, which closes with it.
//!
//! Counts wrk's refused connections (connect errors), other failed requests (read, write,
//! timeout, non-2xx) and the slowest request. Writes `target/bench/restart.json`.

use std::net::TcpListener;
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts};
use portcullis_tests::backend::Backend;
use portcullis_tests::report::{self, Table};
use portcullis_tests::tls::self_signed;

/// What wrk saw during one restart.
#[derive(Debug, Default)]
struct Seen {
    requests: u64,
    refused: u64,
    failed: u64,
    max_ms: f64,
    restart_ms: f64,
}

fn ms(s: &str) -> f64 {
    let s = s.trim();
    let Some(at) = s.find(|c: char| c.is_ascii_alphabetic()) else {
        return 0.0;
    };
    let v: f64 = s[..at].parse().unwrap_or(0.0);
    match &s[at..] {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => 0.0,
    }
}

/// Reads wrk's summary: requests, socket errors, non-2xx answers and the longest latency.
fn parse(text: &str, seen: &mut Seen) {
    for line in text.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            seen.requests = n.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                let (what, n) = (w.next().unwrap_or(""), w.next().unwrap_or("0"));
                let n: u64 = n.parse().unwrap_or(0);
                if what == "connect" {
                    seen.refused += n;
                } else {
                    seen.failed += n;
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            seen.failed += n.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Latency") {
            // "Latency   1.2ms  0.3ms  45.6ms  90%": mean, stdev, max.
            if let Some(max) = rest.split_whitespace().nth(2) {
                seen.max_ms = ms(max);
            }
        }
    }
}

/// Runs wrk against `port` for 10 s and restarts the agent after 3 s.
fn restart_under_load(dirs: &AgentDirs, opts: &AgentOpts, port: u16) -> anyhow::Result<Seen> {
    let mut agent = Agent::start(dirs, opts)?;
    let wrk = Command::new("wrk")
        .args(["-t2", "-c16", "-d10s", "--timeout", "20s", "--latency"])
        .arg(format!("https://127.0.0.1:{port}/bench?size=1k"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running wrk (apt-get install wrk)")?;
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    agent.stop()?;
    let agent = Agent::start(dirs, opts)?;
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    let out = wrk.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("requests in") {
        bail!(
            "wrk failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("{text}");
    let mut seen = Seen {
        restart_ms,
        ..Seen::default()
    };
    parse(&text, &mut seen);
    drop(agent);
    Ok(seen)
}

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("bench restart") {
        bail!("the restart benchmark loads BPF programs: run it as root");
    }
    let dirs = AgentDirs::new();
    let backend = Backend::start(TcpListener::bind("127.0.0.1:0")?);
    let certs = self_signed(&dirs.root, "bench.test", "bench")?;
    let apis = dirs.root.join("apis");
    std::fs::create_dir_all(&apis)?;
    std::fs::write(
        apis.join("bench.json"),
        format!(
            r#"{{"api_metadata":{{"url":"/","servers":[{{"host":"127.0.0.1","port":{}}}]}}}}"#,
            backend.addr.port()
        ),
    )?;
    let config = |addr: std::net::SocketAddr| {
        format!(
            "[checker]\nhttps = \"{addr}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\napi_dir = \"{}\"\n",
            certs.cert.display(),
            certs.key.display(),
            apis.display()
        )
    };

    // The service manager's socket, held here as a systemd socket unit holds it.
    let passed = TcpListener::bind("127.0.0.1:0")?;
    let passed_addr = passed.local_addr()?;
    eprintln!("bench restart: socket passed by the service manager");
    let with = restart_under_load(
        &dirs,
        &AgentOpts {
            config: config(passed_addr),
            listen_fds: vec![passed.as_raw_fd()],
            ..AgentOpts::default()
        },
        passed_addr.port(),
    )?;
    drop(passed);

    let own = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    eprintln!("bench restart: the agent binds its own socket");
    let without = restart_under_load(
        &dirs,
        &AgentOpts {
            config: config(own),
            ..AgentOpts::default()
        },
        own.port(),
    )?;

    let mut t = Table::new(&[
        "listening socket",
        ">requests",
        ">refused connections",
        ">failed requests",
        ">slowest request",
        ">stop + start",
    ]);
    for (name, s) in [
        ("passed by the service manager (socket unit)", &with),
        ("bound by the agent itself", &without),
    ] {
        t.row([
            name.to_owned(),
            s.requests.to_string(),
            s.refused.to_string(),
            s.failed.to_string(),
            report::ms(s.max_ms),
            report::ms(s.restart_ms),
        ]);
    }
    let json = serde_json::json!({
        "connections": 16, "seconds": 10,
        "passed": {"requests": with.requests, "refused": with.refused, "failed": with.failed, "max_ms": with.max_ms, "restart_ms": with.restart_ms},
        "own": {"requests": without.requests, "refused": without.refused, "failed": without.failed, "max_ms": without.max_ms, "restart_ms": without.restart_ms},
    });
    let note = format!(
        "Target: 0 refused connections with the socket passed (measured {}). wrk counts a refused connection each time it retries one, so the count without a socket unit grows with the time the port is closed. The slowest request is wrk's latency, which starts once a connection is set up: a connection waiting in the backlog for the new agent (up to the stop + start time) is not in it.",
        with.refused
    );
    report::write("restart", json, &t, &[note])?;
    if with.refused > 0 {
        bail!(
            "{} connections refused during a socket-activated restart",
            with.refused
        );
    }
    Ok(())
}

//! `cargo xtask bench abs`: how fast an ABS change is enforced, and what mirroring a
//! 1M-identifier attack list costs the agent (wall time, CPU time, peak RSS), against a real
//! HTTP server playing ABS. Writes `target/bench/abs.json`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portcullis::control::answer::Status;
use portcullis_tests::agent::{Agent, AgentDirs};
use portcullis_tests::fake_abs::{Answer, FakeAbs};
use portcullis_tests::report::{self, Table};

fn proc_stat(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks / hz, hwm))
}

/// `status`, or none while the agent cannot answer (it is busy starting).
fn status(agent: &Agent) -> Option<Status> {
    let out = agent.cli(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

fn kernel_entries(agent: &Agent) -> u64 {
    status(agent).map_or(0, |s| s.kernel_ip_entries as u64)
}

fn abs_rows(agent: &Agent) -> u64 {
    status(agent).map_or(0, |s| {
        s.lists
            .iter()
            .filter(|l| l.source == "abs")
            .map(|l| l.count)
            .sum()
    })
}

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > limit {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(t.elapsed())
}

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("bench abs") {
        bail!("the ABS benchmark loads BPF programs: run it as root");
    }
    let abs = FakeAbs::start(TcpListener::bind("127.0.0.1:0")?);
    let dirs = AgentDirs::new();
    let config = portcullis_tests::fake_abs::agent_config(
        &dirs,
        &abs.url(),
        "timeout = \"60s\"\nmax_body_bytes = 100000000\n",
    );
    let agent = Agent::with_config(&dirs, config)?;
    let pid = agent.pid().context("pid")?;

    eprintln!("bench abs: change-to-enforcement, 10 changes with a 1 s poll");
    let mut polled = Vec::new();
    for i in 0..10u32 {
        let list = if i % 2 == 0 {
            r#"{"attacklist":{"ips":["198.18.90.1"]}}"#
        } else {
            r#"{"attacklist":{"ips":[]}}"#
        };
        let want = u64::from(i % 2 == 0);
        abs.set(Answer::Json(list.into()));
        polled.push(
            wait("enforcement", Duration::from_secs(10), || {
                kernel_entries(&agent) == want
            })?
            .as_secs_f64()
                * 1e3,
        );
    }
    polled.sort_by(f64::total_cmp);
    // Polls fail during the push phase, so the last good list stays and cannot race the pushes.
    abs.set(Answer::Status(503));
    let mut pushed = Vec::new();
    for i in 0..20u32 {
        let req = if i % 2 == 0 { "add" } else { "remove" };
        let want = u64::from(i % 2 == 0);
        let t = Instant::now();
        let mut s = std::os::unix::net::UnixStream::connect(dirs.socket())?;
        use std::io::{BufRead as _, Write as _};
        writeln!(
            s,
            r#"{{"op":"abs-push","{req}":[{{"kind":"ip","name":null,"value":"198.18.91.1","ttl":null}}]}}"#
        )?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        pushed.push(t.elapsed().as_secs_f64() * 1e3);
        if kernel_entries(&agent) != want {
            bail!("push not enforced when answered: {line}");
        }
    }
    pushed.sort_by(f64::total_cmp);

    eprintln!("bench abs: mirroring a 1M-identifier list (500k IPs, 500k tokens)");
    let mut big = String::with_capacity(40 << 20);
    big.push_str(r#"{"attacklist":{"ips":["#);
    for i in 0..500_000u32 {
        if i > 0 {
            big.push(',');
        }
        big.push_str(&format!(
            "\"{}.{}.{}.{}\"",
            11 + (i >> 24),
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    big.push_str(r#"],"oauth_tokens":["#);
    for i in 0..500_000u32 {
        if i > 0 {
            big.push(',');
        }
        big.push_str(&format!("\"abs-token-{i:08}\""));
    }
    big.push_str("]}}");
    let body_mb = big.len() as f64 / 1e6;
    let (cpu0, _) = proc_stat(pid)?;
    abs.set(Answer::Json(big.clone()));
    let first = wait("the 1M list", Duration::from_secs(300), || {
        abs_rows(&agent) >= 1_000_000
    })?;
    std::thread::sleep(Duration::from_millis(1500));
    let (cpu1, hwm1) = proc_stat(pid)?;
    // The next polls bring the same list: the diff is empty, but it is still fetched and compared.
    std::thread::sleep(Duration::from_secs(5));
    let (cpu2, hwm2) = proc_stat(pid)?;
    let steady_cpu_per_poll = (cpu2 - cpu1) / 5.0;
    let json = serde_json::json!({
        "change_to_enforcement_ms_poll_1s": {"median": polled[polled.len() / 2], "max": polled[polled.len() - 1]},
        "push_to_enforcement_ms": {"median": pushed[pushed.len() / 2], "max": pushed[pushed.len() - 1]},
        "list_1m": {"body_mb": body_mb, "first_sync_s": first.as_secs_f64(), "first_sync_cpu_s": cpu1 - cpu0, "unchanged_sync_cpu_s_per_poll": steady_cpu_per_poll, "peak_rss_mib": hwm1.max(hwm2) as f64 / 1024.0},
    });
    let mut t = Table::new(&["measure", ">value"]);
    t.row([
        "ABS list change → enforced in the kernel, 1 s poll, median / max".into(),
        format!(
            "{} / {}",
            report::ms(polled[polled.len() / 2]),
            report::ms(polled[polled.len() - 1])
        ),
    ]);
    t.row([
        "ABS push → enforced when the answer arrives, median / max".into(),
        format!(
            "{} / {}",
            report::ms(pushed[pushed.len() / 2]),
            report::ms(pushed[pushed.len() - 1])
        ),
    ]);
    t.row([
        format!(
            "1M-identifier list (500k IPs, 500k tokens, {} of JSON): first sync, wall",
            report::bytes(body_mb * 1e6)
        ),
        report::secs(first.as_secs_f64()),
    ]);
    t.row(["the same: agent CPU time".into(), report::secs(cpu1 - cpu0)]);
    t.row([
        "each later poll of the unchanged 1M list (fetch, parse, diff), agent CPU".into(),
        report::secs(steady_cpu_per_poll),
    ]);
    t.row([
        "agent peak RSS while syncing the 1M list".into(),
        format!("{} MiB", report::num(hwm1.max(hwm2) as f64 / 1024.0)),
    ]);
    report::write("abs", json, &t, &[])?;
    Ok(())
}

//! `cargo xtask bench agent`: the agent as an operator meets it, through the real CLI.
//!
//! - add-to-enforced latency: wall time of `portcullis deny add ip ...` (process start,
//!   socket round trip, kernel map write, database commit), and the same request over an
//!   open socket without the process start;
//! - import rate: `portcullis deny import` of 1M IP entries and of 1M tokens;
//! - agent RSS growth per entry with 1M entries of each of the five kinds;
//! - the control API while the list writer imports: `status` round trips on a second
//!   connection during the 1M-token import.
//!
//! Writes `target/bench/agent.json` (see [`portcullis_tests::report`]).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use portcullis::control::answer::Imported;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts};
use portcullis_tests::report::{self, Table};

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn write_file(path: &Path, n: usize, line: impl Fn(usize) -> String) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(f, "{}", line(i))?;
    }
    f.flush()?;
    Ok(())
}

fn import(agent: &Agent, path: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = agent.cli(&[
        "deny",
        "import",
        path.to_str().context("utf8 path")?,
        "--json",
    ]);
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("import failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let r: Imported = serde_json::from_slice(&out.stdout)?;
    Ok(r.accepted as f64 / secs)
}

/// Sends `status` every 20 ms on its own connection until `stop`; returns the round trips (ms).
fn sample_status(
    socket: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<f64>>> {
    std::thread::spawn(move || {
        let s = std::os::unix::net::UnixStream::connect(socket)?;
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            w.write_all(b"{\"op\":\"status\"}\n")?;
            line.clear();
            r.read_line(&mut line)?;
            out.push(t.elapsed().as_secs_f64() * 1e3);
            if !line.contains("\"ok\":true") {
                bail!("status failed: {line}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(out)
    })
}

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("bench agent") {
        bail!("the agent benchmark loads BPF programs: run it as root");
    }
    const N: usize = 1_000_000;
    let dirs = AgentDirs::new();
    let agent = Agent::start(&dirs, &AgentOpts::default())?;
    let pid = agent.pid().context("agent pid")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rss0 = rss_kib(pid)?;

    eprintln!("bench agent: add-to-enforced latency");
    let mut cli_ms = Vec::new();
    for i in 0..300u32 {
        let ip = format!("198.19.{}.{}", 200 + i / 256, i % 256);
        let t = Instant::now();
        let out = agent.cli(&["deny", "add", "ip", &ip]);
        cli_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            bail!("add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let mut sock_ms = Vec::new();
    {
        let s = std::os::unix::net::UnixStream::connect(dirs.socket())?;
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        for i in 0..2000u32 {
            let req = format!(
                r#"{{"op":"add","list":"deny","kind":"ip","value":"198.18.{}.{}"}}"#,
                100 + i / 256,
                i % 256
            );
            let t = Instant::now();
            w.write_all(req.as_bytes())?;
            w.write_all(b"\n")?;
            line.clear();
            r.read_line(&mut line)?;
            sock_ms.push(t.elapsed().as_secs_f64() * 1e3);
            if !line.contains("\"ok\":true") {
                bail!("add failed: {line}");
            }
        }
    }
    cli_ms.sort_by(f64::total_cmp);
    sock_ms.sort_by(f64::total_cmp);

    let files = dirs.root.join("feeds");
    std::fs::create_dir_all(&files)?;
    let f = |name: &str| -> PathBuf { files.join(name) };
    eprintln!("bench agent: writing 5 x 1M-line feeds");
    write_file(&f("ips"), N, |i| {
        format!(
            "ip {}.{}.{}.{}",
            11 + (i >> 24) as u8,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8
        )
    })?;
    write_file(&f("tokens"), N, |i| {
        format!("token eyJhbGciOiJSUzI1NiJ9.bench-token-{i:08}")
    })?;
    write_file(&f("cookies"), N, |i| {
        format!("cookie JSESSIONID bench-session-{i:08}")
    })?;
    write_file(&f("keys"), N, |i| {
        format!("api-key X-API-Key bench-key-{i:08}")
    })?;
    write_file(&f("users"), N, |i| format!("username bench user {i:08}"))?;
    // The feeds' own writeback must not compete with the first import's fsyncs.
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    eprintln!("bench agent: importing");
    let ip_rate = import(&agent, &f("ips"))?;
    // The writer hands the batch's buffers back just after it answers.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let rss_ip = rss_kib(pid)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_status(dirs.socket(), stop.clone());
    let token_rate = import(&agent, &f("tokens"))?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut status_ms = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("status sampler panicked"))??;
    status_ms.sort_by(f64::total_cmp);
    let cookie_rate = import(&agent, &f("cookies"))?;
    let key_rate = import(&agent, &f("keys"))?;
    let user_rate = import(&agent, &f("users"))?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let rss_all = rss_kib(pid)?;
    let per_entry_all = (rss_all.saturating_sub(rss0) * 1024) as f64 / (5 * N) as f64;
    let per_entry_ip = (rss_ip.saturating_sub(rss0) * 1024) as f64 / N as f64;
    let db = std::fs::metadata(dirs.root.join("portcullis.db"))
        .map(|m| m.len())
        .unwrap_or(0);

    let json = serde_json::json!({
        "add_cli_ms": {"median": percentile(&cli_ms, 0.5), "p99": percentile(&cli_ms, 0.99)},
        "add_socket_ms": {"median": percentile(&sock_ms, 0.5), "p99": percentile(&sock_ms, 0.99)},
        "status_during_import_ms": {"samples": status_ms.len(), "median": percentile(&status_ms, 0.5), "p99": percentile(&status_ms, 0.99), "max": status_ms.last()},
        "import_per_s": {"ip": ip_rate, "token": token_rate, "cookie": cookie_rate, "api_key": key_rate, "username": user_rate},
        "rss_kib": {"start": rss0, "after_1m_ip": rss_ip, "after_1m_each_kind": rss_all},
        "rss_bytes_per_entry": {"ip": per_entry_ip, "all_kinds": per_entry_all},
        "database_bytes": db,
    });
    let mut t = Table::new(&["measure", ">value", "target"]);
    t.row([
        "`deny add ip` → enforced in the kernel, whole CLI process, median / p99".into(),
        format!(
            "{} / {}",
            report::ms(percentile(&cli_ms, 0.5)),
            report::ms(percentile(&cli_ms, 0.99))
        ),
        "p99 < 10 ms".into(),
    ]);
    t.row([
        "the same request on an open socket, median / p99".into(),
        format!(
            "{} / {}",
            report::ms(percentile(&sock_ms, 0.5)),
            report::ms(percentile(&sock_ms, 0.99))
        ),
        String::new(),
    ]);
    t.row([
        format!(
            "`status` while 1M tokens are imported, median / p99 / max ({} samples)",
            status_ms.len()
        ),
        format!(
            "{} / {} / {}",
            report::ms(percentile(&status_ms, 0.5)),
            report::ms(percentile(&status_ms, 0.99)),
            report::ms(status_ms.last().copied().unwrap_or(f64::NAN))
        ),
        "< 100 ms".into(),
    ]);
    t.row([
        "`deny import` of 1M IP entries".into(),
        report::si(ip_rate, "/s"),
        "≥ 200k/s".into(),
    ]);
    t.row([
        "`deny import` of 1M tokens".into(),
        report::si(token_rate, "/s"),
        "≥ 200k/s".into(),
    ]);
    t.row([
        "`deny import` of 1M cookies / API keys / usernames (table already 2–4M rows)".into(),
        format!(
            "{} / {} / {}",
            report::si(cookie_rate, "/s"),
            report::si(key_rate, "/s"),
            report::si(user_rate, "/s")
        ),
        String::new(),
    ]);
    t.row([
        "agent RSS growth per entry, 1M IP entries".into(),
        report::bytes(per_entry_ip),
        "≤ 200 B".into(),
    ]);
    t.row([
        "agent RSS growth per entry, 1M entries of each of the five kinds".into(),
        report::bytes(per_entry_all),
        "≤ 200 B".into(),
    ]);
    t.row([
        "database file with those 5M entries".into(),
        report::bytes(db as f64),
        String::new(),
    ]);
    report::write("agent", json, &t, &[])?;
    Ok(())
}

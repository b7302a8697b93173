//! Load for the benchmarks: wrk at full speed (closed loop), and a paced open-loop client
//! that sends at a fixed rate and times each answer from when it was due, so a stall
//! shows in the tail instead of slowing the sender down (no coordinated omission).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// One measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// wrk's latency text (`812.00us`, `1.20ms`, `2s`) in ms.
pub fn wrk_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => return None,
    })
}

/// wrk with 2 threads and `conns` connections for `secs` seconds against `url`, with more
/// wrk `args` (headers, `-s script`); fails on any non-2xx answer unless `any_status`.
pub fn wrk(
    url: &str,
    conns: u32,
    secs: u32,
    args: &[&str],
    any_status: bool,
) -> anyhow::Result<Run> {
    wrk_via(&[], 2, url, conns, secs, args, any_status)
}

/// [`wrk`] started through `prefix` (`ip netns exec NS`, `taskset -c 1`), with `threads`.
pub fn wrk_via(
    prefix: &[&str],
    threads: u32,
    url: &str,
    conns: u32,
    secs: u32,
    args: &[&str],
    any_status: bool,
) -> anyhow::Result<Run> {
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = std::process::Command::new(program);
            c.args(rest).arg("wrk");
            c
        }
        None => std::process::Command::new("wrk"),
    };
    let out = cmd
        .args([
            format!("-t{threads}").as_str(),
            "-c",
            &conns.to_string(),
            "-d",
            &secs.to_string(),
            "--latency",
        ])
        .args(args)
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || (!any_status && text.contains("Non-2xx")) {
        bail!(
            "wrk against {url} failed or got errors:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut r = Run::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            r.p50_ms = wrk_ms(v).unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("99%") {
            r.p99_ms = wrk_ms(v).unwrap_or(0.0);
        }
    }
    Ok(r)
}

/// Sends `request` (a whole HTTP/1.1 request, keep-alive) to `addr` at `rate` per second
/// for `secs` seconds over `conns` connections, each paced on its own schedule. Returns the
/// rate achieved and the latency percentiles measured from each request's due time, and
/// fails if an answer's status is not `want`.
pub fn paced(
    addr: SocketAddr,
    request: &[u8],
    want: u16,
    rate: u32,
    secs: u32,
    conns: u32,
) -> anyhow::Result<Run> {
    let per_conn = Duration::from_secs_f64(f64::from(conns) / f64::from(rate));
    let count = (u64::from(rate) * u64::from(secs) / u64::from(conns)) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let results: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|c| {
                s.spawn(move || -> anyhow::Result<Vec<f64>> {
                    let mut stream = TcpStream::connect(addr)?;
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    // The connections' schedules interleave.
                    let offset = per_conn.mul_f64(f64::from(c) / f64::from(conns));
                    let mut lat = Vec::with_capacity(count);
                    let mut buf = vec![0u8; 64 << 10];
                    for i in 0..count {
                        let due = start + offset + per_conn * i as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        stream.write_all(request)?;
                        let status = read_response(&mut stream, &mut buf)?;
                        if status != want {
                            bail!("answered {status}, expected {want}");
                        }
                        lat.push(due.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("load thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    let took = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Run {
        rps: all.len() as f64 / took,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    })
}

/// Reads one response (head, then a `Content-Length` body); returns its status.
fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<u16> {
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..])?;
        if n == 0 {
            bail!("connection closed mid-answer");
        }
        have += n;
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            if have == buf.len() {
                bail!("answer head too large");
            }
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).context("answer head")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = have - (end + 4);
        while body < length {
            let n = stream.read(&mut buf[..])?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            body += n;
        }
        return Ok(status);
    }
}

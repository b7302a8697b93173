//! The API under a flood: a legitimate client drives the L7 checker over TLS (wrk,
//! keep-alive) while the generator floods the host from 1M denied sources. The host is CPU 1
//! (agent, backend, wrk, and the server veth's NAPI, threaded and real-time as softirq work
//! would be); the attacker is CPU 0 (the generator's loop). Compared: no flood, the flood
//! dropped by Portcullis in XDP, by the same list in nftables, and unfiltered.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use portcullis::kernel::reference::Rng;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts};
use portcullis_tests::backend::Backend;
use portcullis_tests::load::{self, Run};
use portcullis_tests::netns::{SERVER_V4, in_netns};
use portcullis_tests::report::{self, Table};
use portcullis_tests::tls::self_signed;
use portcullis_tests::wire::{CpuTimes, Wire};

use super::{Feed, Tool, cidr_text, install};

/// The host's CPU (the generator runs on the other one).
const HOST_CPU: usize = 1;
const SECS: u32 = 8;
const CONNS: u32 = 16;
const PORT: u16 = 8443;

/// The flood rates tried: `PORTCULLIS_FLOOD_PPS` (comma-separated), 250k and 1M a second
/// by default.
fn flood_rates() -> Vec<u32> {
    match std::env::var("PORTCULLIS_FLOOD_PPS") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![250_000, 1_000_000],
    }
}

struct Outcome {
    /// Who drops the flood.
    filter: String,
    /// The flood's rate, if any.
    pps: Option<u32>,
    run: Run,
    /// Frames per second the flood put into the host.
    flood_pps: f64,
    /// Share of the host CPU spent in the kernel (system + softirq).
    host_kernel: f64,
}

/// One wrk run, with the flood at `pps` or none, and what it cost the host.
fn scenario(w: &mut Wire, filter: String, pps: Option<u32>) -> anyhow::Result<Outcome> {
    eprintln!("bench wire: under flood: {filter}, {pps:?} frames/s");
    if let Some(pps) = pps {
        w.flood(pps, SECS + 10, 1 - HOST_CPU)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    let (times, delivered) = (CpuTimes::now(), w.delivered()?);
    let start = std::time::Instant::now();
    let url = format!("https://{SERVER_V4}:{PORT}/bench?size=1k");
    let run = load::wrk_via(
        &["ip", "netns", "exec", &w.pair.client],
        1,
        &url,
        CONNS,
        SECS,
        &[],
        true,
    );
    let secs = start.elapsed().as_secs_f64();
    let (kernel, _) = CpuTimes::now().since(&times, HOST_CPU);
    let flood_pps = (w.delivered()? - delivered) as f64 / secs;
    if pps.is_some() {
        w.stop()?;
    }
    Ok(Outcome {
        filter,
        pps,
        run: run?,
        flood_pps,
        host_kernel: kernel / secs,
    })
}

pub fn run(w: &mut Wire, rng: &mut Rng) -> anyhow::Result<()> {
    let dirs = AgentDirs::new();
    let listener = in_netns(&w.pair.server, || TcpListener::bind("127.0.0.1:0"))??;
    let backend = Backend::start(listener);
    let certs = self_signed(&dirs.root, "api.test", "wire")?;
    let apis = dirs.root.join("apis");
    std::fs::create_dir_all(&apis)?;
    std::fs::write(
        apis.join("bench.json"),
        format!(
            r#"{{"api_metadata":{{"url":"/","servers":[{{"host":"127.0.0.1","port":{}}}]}}}}"#,
            backend.addr.port()
        ),
    )?;
    let config = format!(
        "[checker]\nhttps = \"{SERVER_V4}:{PORT}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\napi_dir = \"{}\"\n",
        certs.cert.display(),
        certs.key.display(),
        apis.display()
    );
    let agent = Agent::start(
        &dirs,
        &AgentOpts {
            config,
            ..AgentOpts::on_server(&w.pair)
        },
    )?;
    eprintln!("bench wire: under flood: 1M denied sources into the agent");
    let feed = Feed::new(1_000_000, rng);
    let list = dirs.root.join("feed.txt");
    let text: Vec<String> = feed.entries.iter().map(cidr_text).collect();
    std::fs::write(&list, text.join("\n"))?;
    let out = agent.cli(&["deny", "import", list.to_str().context("path")?]);
    ensure!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.set_sources(&feed.hits(rng))?;
    w.separate_queues(HOST_CPU)?;
    w.threaded_receiver(HOST_CPU)?;

    let rates = flood_rates();
    let mut outcomes = vec![scenario(
        w,
        "nothing to drop (Portcullis attached)".into(),
        None,
    )?];
    for &pps in &rates {
        outcomes.push(scenario(w, "Portcullis (XDP)".into(), Some(pps))?);
    }
    let pins = dirs.pins.0.to_string_lossy().into_owned();
    let out = agent.cli(&["detach", "--iface", &w.pair.server_if, "--pin-dir", &pins]);
    ensure!(
        out.status.success() && w.pair.server_xdp_mode() == "none",
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let (_nft, _) = install(Tool::Nftables, w, &feed)?;
        for &pps in &rates {
            outcomes.push(scenario(w, "nftables (same list)".into(), Some(pps))?);
        }
    }
    for &pps in &rates {
        outcomes.push(scenario(w, "no filter".into(), Some(pps))?);
    }
    drop(agent);
    report_flood(&outcomes)
}

fn report_flood(outcomes: &[Outcome]) -> anyhow::Result<()> {
    let Some(base) = outcomes.first().map(|o| o.run.rps) else {
        bail!("no outcome");
    };
    let mut t = Table::new(&[
        ">flood offered",
        "dropped by",
        ">legitimate requests/s",
        ">vs no flood",
        ">p99",
        ">flood into the host",
        ">host CPU in kernel",
    ]);
    for o in outcomes {
        t.row([
            o.pps.map_or("none".to_owned(), |p| {
                format!("{} frames/s", report::num(f64::from(p)))
            }),
            o.filter.clone(),
            report::num(o.run.rps),
            format!("{:.0}%", 100.0 * o.run.rps / base.max(1.0)),
            format!("{} ms", report::num(o.run.p99_ms)),
            format!("{} frames/s", report::num(o.flood_pps)),
            format!("{:.0}%", 100.0 * o.host_kernel),
        ]);
    }
    let json: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "filter": o.filter, "offered_pps": o.pps, "rps": o.run.rps, "p50_ms": o.run.p50_ms,
                "p99_ms": o.run.p99_ms, "flood_pps": o.flood_pps, "host_kernel": o.host_kernel,
            })
        })
        .collect();
    let mut notes = vec![format!(
        "The host is one CPU (agent, backend, wrk, and the receiving NAPI work, threaded and \
         real-time as softirq work would be); the attacker is the other (the generator, from \
         2^20 of 1M denied sources). wrk: {CONNS} connections, {SECS} s, 1 KiB answers. \
         \"host CPU in kernel\" is system + softirq time on the host CPU (the flood's, and \
         the legitimate traffic's own TCP and TLS work)."
    )];
    for o in outcomes
        .iter()
        .filter(|o| o.filter.starts_with("Portcullis"))
    {
        let share = o.run.rps / base.max(1.0);
        notes.push(format!(
            "Target: under a flood of {} frames/s dropped by Portcullis the legitimate client \
             keeps {:.0}% of its no-flood throughput (target 80%: {}).",
            report::num(o.flood_pps),
            100.0 * share,
            if share >= 0.8 { "met" } else { "missed" }
        ));
    }
    report::write(
        "wire-flood",
        serde_json::json!({ "outcomes": json }),
        &t,
        &notes,
    )?;
    Ok(())
}

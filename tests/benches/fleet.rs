//! `cargo xtask bench fleet`: how fast a change made on one host is applied on every host of
//! a fleet, and what a host that joins a large fleet pays. Against one real `redis-server`
//! on loopback:
//! - 100 full agent processes (small kernel maps so 100 fit; no interface attached): a deny
//!   added on one, then the time until each of the 100 applied it, p50/p99 over all rounds
//!   (each agent's time is the record's log id minus the change's start, plus the lag the
//!   agent itself measured from the log id to having applied it);
//! - 1M entries imported on one agent and published, then a fresh agent's cold resync: wall
//!   time to "in sync" with the 1M, its peak RSS, and Redis's memory per entry.
//!
//! Writes `target/bench/fleet.json`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use portcullis::control::answer::FleetState;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, ok};
use portcullis_tests::redis::Redis;
use portcullis_tests::report::{self, Table};

const AGENTS: usize = 100;
const ROUNDS: usize = 20;
const BIG: u32 = 1_000_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn state(agent: &Agent) -> Option<FleetState> {
    let out = agent.cli(&["fleet", "status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

fn hwm_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn fleet_config(port: u16, name: &str, host: &str, small: bool) -> String {
    let capacity = if small {
        "[capacity]\nv4_hosts = 4096\nv4_nets = 4096\nv6_hosts = 4096\nv6_prefixes = 1024\n"
    } else {
        ""
    };
    format!(
        "{capacity}[fleet]\nredis = \"redis://127.0.0.1:{port}\"\nname = \"{name}\"\nhost = \"{host}\"\n"
    )
}

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("bench fleet") {
        bail!("the fleet benchmark loads BPF programs: run it as root");
    }
    let root = std::env::temp_dir().join(portcullis_tests::unique("pcbenchredis"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let redis = Redis::start(root.clone(), port, "127.0.0.1", None, false)?;

    // Fan-out to 100 agents.
    eprintln!("bench fleet: starting {AGENTS} agents");
    let dirs: Vec<AgentDirs> = (0..AGENTS).map(|_| AgentDirs::new()).collect();
    let mut agents = Vec::with_capacity(AGENTS);
    for (i, d) in dirs.iter().enumerate() {
        let opts = AgentOpts {
            config: fleet_config(port, "fanout", &format!("h{i}"), true),
            ..AgentOpts::default()
        };
        agents.push(Agent::start(d, &opts).with_context(|| format!("agent {i}"))?);
    }
    let wait_all =
        |want: &dyn Fn(&FleetState) -> bool, what: &str| -> anyhow::Result<Vec<FleetState>> {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let states: Vec<Option<FleetState>> = agents.iter().map(state).collect();
                if states.iter().all(|s| s.as_ref().is_some_and(want)) {
                    return Ok(states.into_iter().flatten().collect());
                }
                if Instant::now() > deadline {
                    bail!("{what}: not all agents got there: {states:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
    let mut applied: Vec<u64> = wait_all(&|s| s.state == "in sync", "joining")?
        .iter()
        .map(|s| s.applied)
        .collect();
    let log = "portcullis:{fanout}:log";
    let mut samples = Vec::with_capacity(AGENTS * ROUNDS);
    let mut publish_ms = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let t0 = now_ms();
        ok(&agents[round % AGENTS].cli(&["deny", "add", "ip", &format!("198.18.200.{round}")]));
        let before = applied.clone();
        let states = {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let states: Vec<Option<FleetState>> = agents.iter().map(state).collect();
                if states
                    .iter()
                    .zip(&before)
                    .all(|(s, b)| s.as_ref().is_some_and(|s| s.applied > *b))
                {
                    break states.into_iter().flatten().collect::<Vec<_>>();
                }
                if Instant::now() > deadline {
                    bail!("round {round}: the change did not reach every agent");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let last = redis.text(&["XREVRANGE", log, "+", "-", "COUNT", "1"]);
        let id_ms: u64 = last
            .lines()
            .find_map(|l| l.trim().strip_prefix("1) 1) \""))
            .and_then(|l| l.split('-').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no log id in {last}"))?;
        publish_ms.push(id_ms.saturating_sub(t0) as f64);
        for s in &states {
            samples.push(id_ms.saturating_sub(t0) as f64 + s.lag_ms.unwrap_or(0) as f64);
        }
        applied = states.iter().map(|s| s.applied).collect();
        std::thread::sleep(Duration::from_millis(200));
    }
    samples.sort_by(f64::total_cmp);
    publish_ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    let publish_p50 = percentile(&publish_ms, 0.5);
    let agent_rss: f64 = agents
        .iter()
        .filter_map(|a| a.pid())
        .map(hwm_mib)
        .sum::<f64>()
        / AGENTS as f64;
    drop(agents);
    drop(dirs);

    // A large fleet: 1M entries published by one agent, then a cold join.
    eprintln!("bench fleet: importing and publishing {BIG} entries");
    let base_mem = redis.used_memory();
    let pd = AgentDirs::new();
    let publisher = Agent::start(
        &pd,
        &AgentOpts {
            config: fleet_config(port, "big", "publisher", false),
            ..AgentOpts::default()
        },
    )?;
    let feed = pd.root.join("big.txt");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&feed)?);
        // 99% hosts, 1% /24s, like a feed.
        for i in 0..BIG {
            if i % 100 == 99 {
                writeln!(f, "10.{}.{}.0/24", (i >> 16) & 0xff, (i >> 8) & 0xff)?;
            } else {
                writeln!(
                    f,
                    "10.{}.{}.{}",
                    (i >> 16) & 0xff,
                    (i >> 8) & 0xff,
                    i & 0xff
                )?;
            }
        }
    }
    let started = Instant::now();
    ok(&publisher.cli(&["deny", "import", &feed.display().to_string()]));
    let imported = started.elapsed();
    let entries = loop {
        let s = state(&publisher);
        if let Some(s) = s.as_ref().filter(|s| s.queued == 0 && s.published > 0) {
            break s.entries;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("publishing 1M did not finish: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let published = started.elapsed();
    let snapshot_len: u64 = redis
        .text(&["HLEN", "portcullis:{big}:snapshot"])
        .trim()
        .trim_start_matches("(integer) ")
        .parse()
        .unwrap_or(0);
    let per_entry =
        (redis.used_memory().saturating_sub(base_mem)) as f64 / snapshot_len.max(1) as f64;
    eprintln!("bench fleet: {snapshot_len} in the snapshot; a fresh agent joins");
    let jd = AgentDirs::new();
    let join_start = Instant::now();
    let joiner = Agent::start(
        &jd,
        &AgentOpts {
            config: fleet_config(port, "big", "joiner", false),
            ..AgentOpts::default()
        },
    )?;
    let joined = loop {
        let s = state(&joiner);
        if s.as_ref()
            .is_some_and(|s| s.state == "in sync" && s.entries >= entries)
        {
            break join_start.elapsed();
        }
        if join_start.elapsed() > Duration::from_secs(600) {
            bail!("the cold resync did not finish: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let joiner_rss = joiner.pid().map_or(0.0, hwm_mib);

    let mut t = Table::new(&["measure", ">value", ">target"]);
    t.row([
        format!("change on one host → applied on all {AGENTS}, p50"),
        report::ms(p50),
        String::new(),
    ]);
    t.row([
        format!("change on one host → applied on all {AGENTS}, p99"),
        report::ms(p99),
        "< 1 s".into(),
    ]);
    t.row([
        "change → in Redis (CLI, store, outbox, publish), p50".into(),
        report::ms(publish_p50),
        String::new(),
    ]);
    t.row([
        format!(
            "cold resync of {} entries (start to in sync)",
            report::si(entries as f64, "")
        ),
        report::secs(joined.as_secs_f64()),
        "< 10 s".into(),
    ]);
    t.row([
        "peak RSS of the joining agent".into(),
        format!("{} MiB", report::num(joiner_rss)),
        String::new(),
    ]);
    t.row([
        "Redis memory per entry (snapshot + 100k-record log)".into(),
        format!("{} B", report::num(per_entry)),
        "< 200 B".into(),
    ]);
    let note = format!(
        "{AGENTS} full agent processes (kernel maps of 4096 entries each, no interface attached) and Redis 7 on the same two cores; {ROUNDS} rounds, {} samples. Publishing {} entries from one agent took {} (import {}). The 1M list is 99% addresses and 1% /24s.",
        samples.len(),
        report::si(entries as f64, ""),
        report::secs(published.as_secs_f64()),
        report::secs(imported.as_secs_f64()),
    );
    let data = serde_json::json!({
        "agents": AGENTS, "rounds": ROUNDS,
        "apply_p50_ms": p50, "apply_p99_ms": p99, "publish_p50_ms": publish_p50,
        "agent_peak_rss_mib_avg": agent_rss,
        "entries": entries, "publish_s": published.as_secs_f64(), "import_s": imported.as_secs_f64(),
        "cold_resync_s": joined.as_secs_f64(), "joiner_peak_rss_mib": joiner_rss,
        "redis_bytes_per_entry": per_entry,
    });
    report::write("fleet", data, &t, &[note])?;
    drop((publisher, joiner, redis));
    let _ = std::fs::remove_dir_all(root);
    Ok(())
}

//! `cargo xtask bench sideband`: what a gateway waits for. Decisions per second at full
//! speed (wrk, 32 connections) and p50/p99 at a fixed 10 000 decisions/s (a paced client
//! timing each answer from when it was due), with 1M tokens on the deny list, for ASE's
//! sideband resource (`POST /ase/request`), the NGINX `auth_request` endpoint, and beside
//! them the inline checker forwarding the same request to a backend (plain HTTP, so only
//! the decision and the proxying differ). All on the same two cores as the agent. Writes
//! `target/bench/sideband.json`.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context as _, bail};
use portcullis_tests::agent::{Agent, AgentDirs};
use portcullis_tests::backend::Backend;
use portcullis_tests::load::{self, Run};
use portcullis_tests::report::{self, Table};

const RATE: u32 = 10_000;
const PACED_SECS: u32 = 6;
const PACED_CONNS: u32 = 16;
const WRK_SECS: u32 = 6;
const WRK_CONNS: u32 = 32;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The sideband body a gateway sends for a client's `GET /shop/items` with `token`.
fn ase_body(token: &str) -> String {
    format!(
        r#"{{"source_ip":"198.18.5.7","source_port":40000,"method":"GET","url":"/shop/items?page=2","http_version":"1.1","headers":[{{"Host":"shop.example"}},{{"Accept":"application/json"}},{{"User-Agent":"bench/1"}},{{"Authorization":"Bearer {token}"}}]}}"#
    )
}

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("bench sideband") {
        bail!("the sideband benchmark loads BPF programs: run it as root");
    }
    let dirs = AgentDirs::new();
    let backend = Backend::start(TcpListener::bind("127.0.0.1:0")?);
    let apis = dirs.root.join("apis");
    std::fs::create_dir_all(&apis)?;
    std::fs::write(
        apis.join("shop.json"),
        format!(
            r#"{{"api_metadata":{{"url":"/shop","hostname":"*","oauth2_access_token":true,"servers":[{{"host":"127.0.0.1","port":{}}}]}}}}"#,
            backend.addr.port()
        ),
    )?;
    let (inline, sideband) = (free_port()?, free_port()?);
    let config = format!(
        "[checker]\nhttp = \"127.0.0.1:{inline}\"\napi_dir = \"{}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n[sideband]\nhttp = \"127.0.0.1:{sideband}\"\n",
        apis.display()
    );
    let agent = Agent::with_config(&dirs, config)?;
    eprintln!("bench sideband: putting 1M tokens on the deny list");
    let feed = dirs.root.join("tokens");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&feed)?);
        for i in 0..1_000_000u32 {
            writeln!(f, "token bench-denied-{i:08}")?;
        }
    }
    let out = agent.cli(&["deny", "import", feed.to_str().context("path")?]);
    if !out.status.success() {
        bail!("import failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    let honest = ase_body("honest-client-token");
    let ase_request = |body: &str| {
        format!(
            "POST /ase/request HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-CorrelationID: bench\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let nginx_request = |token: &str| {
        format!(
            "GET /portcullis/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Original-Method: GET\r\nX-Original-URI: /shop/items?page=2\r\nX-Original-Host: shop.example\r\nX-Real-IP: 198.18.5.7\r\nAccept: application/json\r\nUser-Agent: bench/1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
    };
    let inline_request = |token: &str| {
        format!(
            "GET /shop/items?page=2&size=1k HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 198.18.5.7\r\nAccept: application/json\r\nUser-Agent: bench/1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
    };
    let sb: SocketAddr = format!("127.0.0.1:{sideband}").parse()?;
    let il: SocketAddr = format!("127.0.0.1:{inline}").parse()?;
    // A denied token is refused by each, through the same listeners (checked, not assumed).
    let denied = "bench-denied-00123456";
    for (addr, req) in [
        (sb, ase_request(&ase_body(denied))),
        (sb, nginx_request(denied)),
        (il, inline_request(denied)),
    ] {
        load::paced(addr, req.as_bytes(), 403, 100, 1, 1).context("a denied token")?;
    }

    // wrk's script for the sideband POST.
    let script = dirs.root.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            serde_json::to_string(&honest)?
        ),
    )?;
    let script = script.to_str().context("path")?.to_owned();
    let nginx_headers = [
        "-H",
        "X-Original-Method: GET",
        "-H",
        "X-Original-URI: /shop/items?page=2",
        "-H",
        "X-Original-Host: shop.example",
        "-H",
        "X-Real-IP: 198.18.5.7",
        "-H",
        "Authorization: Bearer honest-client-token",
    ];
    let inline_headers = [
        "-H",
        "Host: shop.example",
        "-H",
        "X-Forwarded-For: 198.18.5.7",
        "-H",
        "Authorization: Bearer honest-client-token",
    ];
    struct Target<'a> {
        name: &'static str,
        url: String,
        wrk_args: Vec<&'a str>,
        addr: SocketAddr,
        request: String,
    }
    let targets = [
        Target {
            name: "ASE sideband POST /ase/request",
            url: format!("http://127.0.0.1:{sideband}/ase/request"),
            wrk_args: vec!["-s", &script],
            addr: sb,
            request: ase_request(&honest),
        },
        Target {
            name: "NGINX auth_request /portcullis/auth",
            url: format!("http://127.0.0.1:{sideband}/portcullis/auth"),
            wrk_args: nginx_headers.to_vec(),
            addr: sb,
            request: nginx_request("honest-client-token"),
        },
        Target {
            name: "inline checker (decision + proxy to backend)",
            url: format!("http://127.0.0.1:{inline}/shop/items?page=2&size=1k"),
            wrk_args: inline_headers.to_vec(),
            addr: il,
            request: inline_request("honest-client-token"),
        },
    ];
    // Interleaved rounds; the median of three is kept.
    let mut full: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    let mut paced: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..3 {
        for (i, t) in targets.iter().enumerate() {
            eprintln!("bench sideband: round {round}, {}", t.name);
            full[i].push(load::wrk(&t.url, WRK_CONNS, WRK_SECS, &t.wrk_args, false)?);
            paced[i].push(load::paced(
                t.addr,
                t.request.as_bytes(),
                200,
                RATE,
                PACED_SECS,
                PACED_CONNS,
            )?);
        }
    }
    let median = |mut r: Vec<Run>, key: fn(&Run) -> f64| {
        r.sort_by(|a, b| key(a).total_cmp(&key(b)));
        r[1]
    };
    let full: Vec<Run> = full.into_iter().map(|r| median(r, |x| x.rps)).collect();
    let paced: Vec<Run> = paced.into_iter().map(|r| median(r, |x| x.p99_ms)).collect();

    let mut t = Table::new(&[
        "endpoint",
        ">decisions/s (full speed)",
        ">p50 at 10k/s",
        ">p99 at 10k/s",
    ]);
    let mut data = serde_json::Map::new();
    for (i, target) in targets.iter().enumerate() {
        t.row([
            target.name.to_string(),
            report::num(full[i].rps),
            report::ms(paced[i].p50_ms),
            report::ms(paced[i].p99_ms),
        ]);
        data.insert(
            target.name.into(),
            serde_json::json!({"max_rps": full[i].rps, "paced_rps": paced[i].rps, "p50_ms": paced[i].p50_ms, "p99_ms": paced[i].p99_ms}),
        );
    }
    let worst = paced[..2].iter().map(|r| r.p99_ms).fold(0.0, f64::max);
    let note = format!(
        "1M tokens on the deny list; a denied token got 403 from each. Target p99 < 1 ms at 10k decisions/s for the sideband endpoints: {} (worst p99 {}). Paced client: {PACED_CONNS} keep-alive connections, latency from each request's due time.",
        if worst < 1.0 { "met" } else { "missed" },
        report::ms(worst)
    );
    data.insert("denied_tokens".into(), 1_000_000.into());
    data.insert("rate".into(), RATE.into());
    report::write("sideband", serde_json::Value::Object(data), &t, &[note])?;
    drop(agent);
    Ok(())
}

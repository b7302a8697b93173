//! `cargo xtask bench checker`: the L7 checker's throughput and latency over TLS with
//! keep-alive and 1 KiB responses, with 1M tokens on the deny list, side by side in one run
//! with the backend direct and with Debian's nginx as a TLS reverse proxy, on the same cores.
//! Load comes from wrk (32 connections); each target is measured three times, interleaved,
//! and the median run is reported. Writes `target/bench/checker.json`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use portcullis_tests::agent::{Agent, AgentDirs};
use portcullis_tests::backend::Backend;
use portcullis_tests::load::{self, Run};
use portcullis_tests::report::{self, Table};
use portcullis_tests::tls::self_signed;

const SECS: u32 = 8;
const CONNS: u32 = 32;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wrk(url: &str) -> anyhow::Result<Run> {
    load::wrk(
        url,
        CONNS,
        SECS,
        &["-H", "Authorization: Bearer honest-client-token"],
        false,
    )
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers too.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("bench checker") {
        bail!("the checker benchmark loads BPF programs: run it as root");
    }
    let dirs = AgentDirs::new();
    let backend = Backend::start(TcpListener::bind("127.0.0.1:0")?);
    let certs = self_signed(&dirs.root, "bench.test", "bench")?;
    let apis = dirs.root.join("apis");
    std::fs::create_dir_all(&apis)?;
    std::fs::write(
        apis.join("bench.json"),
        format!(
            r#"{{"api_metadata":{{"url":"/","oauth2_access_token":true,"cookie":"SID","servers":[{{"host":"127.0.0.1","port":{}}}]}}}}"#,
            backend.addr.port()
        ),
    )?;
    let pc_port = free_port()?;
    let config = format!(
        "[checker]\nhttps = \"127.0.0.1:{pc_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\napi_dir = \"{}\"\n",
        certs.cert.display(),
        certs.key.display(),
        apis.display()
    );
    let agent = Agent::with_config(&dirs, config)?;
    eprintln!("bench checker: putting 1M tokens on the deny list");
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

    let ng_port = free_port()?;
    let ng_dir = dirs.root.join("nginx");
    std::fs::create_dir_all(&ng_dir)?;
    let conf = ng_dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             upstream backend {{ server 127.0.0.1:{b}; keepalive 64; }}\n\
             server {{\n  listen 127.0.0.1:{p} ssl http2;\n  ssl_certificate {c};\n  ssl_certificate_key {k};\n  keepalive_requests 100000;\n\
               location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}\n }}\n}}\n",
            d = ng_dir.display(),
            b = backend.addr.port(),
            p = ng_port,
            c = certs.cert.display(),
            k = certs.key.display()
        ),
    )?;
    let nginx = Nginx(
        Command::new("nginx")
            .args(["-c"])
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx)")?,
    );
    std::thread::sleep(Duration::from_millis(500));

    let targets = [
        (
            "backend direct (HTTP)",
            format!("http://127.0.0.1:{}/bench?size=1k", backend.addr.port()),
        ),
        (
            "nginx (TLS proxy)",
            format!("https://127.0.0.1:{ng_port}/bench?size=1k"),
        ),
        (
            "portcullis (TLS proxy + checks)",
            format!("https://127.0.0.1:{pc_port}/bench?size=1k"),
        ),
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..3 {
        for (i, (name, url)) in targets.iter().enumerate() {
            eprintln!("bench checker: round {round}, {name}");
            runs[i].push(wrk(url)?);
        }
    }
    drop(nginx);
    let median: Vec<Run> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            r[1]
        })
        .collect();
    // A denied token really is refused through the same listener.
    let denied_code = portcullis_tests::http::curl_status(
        &format!("https://127.0.0.1:{pc_port}/bench"),
        &["-k", "-H", "Authorization: Bearer bench-denied-00123456"],
    )
    .to_string();
    let (direct, ng, pc) = (median[0], median[1], median[2]);
    let json = serde_json::json!({
        "connections": CONNS, "seconds": SECS, "denied_tokens": 1_000_000, "denied_token_answer": denied_code,
        "backend_direct": {"rps": direct.rps, "p50_ms": direct.p50_ms, "p99_ms": direct.p99_ms},
        "nginx": {"rps": ng.rps, "p50_ms": ng.p50_ms, "p99_ms": ng.p99_ms},
        "portcullis": {"rps": pc.rps, "p50_ms": pc.p50_ms, "p99_ms": pc.p99_ms},
        "portcullis_vs_nginx_rps": pc.rps / ng.rps,
        "portcullis_added_p99_ms": pc.p99_ms - direct.p99_ms,
    });
    let mut t = Table::new(&["target", ">requests/s", ">p50", ">p99"]);
    for (i, r) in median.iter().enumerate() {
        t.row([
            targets[i].0.to_string(),
            report::num(r.rps),
            report::ms(r.p50_ms),
            report::ms(r.p99_ms),
        ]);
    }
    let note = format!(
        "portcullis / nginx throughput: {:.2}x; p99 added over the backend: {}; a denied token got HTTP {denied_code}",
        pc.rps / ng.rps,
        report::ms(pc.p99_ms - direct.p99_ms)
    );
    report::write("checker", json, &t, &[note])?;
    drop(agent);
    Ok(())
}

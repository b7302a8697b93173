//! `cargo xtask demo`: Portcullis's main job in one minute, with the real daemon and CLI.
//! Makes a throwaway pair of network namespaces joined by veth, runs `portcullis agent` on the
//! server side attached to its veth, then drives it with the CLI: a denied client's pings are
//! dropped by XDP while an unlisted client's are answered, an allow entry wins inside a
//! denied range, and the counters show it. Every step states what it expects; the demo ends
//! with a verdict and exits non-zero when any expectation failed. Everything it creates is
//! removed at the end.

use anyhow::Context as _;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts};
use portcullis_tests::backend::Backend;
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4, in_netns};

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("demo") {
        anyhow::bail!("the demo attaches XDP and creates namespaces: run it as root");
    }
    let pair = NetnsPair::new().context("creating namespaces")?;
    let dirs = AgentDirs::new();
    println!(
        "== namespaces {} (server {SERVER_V4}, veth {}) and {} (clients {})",
        pair.server,
        pair.server_if,
        pair.client,
        CLIENT_V4.join(", ")
    );
    // An API server behind the L7 checker, both on the server side.
    let backend = in_netns(&pair.server, || {
        Backend::start(std::net::TcpListener::bind((SERVER_V4, 0)).expect("bind backend"))
    })?;
    let certs = portcullis_tests::tls::self_signed(&dirs.root, "shop.test", "demo")?;
    let apis = dirs.root.join("apis");
    std::fs::create_dir_all(&apis)?;
    std::fs::write(
        apis.join("shop.json"),
        format!(
            r#"{{"api_metadata":{{"protocol":"https","url":"/shop","hostname":"*","oauth2_access_token":true,"enable_blocking":true,
                "decoy_config":{{"decoy_enabled":true,"response_code":200,"response_message":"admin console\n","decoy_subpaths":["admin"]}},
                "servers":[{{"host":"{SERVER_V4}","port":{}}}]}}}}"#,
            backend.addr.port()
        ),
    )?;
    let config = format!(
        "[checker]\nhttps = \"{SERVER_V4}:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\napi_dir = \"{}\"\n",
        certs.cert.display(),
        certs.key.display(),
        apis.display()
    );
    let opts = AgentOpts {
        config,
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts)?;
    println!(
        "== portcullis agent --iface {} --https {SERVER_V4}:8443 running (API /shop -> backend {})",
        pair.server_if, backend.addr
    );

    let failures = std::cell::RefCell::new(Vec::<String>::new());
    let expect = |ok: bool, what: String| {
        if !ok {
            println!("   !! UNEXPECTED: {what}");
            failures.borrow_mut().push(what);
        }
    };
    let run = |args: &[&str]| -> anyhow::Result<()> {
        println!("\n$ portcullis {}", args.join(" "));
        let out = agent.cli(args);
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        expect(
            out.status.success(),
            format!("`portcullis {}` failed ({})", args.join(" "), out.status),
        );
        Ok(())
    };
    let [a, b, c] = CLIENT_V4;
    // Answered means all four; dropped means none: one lost ping proves nothing.
    let ping = |who: &str, src: &str, answered: bool| -> anyhow::Result<()> {
        let got = pair.ping(src, SERVER_V4, 4)?;
        let verdict = if got == 0 {
            "LOST (dropped by XDP)"
        } else {
            "answered"
        };
        println!("   ping from {who} {src}: {got}/4 {verdict}");
        let want = if answered { 4 } else { 0 };
        expect(
            got == want,
            format!("ping from {who} {src}: {got}/4 answered, expected {want}/4"),
        );
        Ok(())
    };
    println!("\n== before any entry");
    ping("client A", a, true)?;
    ping("client B", b, true)?;

    run(&["deny", "add", "ip", a, "--reason", "demo attacker"])?;
    ping("client A", a, false)?;
    ping("client B", b, true)?;

    run(&[
        "deny",
        "add",
        "ip",
        "198.18.0.0/29",
        "--ttl",
        "10m",
        "--force",
    ])?;
    run(&["allow", "add", "ip", c])?;
    ping("client B", b, false)?;
    ping("client C", c, true)?;

    run(&["deny", "remove", "ip", "198.18.0.0/29"])?;
    run(&["deny", "remove", "ip", a])?;
    ping("client A", a, true)?;

    // The L7 checker: TLS, a denied token, a decoy turned into a kernel drop.
    // `want`: the HTTP status expected, or None for "no answer" (dropped by XDP).
    let curl = |src: &str, path: &str, token: &str, want: Option<&str>| -> anyhow::Result<()> {
        let auth = format!("Authorization: Bearer {token}");
        let out = pair.curl_https(
            src,
            &certs.ca,
            ("shop.test", 8443),
            path,
            &["-H", &auth, "-w", " [HTTP %{http_code}]"],
        )?;
        let body = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
        let note = if out.status.code() == Some(28) {
            "(no answer: connection dropped by XDP)"
        } else {
            ""
        };
        println!("   curl from {src} https://shop.test:8443{path} (token {token}): {body}{note}");
        let ok = match want {
            Some(code) => body.ends_with(&format!("[HTTP {code}]")),
            None => out.status.code() == Some(28),
        };
        expect(
            ok,
            format!("curl from {src} {path}: got {body:?}, expected {want:?}"),
        );
        Ok(())
    };
    println!("\n== the L7 checker");
    curl(b, "/shop/items", "eyJhbGciOiJIUzI1NiJ9.stolen", Some("200"))?;
    run(&["deny", "add", "token", "eyJhbGciOiJIUzI1NiJ9.stolen"])?;
    curl(b, "/shop/items", "eyJhbGciOiJIUzI1NiJ9.stolen", Some("403"))?;
    curl(b, "/shop/items", "eyJhbGciOiJIUzI1NiJ9.honest", Some("200"))?;
    println!("   -- client C visits a decoy path --");
    curl(c, "/shop/admin", "eyJhbGciOiJIUzI1NiJ9.honest", Some("200"))?;
    println!("   (C is allow-listed, so nothing happens to it; take it off the allow list)");
    run(&["allow", "remove", "ip", c])?;
    curl(c, "/shop/admin", "eyJhbGciOiJIUzI1NiJ9.honest", Some("200"))?;
    curl(c, "/shop/items", "eyJhbGciOiJIUzI1NiJ9.honest", None)?;
    ping("client C", c, false)?;
    run(&["deny", "list"])?;
    run(&["stats"])?;
    run(&["status"])?;

    drop(agent);
    println!("\n== agent stopped (SIGTERM); removing the filter and the namespaces");
    portcullis::kernel::detach(&dirs.pins.0, &pair.server_if)?;
    let failures = failures.into_inner();
    if failures.is_empty() {
        println!("\n== demo passed: every step did what it said");
        return Ok(());
    }
    anyhow::bail!(
        "demo FAILED: {} step(s) did not do what they said:\n  {}",
        failures.len(),
        failures.join("\n  ")
    )
}

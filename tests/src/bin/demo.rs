//! `cargo xtask demo`: Portcullis's main job in one minute, with the real daemon and CLI.
//! Makes a throwaway pair of network namespaces joined by veth, runs `portcullis agent` on the
//! server side attached to its veth, then drives it with the CLI: a denied client's pings are
//! dropped by XDP while an unlisted client's are answered, an allow entry wins inside a
//! denied range, and the counters show it. Everything it creates is removed at the end.

use anyhow::Context as _;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts};
use portcullis_tests::netns::{NetnsPair, CLIENT_V4, SERVER_V4};

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("demo") {
        anyhow::bail!("the demo attaches XDP and creates namespaces: run it as root");
    }
    let pair = NetnsPair::new().context("creating namespaces")?;
    let dirs = AgentDirs::new();
    println!("== namespaces {} (server {SERVER_V4}, veth {}) and {} (clients {})", pair.server, pair.server_if, pair.client, CLIENT_V4.join(", "));
    let opts = AgentOpts { netns: Some(pair.server.clone()), ifaces: vec![pair.server_if.clone()], ..AgentOpts::default() };
    let agent = Agent::start(&dirs, &opts)?;
    println!("== portcullis agent --iface {} running (state in {})", pair.server_if, dirs.root.display());

    let run = |args: &[&str]| -> anyhow::Result<()> {
        println!("\n$ portcullis {}", args.join(" "));
        let out = agent.cli(args);
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    let [a, b, c] = CLIENT_V4;
    let ping = |who: &str, src: &str| -> anyhow::Result<()> {
        let got = pair.ping(src, SERVER_V4, 4)?;
        let verdict = if got == 0 { "LOST (dropped by XDP)" } else { "answered" };
        println!("   ping from {who} {src}: {got}/4 {verdict}");
        Ok(())
    };
    println!("\n== before any entry");
    ping("client A", a)?;
    ping("client B", b)?;

    run(&["deny", "add", "ip", a, "--reason", "demo attacker"])?;
    ping("client A", a)?;
    ping("client B", b)?;

    run(&["deny", "add", "ip", "198.18.0.0/29", "--ttl", "10m", "--force"])?;
    run(&["allow", "add", "ip", c])?;
    ping("client B", b)?;
    ping("client C", c)?;

    run(&["deny", "add", "token", "eyJhbGciOiJIUzI1NiJ9.stolen"])?;
    run(&["deny", "list"])?;
    run(&["stats"])?;
    run(&["deny", "remove", "ip", "198.18.0.0/29"])?;
    run(&["deny", "remove", "ip", a])?;
    ping("client A", a)?;
    run(&["status"])?;

    drop(agent);
    println!("\n== agent stopped (SIGTERM); removing the filter and the namespaces");
    portcullis::kernel::detach(&dirs.pins.0, &pair.server_if)?;
    Ok(())
}

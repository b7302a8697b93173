//! Reloading the configuration while the agent runs (`portcullis reload`, SIGHUP): what can
//! change live changes (interfaces, enforce/monitor, the ABS feed, the fleet), what cannot is named, and
//! a file that does not validate is refused with the reason while the old one keeps running.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use portcullis::control::answer::Reloaded;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, TempGroup, answer, err};
use portcullis_tests::fake_abs::{Answer, FakeAbs};
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4, run};
use portcullis_tests::privileged;
use portcullis_tests::redis::Redis;

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Rewrites the agent's config file (the helper's, which the agent was started with).
fn write_config(dirs: &AgentDirs, text: &str) {
    std::fs::write(
        dirs.root.join("portcullis.toml"),
        format!("prune_interval = \"1s\"\n{text}"),
    )
    .expect("config");
}

fn xdp_on(ns: &str, iface: &str) -> bool {
    run(&["ip", "-n", ns, "-d", "link", "show", "dev", iface])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("prog/xdp"))
        .unwrap_or(false)
}

#[test]
fn reload_applies_interfaces_and_mode_names_restart_keys_and_refuses_bad_files() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    // A second interface in the server namespace for the reload to attach to.
    let (extra, peer) = (
        format!("{}x", pair.server_if),
        format!("{}y", pair.server_if),
    );
    run(&[
        "ip",
        "-n",
        &pair.server,
        "link",
        "add",
        &extra,
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ])
    .expect("veth");
    for i in [&extra, &peer] {
        run(&["ip", "-n", &pair.server, "link", "set", i, "up"]).expect("up");
    }
    let dirs = AgentDirs::new();
    let one = format!(
        "interfaces = [\"{}\"]\nmode = \"enforce\"\n",
        pair.server_if
    );
    let opts = AgentOpts {
        netns: Some(pair.server.clone()),
        config: one.clone(),
        ..AgentOpts::default()
    };
    let mut agent = Agent::start(&dirs, &opts).expect("agent");
    let denied = CLIENT_V4[0];
    agent.add("deny", &[&["ip", denied]]);
    pair.assert_pings(denied, SERVER_V4, 2, 0, "denied before the reload");

    // Two interfaces, monitor mode, and a restart-only key.
    write_config(
        &dirs,
        &format!(
            "interfaces = [\"{}\", \"{extra}\"]\nmode = \"monitor\"\nshutdown_grace = \"3s\"\n",
            pair.server_if
        ),
    );
    let r: Reloaded = answer(&agent.cli(&["reload", "--json"]));
    assert!(r.applied.contains(&format!("attached to {extra}")), "{r:?}");
    assert!(r.applied.contains(&"mode monitor".to_string()), "{r:?}");
    assert_eq!(r.restart_needed, ["shutdown_grace"], "{r:?}");
    assert!(xdp_on(&pair.server, &extra), "XDP on the new interface");
    assert_eq!(agent.status().mode.as_str(), "monitor");
    pair.assert_pings(
        denied,
        SERVER_V4,
        2,
        2,
        "monitor mode passes the denied client",
    );

    // Files that do not validate: refused with the reason, nothing changes.
    for (bad, reason) in [
        ("mode = \"bogus\"\n".to_string(), "mode"),
        ("interfaces = [\"pc-none0\"]\n".to_string(), "pc-none0"),
        ("interfaces = [\n".to_string(), "TOML"),
        (String::new(), "lists no interface"),
    ] {
        write_config(&dirs, &bad);
        let e = err(&agent.cli(&["reload"]));
        assert!(
            e.contains("reload refused") && e.contains(reason),
            "{bad}: {e}"
        );
        let s = agent.status();
        assert_eq!(s.mode.as_str(), "monitor", "{bad}");
        assert_eq!(s.interfaces.len(), 2, "{bad}: {:?}", s.interfaces);
        assert!(xdp_on(&pair.server, &extra), "{bad}");
    }
    pair.assert_pings(
        denied,
        SERVER_V4,
        2,
        2,
        "still monitoring after refused reloads",
    );

    // SIGHUP: back to one interface, enforcing.
    write_config(&dirs, &one);
    let pid = agent.pid().expect("pid");
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_for("the SIGHUP reload", || {
        agent.status().mode.as_str() == "enforce" && !xdp_on(&pair.server, &extra)
    });
    assert_eq!(agent.status().interfaces.len(), 1);
    pair.assert_pings(denied, SERVER_V4, 2, 0, "enforcing again after SIGHUP");
    assert!(agent.log_text().contains("configuration reloaded"));
    agent.stop().expect("stop");
}

#[test]
fn reload_starts_changes_and_stops_the_abs_feed() {
    privileged!();
    let abs = FakeAbs::start(TcpListener::bind("127.0.0.1:0").expect("bind"));
    abs.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.80.1"],"usernames":["mallory"]}}"#.into(),
    ));
    let dirs = AgentDirs::new();
    let agent = Agent::with_config(&dirs, String::new()).expect("agent");
    assert!(agent.status().abs.is_none());
    let abs_rows = || agent.entries_from("deny", "abs").len();
    write_config(
        &dirs,
        &portcullis_tests::fake_abs::agent_config(&dirs, &abs.url(), ""),
    );
    let r: Reloaded = answer(&agent.cli(&["reload", "--json"]));
    assert!(
        r.applied
            .iter()
            .any(|a| a.starts_with("ABS feed restarted")),
        "{r:?}"
    );
    assert!(r.restart_needed.is_empty(), "{r:?}");
    wait_for("the ABS list after the reload", || abs_rows() == 2);

    // A missing secret file: refused, the feed keeps polling with the old settings.
    let polls = abs.requests("GET /v4/abs/attacklist").len();
    write_config(
        &dirs,
        &format!(
            "[abs]\nurl = \"{}\"\naccess_key = \"ak-1\"\nsecret_key_file = \"{}/gone\"\ninsecure = true\n",
            abs.url(),
            dirs.root.display()
        ),
    );
    let e = err(&agent.cli(&["reload"]));
    assert!(e.contains("abs.secret_key_file"), "{e}");
    wait_for("polls going on", || {
        abs.requests("GET /v4/abs/attacklist").len() > polls + 1
    });

    // No [abs]: the feed stops (its entries stay until an operator clears them).
    write_config(&dirs, "");
    let r: Reloaded = answer(&agent.cli(&["reload", "--json"]));
    assert!(r.applied.contains(&"ABS feed off".to_string()), "{r:?}");
    assert!(agent.status().abs.is_none());
    let polls = abs.requests("GET /v4/abs/attacklist").len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        abs.requests("GET /v4/abs/attacklist").len(),
        polls,
        "no polls after off"
    );
    assert_eq!(abs_rows(), 2);
}

#[test]
fn only_root_reloads() {
    privileged!();
    let group = TempGroup::new().expect("group");
    let dirs = AgentDirs::new();
    let agent =
        Agent::with_config(&dirs, format!("socket_group = \"{}\"\n", group.name)).expect("agent");
    // As in a real install, the socket's directory is open to all (/run/portcullis is 0755).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dirs.root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = group.cli_as_member(&dirs.socket(), &["reload"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("for root"), "{e}");
    assert!(agent.status().interfaces.is_empty());
}

#[test]
fn a_broken_api_file_refuses_the_reload_and_no_api_vanishes() {
    privileged!();
    let s = portcullis_tests::checker_setup::setup_apis(&[("shop", "")]);
    let api_dir = s.dirs.root.join("apis");
    std::fs::write(api_dir.join("broken.json"), "{ not json").expect("write");
    let e = err(&s.agent.cli(&["reload"]));
    assert!(e.contains("checker.api_dir") && e.contains("broken"), "{e}");
    let (status, _) = s.curl("/shop/x", &[]);
    assert_eq!(status, 200, "the running APIs answer as before");
    // The older verb is all or nothing too.
    let e = err(&s.agent.cli(&["api", "reload"]));
    assert!(e.contains("not reloaded") && e.contains("broken"), "{e}");
    assert_eq!(
        s.curl("/shop/x", &[]).0,
        200,
        "still there after `api reload`"
    );
    std::fs::remove_file(api_dir.join("broken.json")).expect("rm");
    let r: Reloaded = answer(&s.agent.cli(&["reload", "--json"]));
    assert!(
        r.applied
            .iter()
            .any(|a| a == "checker: 1 API definition(s) read again"),
        "{r:?}"
    );
    assert!(
        r.applied
            .iter()
            .any(|a| a == "checker: TLS certificate read again"),
        "{r:?}"
    );
}

#[test]
fn reload_joins_switches_and_leaves_the_fleet() {
    privileged!();
    let root = std::env::temp_dir().join(portcullis_tests::unique("pcredis"));
    let port = portcullis_tests::checker_setup::free_port();
    let _redis = Redis::start(root, port, "127.0.0.1", None, false).expect("redis");
    let fleet = |name: &str, host: &str| {
        format!(
            "[fleet]\nredis = \"redis://127.0.0.1:{port}\"\nname = \"{name}\"\nhost = \"{host}\"\n"
        )
    };
    let (x, y) = (
        portcullis_tests::unique("fleetx"),
        portcullis_tests::unique("fleety"),
    );
    let (da, db) = (AgentDirs::new(), AgentDirs::new());
    let a = Agent::with_config(&da, fleet(&x, "a")).expect("agent a");
    let b = Agent::with_config(&db, String::new()).expect("agent b");
    let has = |agent: &Agent, ip: &str| {
        agent
            .entries("deny")
            .iter()
            .any(|e| e.value == ip || e.value.strip_suffix("/32") == Some(ip))
    };
    let in_sync = |agent: &Agent, name: &str| {
        agent
            .status()
            .fleet
            .is_some_and(|f| f.fleet == name && f.state == "in sync" && f.queued == 0)
    };

    // B joins fleet X by a reload: both ways, down to each other's lists.
    write_config(&db, &fleet(&x, "b"));
    let r: Reloaded = answer(&b.cli(&["reload", "--json"]));
    assert!(
        r.applied
            .iter()
            .any(|l| l.starts_with(&format!("fleet sync restarted ({x} on redis://127.0.0.1"))),
        "{r:?}"
    );
    assert!(r.restart_needed.is_empty(), "{r:?}");
    wait_for("B in sync with X", || in_sync(&b, &x));
    a.add("deny", &[&["ip", "198.18.90.1"]]);
    wait_for("A's deny on B", || has(&b, "198.18.90.1"));
    b.add("deny", &[&["ip", "198.18.90.2"]]);
    wait_for("B's deny on A", || has(&a, "198.18.90.2"));

    // A reload that changes nothing fleet-wise leaves the engine alone.
    let r: Reloaded = answer(&b.cli(&["reload", "--json"]));
    assert!(!r.applied.iter().any(|l| l.contains("fleet")), "{r:?}");

    // A password file that does not read refuses the move: B stays in X.
    write_config(
        &db,
        &format!(
            "{}password_file = \"{}/gone\"\n",
            fleet(&y, "b"),
            db.root.display()
        ),
    );
    let e = err(&b.cli(&["reload"]));
    assert!(e.contains("fleet") && e.contains("gone"), "{e}");
    assert!(in_sync(&b, &x), "still in X");

    // B moves to fleet Y: it syncs there, and X's later changes no longer reach it.
    write_config(&db, &fleet(&y, "b"));
    let r: Reloaded = answer(&b.cli(&["reload", "--json"]));
    assert!(
        r.applied
            .iter()
            .any(|l| l.starts_with(&format!("fleet sync restarted ({y} "))),
        "{r:?}"
    );
    wait_for("B in sync with Y", || in_sync(&b, &y));
    a.add("deny", &[&["ip", "198.18.90.3"]]);
    wait_for("A in sync", || in_sync(&a, &x));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!has(&b, "198.18.90.3"), "X's change reached B in Y");
    assert!(has(&b, "198.18.90.2"), "B's own entry stays");

    // B leaves: no fleet in its status, and its changes go nowhere.
    write_config(&db, "");
    let r: Reloaded = answer(&b.cli(&["reload", "--json"]));
    assert!(r.applied.contains(&"fleet sync off".to_string()), "{r:?}");
    assert!(b.status().fleet.is_none());
    b.add("deny", &[&["ip", "198.18.90.4"]]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!has(&a, "198.18.90.4"));
    assert!(in_sync(&a, &x), "A carries on");
}

#[test]
fn reload_gives_new_checker_connections_the_new_settings() {
    privileged!();
    let s = portcullis_tests::checker_setup::setup_apis(&[("shop", "")]);
    let file = s.dirs.root.join("portcullis.toml");
    // Idle keep-alive connections wait 30 s for their next request, so only the reload
    // below can close one sooner.
    let started = std::fs::read_to_string(&file)
        .expect("config")
        .replace("header_timeout = \"2s\"", "header_timeout = \"30s\"");
    std::fs::write(&file, &started).expect("config");
    let _: Reloaded = answer(&s.agent.cli(&["reload", "--json"]));
    let forwarded = ["-H", "X-Forwarded-For: 198.18.91.7"];
    let body = "x".repeat(2000);
    // HTTP/1.1 with `Expect: 100-continue` (curl's own for this size): a 413 answers before
    // any byte of the body is sent (over HTTP/2 curl may lose an early answer to a stream
    // reset while it still uploads).
    let post = ["--http1.1", "-X", "POST", "--data-binary", body.as_str()];
    s.agent.add("deny", &[&["ip", "198.18.91.7"]]);
    assert_eq!(s.curl("/shop/x", &forwarded).0, 403, "XFF trusted: denied");
    assert_eq!(s.curl("/shop/x", &post).0, 200, "2 kB body under 10 MiB");

    // A keep-alive connection open across the reload.
    let mut kept = std::net::TcpStream::connect(("127.0.0.1", s.http_port)).expect("connect");
    kept.write_all(b"GET /shop/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.18.91.7\r\n\r\n")
        .expect("write");
    let mut first = [0u8; 512];
    let n = kept.read(&mut first).expect("response");
    assert!(
        first[..n].starts_with(b"HTTP/1.1 403"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );

    // No trusted proxy any more, a 1 kB body limit, and a listener moved (restart-only).
    let other = portcullis_tests::checker_setup::free_port();
    let edited = started
        .replace(
            "trusted_proxies = [\"127.0.0.1/32\"]",
            "trusted_proxies = []",
        )
        .replace(
            &format!("http = \"127.0.0.1:{}\"", s.http_port),
            &format!("http = \"127.0.0.1:{other}\"\nmax_body_bytes = 1000"),
        );
    assert_ne!(edited, started);
    std::fs::write(&file, &edited).expect("config");
    let r: Reloaded = answer(&s.agent.cli(&["reload", "--json"]));
    assert!(
        r.applied
            .iter()
            .any(|a| a.contains("settings applied (open connections close")),
        "{r:?}"
    );
    assert_eq!(r.restart_needed, ["checker.http"], "{r:?}");
    // The open connection is closed (it was idle): its client comes back under the new
    // settings, instead of keeping the old trust for as long as it stays open.
    kept.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    let t = Instant::now();
    kept.read_to_end(&mut rest)
        .expect("the checker closes the connection after a reload");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(
        s.curl("/shop/x", &forwarded).0,
        200,
        "XFF from an untrusted peer is ignored: the client is 127.0.0.1"
    );
    assert_eq!(s.curl("/shop/x", &post).0, 413, "over the new body limit");

    // Settings that do not load are refused, and the running ones stay.
    std::fs::write(
        &file,
        edited.replace(
            "max_body_bytes = 1000",
            &format!(
                "max_body_bytes = 1000\nbackend_ca = \"{}/no-such-ca.pem\"",
                s.dirs.root.display()
            ),
        ),
    )
    .expect("config");
    let e = err(&s.agent.cli(&["reload"]));
    assert!(
        e.contains("reload refused") && e.contains("no-such-ca"),
        "{e}"
    );
    assert_eq!(s.curl("/shop/x", &forwarded).0, 200);
    assert_eq!(s.curl("/shop/x", &post).0, 413);

    // And back: the trusted proxy's client is judged again.
    std::fs::write(&file, &started).expect("config");
    let r: Reloaded = answer(&s.agent.cli(&["reload", "--json"]));
    assert!(r.restart_needed.is_empty(), "{r:?}");
    assert_eq!(s.curl("/shop/x", &forwarded).0, 403);
    assert_eq!(s.curl("/shop/x", &post).0, 200);
}

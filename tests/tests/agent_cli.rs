//! The real daemon driven only through the real CLI: every kind on both lists, ASE aliases,
//! import with rejected lines, TTL expiry, refusal of world-blocking entries, malformed
//! input, and (in a namespace pair) enforcement, `kill -9` and restart with traffic flowing.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::time::{Duration, Instant};

use portcullis::control::answer::{Counter, EntryView};
use portcullis_common::{Deadlines, NEVER};
use portcullis_tests::agent::{
    Agent, AgentDirs, AgentOpts, TempGroup, answer, cli, control_line, err, ok, portcullis_bin,
};
use portcullis_tests::http;
use portcullis_tests::kernel_check::{assert_kernel_matches_lists, kernel};
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4, in_netns};
use portcullis_tests::privileged;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

fn count(agent: &Agent, list: &str) -> usize {
    agent.entries(list).len()
}

#[test]
fn every_kind_on_both_lists_through_the_cli() {
    privileged!();
    let dirs = AgentDirs::new();
    let (agent, metrics) = Agent::with_metrics(&dirs).expect("agent");
    // Only root and the socket's group may talk to the agent.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dirs.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "control socket mode {mode:o}");
    let adds: [&[&str]; 6] = [
        &["ip", "198.18.5.0/24"],
        &["cookie", "JSESSIONID", "c00kie-value"],
        &["token", "s3cret-bearer-token"],
        &["api-key", "X-API-Key", "k3y-value"],
        &["api-key", "--any-name", "any-k3y"],
        &["username", "your name"],
    ];
    for list in ["deny", "allow"] {
        for a in adds {
            let mut args = vec![list, "add"];
            args.extend_from_slice(a);
            let out = ok(&agent.cli(&args));
            assert!(out.contains("added"), "{out}");
        }
        let entries = json(&agent.cli(&[list, "list", "--json"]));
        let entries = entries.as_array().expect("array");
        assert_eq!(entries.len(), 6, "{entries:?}");
        // Secrets never come back in clear.
        let text = serde_json::to_string(entries).expect("json");
        let secrets = [
            "c00kie-value",
            "s3cret-bearer-token",
            "k3y-value",
            "any-k3y",
        ];
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert!(
            text.contains("your name")
                && text.contains("198.18.5.0/24")
                && text.contains("JSESSIONID")
        );
        // The database holds plain SHA-256 digests (as `sha256sum` computes them), never the
        // clear values.
        let mut db = Vec::new();
        for f in ["portcullis.db", "portcullis.db-wal"] {
            db.extend(std::fs::read(dirs.root.join(f)).unwrap_or_default());
        }
        let db = String::from_utf8_lossy(&db);
        for secret in secrets {
            assert!(!db.contains(secret), "{secret} stored in clear");
        }
        let sum = std::process::Command::new("sh")
            .args(["-c", "printf %s s3cret-bearer-token | sha256sum"])
            .output()
            .expect("sha256sum");
        let hex = String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(hex.len(), 64);
        assert!(
            db.contains(&hex),
            "the token's SHA-256 {hex} is not in the database"
        );
        let only_tokens: Vec<EntryView> =
            answer(&agent.cli(&[list, "list", "--kind", "token", "--json"]));
        assert_eq!(only_tokens.len(), 1);
        // Remove each kind again, by its clear-text value.
        for a in adds {
            let mut args = vec![list, "remove"];
            args.extend_from_slice(a);
            ok(&agent.cli(&args));
        }
        assert_eq!(count(&agent, list), 0);
    }
    // ASE's verbs and output (all of them: ase_cli.rs).
    assert_eq!(
        ok(&agent.cli(&["add_blacklist", "ip", "198.18.1.1"])).trim(),
        "ip 198.18.1.1 added to blacklist"
    );
    assert_eq!(
        ok(&agent.cli(&["add_whitelist", "ip", "198.18.1.2"])).trim(),
        "ip 198.18.1.2 added to whitelist"
    );
    assert_eq!(
        ok(&agent.cli(&["view_blacklist", "ip"])).trim(),
        "Manual Blacklist\n1) type : ip, value : 198.18.1.1"
    );
    assert_eq!(
        ok(&agent.cli(&["delete_blacklist", "ip", "198.18.1.1"])).trim(),
        "ip 198.18.1.1 deleted from blacklist"
    );
    assert_eq!(
        ok(&agent.cli(&["clear_whitelist"])).trim(),
        "whitelist cleared"
    );
    // Clear by kind and source.
    ok(&agent.cli(&["deny", "add", "token", "t1"]));
    ok(&agent.cli(&["deny", "add", "ip", "198.18.2.2"]));
    ok(&agent.cli(&["deny", "clear", "--kind", "token"]));
    assert_eq!(count(&agent, "deny"), 1);
    // Status and stats answer in both forms.
    assert_eq!(agent.status().kernel_ip_entries, 1);
    // ...and the kernel itself holds exactly that one entry's slot (read through the pins).
    assert_eq!(kernel(&dirs).len(), 1);
    assert_kernel_matches_lists(&agent, &dirs);
    assert!(ok(&agent.cli(&["status"])).contains("deny   ip"));
    assert!(ok(&agent.cli(&["stats"])).contains("drop_denied"));
    // Prometheus metrics.
    let mut conn = std::net::TcpStream::connect(metrics).expect("metrics");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    std::io::Read::read_to_string(&mut conn, &mut body).expect("response");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("portcullis_xdp_packets_total{iface=\"other\",verdict=\"drop_denied\"}"),
        "{body}"
    );
    assert!(
        body.contains("portcullis_list_entries{list=\"deny\",kind=\"ip\",source=\"manual\"} 1"),
        "{body}"
    );
}

#[test]
fn malformed_input_is_refused_clearly_and_changes_nothing() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::with_config(
        &dirs,
        "management_networks = [\"198.18.200.0/24\"]\n".into(),
    )
    .expect("agent");
    ok(&agent.cli(&["deny", "add", "ip", "198.18.3.3"]));
    let before = agent.entries("deny");
    let cases: [(&[&str], &str); 9] = [
        (&["deny", "add", "ip", "198.18.0.0/33"], "prefix length"),
        (&["deny", "add", "ip", "198.18.0.300"], "invalid IP address"),
        (&["deny", "add", "bogus", "x"], "unknown identifier kind"),
        (
            &["deny", "add", "cookie", "only-a-value"],
            "cookie needs a name",
        ),
        (&["deny", "add", "ip", "0.0.0.0/0"], "every address"),
        (&["deny", "add", "ip", "::/0"], "every address"),
        (
            &["deny", "add", "ip", "198.18.0.0/16"],
            "management network",
        ),
        (
            &["deny", "add", "username", "a\u{7}b"],
            "control characters",
        ),
        (
            &["deny", "add", "ip", "198.18.0.1", "--ttl", "5 weeks"],
            "duration",
        ),
    ];
    for (args, want) in cases {
        let e = err(&agent.cli(args));
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // Invalid UTF-8 on the command line.
    let out = std::process::Command::new(portcullis_bin())
        .arg("--socket")
        .arg(dirs.socket())
        .args(["deny", "add", "username"])
        .arg(std::ffi::OsStr::from_bytes(b"bad\xff\xfe"))
        .output()
        .expect("cli");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("utf-8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A 10 MB identifier straight on the socket, and broken JSON: clear errors, agent fine.
    let mut s = std::os::unix::net::UnixStream::connect(dirs.socket()).expect("socket");
    let big = format!(
        "{{\"op\":\"add\",\"list\":\"deny\",\"kind\":\"token\",\"value\":\"{}\"}}\n",
        "x".repeat(10 << 20)
    );
    s.write_all(big.as_bytes()).expect("write");
    s.write_all(b"{\"op\":\"add\",\"list\":\n").expect("write");
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut r, &mut line).expect("answer");
    assert!(line.contains("limit is 8192"), "{line}");
    line.clear();
    std::io::BufRead::read_line(&mut r, &mut line).expect("answer");
    assert!(line.contains("invalid request"), "{line}");
    // --force allows what the safety rules refused.
    ok(&agent.cli(&["deny", "add", "ip", "198.18.0.0/16", "--force"]));
    ok(&agent.cli(&["deny", "remove", "ip", "198.18.0.0/16"]));
    assert_eq!(
        agent.entries("deny"),
        before,
        "refused input changed nothing"
    );
}

#[test]
fn import_streams_and_reports_bad_lines() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::start(&dirs, &AgentOpts::default()).expect("agent");
    let path = dirs.root.join("import.txt");
    let mut f = std::fs::File::create(&path).expect("file");
    writeln!(f, "# a feed").expect("w");
    for i in 0..30_000u32 {
        writeln!(f, "198.19.{}.{}", i >> 8, i & 255).expect("w");
    }
    writeln!(f, "not-an-ip").expect("w"); // line 30002
    writeln!(f, "token {}", "y".repeat(10 << 20)).expect("w"); // line 30003: 10 MB
    writeln!(f, r#"{{"kind":"username","value":"mallory","ttl":"1h"}}"#).expect("w");
    writeln!(f, r#"{{"kind":"ip","value":"#).expect("w"); // line 30005
    f.write_all(b"username \xff\xfe\n").expect("w"); // line 30006
    writeln!(f, "cookie SID v").expect("w");
    drop(f);
    let out = agent.cli(&[
        "deny",
        "import",
        path.to_str().expect("utf8"),
        "--reason",
        "feed",
        "--json",
    ]);
    // Refused lines fail the command, after the report (a script must notice).
    assert!(
        !out.status.success(),
        "an import with refused lines exits 1"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 lines of"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected; the 30002 entries"));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON report");
    assert_eq!(r["accepted"], 30_002, "{r}");
    let rejected: Vec<u64> = r["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|x| x[0].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(rejected, vec![30_002, 30_003, 30_005, 30_006], "{r}");
    // The 10 MB line could never fit in a request: the CLI rejects it by number itself.
    assert!(
        r["rejected"][1][1]
            .as_str()
            .is_some_and(|w| w.contains("longer than 1 MiB")),
        "{r}"
    );
    assert_eq!(count(&agent, "deny"), 30_002);
    assert_eq!(agent.status().kernel_ip_entries, 30_000);
    assert_eq!(kernel(&dirs).len(), 30_000, "host slots in the pinned maps");
    assert_kernel_matches_lists(&agent, &dirs);
    // The human form names the file and line.
    let out = agent.cli(&["deny", "import", path.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("import.txt:30002:"), "{stderr}");
}

#[test]
fn ttl_entries_expire_from_store_and_kernel() {
    privileged!();
    let dirs = AgentDirs::new();
    let (agent, port) = Agent::with_metrics(&dirs).expect("agent");
    ok(&agent.cli(&["deny", "add", "ip", "198.18.9.9", "--ttl", "2s"]));
    ok(&agent.cli(&["deny", "add", "token", "short-lived", "--ttl", "2s"]));
    ok(&agent.cli(&["deny", "add", "ip", "198.18.9.10"]));
    assert_eq!(agent.status().kernel_ip_entries, 2);
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    let d = kernel(&dirs).lookup(ip("198.18.9.9"));
    assert!(
        d.deny_until > 0 && d.deny_until < NEVER,
        "a finite kernel deadline: {d:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&agent, "deny") > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = agent.entries("deny");
    let values: Vec<&str> = left.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(values, ["198.18.9.10/32"]);
    assert_eq!(agent.status().kernel_ip_entries, 1);
    // The pruned entry is gone from the kernel maps, the other still there.
    let k = kernel(&dirs);
    assert_eq!(k.lookup(ip("198.18.9.9")), Deadlines::EMPTY);
    assert_eq!(k.lookup(ip("198.18.9.10")).deny_until, NEVER);
    assert_kernel_matches_lists(&agent, &dirs);
    assert!(agent.log_text().contains("entry expired"));
    assert_eq!(
        http::metric(&http::metrics(port), "portcullis_expired_total"),
        Some(2.0),
        "both expired entries counted"
    );
}

#[test]
fn daemon_enforces_and_survives_kill_9_without_a_gap() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    // Metrics inside the server namespace (the agent runs there).
    let metrics_addr: std::net::SocketAddr = "127.0.0.1:9469".parse().expect("addr");
    let opts = AgentOpts {
        args: vec!["--metrics".into(), metrics_addr.to_string()],
        ..AgentOpts::on_server(&pair)
    };
    let mut agent = Agent::start(&dirs, &opts).expect("agent");
    let [bad, other, allowed] = CLIENT_V4;
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 2);
    // Enforced in the kernel before the CLI returns: the very next packet is dropped.
    ok(&agent.cli(&["deny", "add", "ip", bad, "--reason", "test"]));
    assert_eq!(pair.ping(bad, SERVER_V4, 3).expect("ping"), 0);
    assert_eq!(pair.ping(other, SERVER_V4, 2).expect("ping"), 2);
    ok(&agent.cli(&["deny", "add", "ip", "198.18.0.0/29", "--force"]));
    ok(&agent.cli(&["allow", "add", "ip", allowed]));
    pair.assert_pings(other, SERVER_V4, 2, 0, "inside the denied /29");
    pair.assert_pings(allowed, SERVER_V4, 2, 2, "allow beats deny");
    let stats = agent.stats();
    let drops = |c: Option<&BTreeMap<String, Counter>>| {
        c.and_then(|c| c.get("drop_denied"))
            .map_or(0, |c| c.packets)
    };
    assert!(drops(Some(&stats.kernel)) >= 5, "{stats:?}");
    let on_iface = drops(stats.interfaces.get(&pair.server_if));
    assert!(
        on_iface >= 5,
        "drops counted on {}: {stats:?}",
        pair.server_if
    );
    ok(&agent.cli(&["deny", "remove", "ip", "198.18.0.0/29"]));

    // kill -9 while the denied client keeps pinging: not one packet gets through, before,
    // during or after the restart, and nothing is lost. The kernel's drop counter (pinned,
    // so it survives the agent) must count every ping, and the pings must go on after the
    // new agent is ready: the window provably contains the whole restart.
    let dropped = |agent: &Agent| agent.xdp_packets("drop_denied");
    let before = dropped(&agent);
    const PINGS: u32 = 60;
    let pinger = pair.ping_in_background(bad, SERVER_V4, PINGS);
    agent.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::start(&dirs, &opts).expect("restart");
    pinger.assert_none_answered(Instant::now(), "kill -9 and the restart");
    assert_eq!(
        dropped(&agent) - before,
        u64::from(PINGS),
        "every ping was dropped by XDP, none lost elsewhere"
    );
    // The metrics README promises: bytes per interface and verdict, and the restart's
    // reconcile time.
    let text = in_netns(&pair.server, || http::metrics(metrics_addr)).expect("netns");
    let bytes = http::metric(
        &text,
        &format!(
            "portcullis_xdp_bytes_total{{iface=\"{}\",verdict=\"drop_denied\"}}",
            pair.server_if
        ),
    );
    assert!(
        bytes.is_some_and(|b| b >= f64::from(PINGS) * 84.0),
        "{PINGS} pings of 98 bytes counted in bytes: {bytes:?}\n{text}"
    );
    assert!(
        http::metric(&text, "portcullis_reconcile_seconds").is_some(),
        "{text}"
    );
    let deny = agent.entries("deny");
    let reasons: Vec<&str> = deny.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["test"]);
    assert_eq!(count(&agent, "allow"), 1);
    assert!(
        agent.log_text().contains("reused_pinned_link=true"),
        "{}",
        agent.log_text()
    );
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 0);

    // SIGTERM leaves enforcement in place; detach (without an agent) removes it.
    drop(agent);
    pair.assert_pings(bad, SERVER_V4, 2, 0, "still enforced after a graceful stop");
    let out = std::process::Command::new(portcullis_bin())
        .args(["detach", "--iface", &pair.server_if, "--pin-dir"])
        .arg(&dirs.pins.0)
        .output()
        .expect("detach");
    assert!(ok(&out).contains("detached"));
    pair.assert_pings(bad, SERVER_V4, 2, 2, "traffic restored after detach");
    // With the agent gone the CLI fails clearly instead of hanging or pretending.
    let e = err(&cli(&dirs.socket(), &["status"]));
    assert!(e.contains("agent") || e.contains("socket"), "{e}");
}

/// README promises without a test so far: refusing a range that covers this host, import
/// `--ttl/--source`, `clear --source`, and `--check-config` catching a bad file.
#[test]
fn readme_promises_hold() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::start(&dirs, &AgentOpts::default()).expect("agent");
    // A range covering this host's loopback address is refused without --force.
    let e = err(&agent.cli(&["deny", "add", "ip", "127.0.0.0/8"]));
    assert!(e.contains("this host") && e.contains("--force"), "{e}");
    assert_eq!(count(&agent, "deny"), 0);
    // Import: --ttl and --source apply to every line.
    let path = dirs.root.join("feed.txt");
    std::fs::write(&path, "198.18.70.1\ntoken feed-token\n").expect("feed");
    let out = json(&agent.cli(&[
        "deny",
        "import",
        path.to_str().expect("utf8"),
        "--ttl",
        "1h",
        "--source",
        "abs",
        "--json",
    ]));
    assert_eq!(out["accepted"], 2, "{out}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    for e in agent.entries("deny") {
        assert_eq!(e.source, "abs", "{e:?}");
        let expires = e.expires.expect("an expiry");
        assert!(
            (now + 3500..=now + 3700).contains(&expires),
            "expiry {expires} is not one hour from {now}: {e:?}"
        );
    }
    // clear --source takes only that source's entries.
    ok(&agent.cli(&["deny", "add", "ip", "198.18.70.2"]));
    ok(&agent.cli(&["deny", "clear", "--source", "abs"]));
    let sources: Vec<String> = agent
        .entries("deny")
        .into_iter()
        .map(|e| e.source)
        .collect();
    assert_eq!(sources, ["manual"]);
    // A bare clear would wipe the whole list: it asks for --all, on the CLI and the socket.
    let e = err(&agent.cli(&["deny", "clear"]));
    assert!(e.contains("--all"), "{e}");
    assert_eq!(count(&agent, "deny"), 1, "nothing removed");
    let raw = control_line(&dirs.socket(), r#"{"op":"clear","list":"deny"}"#);
    assert!(raw.contains("\"ok\":false") && raw.contains("all"), "{raw}");
    assert_eq!(count(&agent, "deny"), 1, "nothing removed");
    // Comments are whole lines; a `#` after a space is refused with its line number, so a
    // token is never stored with a note glued to it.
    let feed = dirs.root.join("commented.txt");
    std::fs::write(
        &feed,
        "# a comment\ntoken tok-ok\ntoken abc # stolen 2026-11-30\n",
    )
    .expect("feed");
    let out = agent.cli(&["deny", "import", feed.to_str().expect("utf8")]);
    let e = err(&out);
    assert!(e.contains("commented.txt:3:") && e.contains('#'), "{e}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("1 entries imported (1 new)"), "{report}");
    ok(&agent.cli(&["deny", "remove", "token", "tok-ok"]));
    ok(&agent.cli(&["deny", "clear", "--all"]));
    assert_eq!(count(&agent, "deny"), 0);
    // --check-config: a good file passes, a bad one names the field and exits non-zero.
    let good = dirs.root.join("good.toml");
    std::fs::write(&good, "mode = \"monitor\"\n").expect("config");
    let check = |path: &std::path::Path| {
        std::process::Command::new(portcullis_bin())
            .args(["agent", "--check-config", "--config"])
            .arg(path)
            .output()
            .expect("check-config")
    };
    assert!(ok(&check(&good)).contains("configuration OK"));
    let bad = dirs.root.join("bad.toml");
    std::fs::write(&bad, "mode = \"loud\"\n").expect("config");
    let e = err(&check(&bad));
    assert!(e.contains("mode"), "{e}");
    let typo = dirs.root.join("typo.toml");
    std::fs::write(&typo, "prune_intervall = \"1s\"\n").expect("config");
    let e = err(&check(&typo));
    assert!(e.contains("prune_intervall"), "{e}");
}

/// Every `portcullis agent` flag replaces the file's value: `--check-config` prints the
/// effective configuration, and each flag's value must be in it.
#[test]
fn every_agent_flag_overrides_the_file() {
    let dir = std::env::temp_dir().join(portcullis_tests::unique("pcflags"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("p.toml");
    std::fs::write(
        &file,
        "interfaces = [\"file0\"]\nxdp_mode = \"native\"\nmode = \"enforce\"\nstate_dir = \"/file/state\"\npin_dir = \"/file/pins\"\nmetrics = \"127.0.0.1:1\"\n[checker]\napi_dir = \"/file/apis\"\nhttps = \"127.0.0.1:2\"\nhttp = \"127.0.0.1:3\"\ntls_cert = \"/file/c\"\ntls_key = \"/file/k\"\n[abs]\nurl = \"https://file.test\"\naccess_key = \"file-ak\"\nsecret_key_file = \"/file/sk\"\npoll = \"5m\"\nca_file = \"/file/ca\"\n",
    )
    .expect("config");
    let flags: [(&str, &str, &str); 18] = [
        ("--iface", "flag0", "interfaces = [\"flag0\"]"),
        ("--xdp-mode", "generic", "xdp_mode = \"generic\""),
        ("--mode", "monitor", "mode = \"monitor\""),
        ("--state-dir", "/flag/state", "state_dir = \"/flag/state\""),
        ("--pin-dir", "/flag/pins", "pin_dir = \"/flag/pins\""),
        ("--metrics", "127.0.0.1:11", "metrics = \"127.0.0.1:11\""),
        ("--socket", "/flag/sock", "socket = \"/flag/sock\""),
        ("--api-dir", "/flag/apis", "api_dir = \"/flag/apis\""),
        ("--https", "127.0.0.1:12", "https = \"127.0.0.1:12\""),
        ("--http", "127.0.0.1:13", "http = \"127.0.0.1:13\""),
        ("--tls-cert", "/flag/c", "tls_cert = \"/flag/c\""),
        ("--tls-key", "/flag/k", "tls_key = \"/flag/k\""),
        (
            "--abs-url",
            "https://flag.test",
            "url = \"https://flag.test\"",
        ),
        (
            "--abs-access-key",
            "flag-ak",
            // shown only as a fingerprint of its SHA-256
            "access_key = \"(set; not shown: FLAG_AK_FP)\"",
        ),
        (
            "--abs-secret-key-file",
            "/flag/sk",
            "secret_key_file = \"/flag/sk\"",
        ),
        ("--abs-poll", "30s", "poll = \"30s\""),
        ("--abs-ca", "/flag/ca", "ca_file = \"/flag/ca\""),
        (
            "--trusted-proxy",
            "10.0.0.0/8",
            "trusted_proxies = [\"10.0.0.0/8\"]",
        ),
    ];
    // Without flags, the file's values. The file names files and interfaces this machine
    // lacks: the check fails (on stderr) but still prints the effective configuration.
    let stdout = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let base = stdout(
        std::process::Command::new(portcullis_bin())
            .args(["agent", "--check-config", "--config"])
            .arg(&file)
            .output()
            .expect("check-config"),
    );
    for want in [
        "xdp_mode = \"native\"",
        "url = \"https://file.test\"",
        "trusted_proxies = []",
    ] {
        assert!(base.lines().any(|l| l == want), "{want} missing:\n{base}");
    }
    // With every flag, every flag's value. (`--socket` is the global option, before the verb.)
    let mut cmd = std::process::Command::new(portcullis_bin());
    cmd.args([
        "--socket",
        "/flag/sock",
        "agent",
        "--check-config",
        "--config",
    ])
    .arg(&file);
    for (flag, value, _) in &flags {
        if *flag == "--socket" {
            continue;
        }
        cmd.arg(flag);
        if !value.is_empty() {
            cmd.arg(value);
        }
    }
    let out = stdout(cmd.output().expect("check-config"));
    let sum = std::process::Command::new("sh")
        .args(["-c", "printf %s flag-ak | sha256sum"])
        .output()
        .expect("sha256sum");
    let fp = format!("sha256:{}…", &String::from_utf8_lossy(&sum.stdout)[..8]);
    for (flag, _, want) in &flags {
        let want = want.replace("FLAG_AK_FP", &fp);
        assert!(
            out.lines().any(|l| l == want),
            "{flag}: {want} missing:\n{out}"
        );
    }
    // The output is itself a valid configuration that yields the same effective config.
    assert!(out.starts_with("# configuration parses"), "{out}");
    assert!(
        !out.contains("flag-ak"),
        "the ABS access key is not printed"
    );
    let saved = dir.join("effective.toml");
    std::fs::write(&saved, &out).expect("save");
    let again = stdout(
        std::process::Command::new(portcullis_bin())
            .args(["agent", "--check-config", "--config"])
            .arg(&saved)
            .output()
            .expect("check-config"),
    );
    let body = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("access_key"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        body(&again),
        body(&out),
        "the printed configuration round-trips"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `socket_group`: the control socket belongs to that group with mode 0660, so its members
/// may use the CLI without root.
#[test]
fn the_socket_group_owns_the_control_socket() {
    privileged!();
    let group = TempGroup::new().expect("group");
    let gid = group.gid;
    let dirs = AgentDirs::new();
    let agent =
        Agent::with_config(&dirs, format!("socket_group = \"{}\"\n", group.name)).expect("agent");
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dirs.socket()).expect("socket");
    assert_eq!(meta.gid(), gid, "socket group");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    ok(&agent.cli(&["status"]));
    // The state is private: directory 0700, database 0600.
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("meta").mode() & 0o777;
    assert_eq!(mode(&dirs.root), 0o700, "state directory");
    assert_eq!(mode(&dirs.root.join("portcullis.db")), 0o600, "database");
    // Even with the socket and its directory opened up by mistake, the agent answers only
    // root, itself and the group's members (primary or supplementary).
    use std::os::unix::fs::PermissionsExt as _;
    for (p, m) in [(dirs.root.clone(), 0o755), (dirs.socket(), 0o666)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
    }
    let as_user = |groups: &str, args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", groups])
            .arg(portcullis_bin())
            .arg("--socket")
            .arg(dirs.socket())
            .args(args)
            .output()
            .expect("setpriv")
    };
    let e = err(&as_user("--clear-groups", &["status"]));
    assert!(e.contains("not allowed"), "{e}");
    let member = format!("--groups={gid}");
    ok(&as_user(&member, &["status"]));
    // Also with the group last among many (more than the first buffer the agent asks with).
    let many: Vec<String> = (70_000..70_100).map(|g: u32| g.to_string()).collect();
    ok(&as_user(
        &format!("--groups={},{gid}", many.join(",")),
        &["status"],
    ));
    let e = err(&as_user(
        &format!("--groups={}", many.join(",")),
        &["status"],
    ));
    assert!(e.contains("not allowed"), "{e}");
    // Members manage the lists, but only root may have the agent write or read a file.
    let copy = dirs.root.join("by-member.db");
    let e = err(&as_user(&member, &["backup", copy.to_str().expect("utf8")]));
    assert!(e.contains("for root"), "{e}");
    assert!(!copy.exists());
    // (restore fails earlier: a member cannot put the copy into the state directory)
    let e = err(&as_user(&member, &["restore", "/etc/passwd"]));
    assert!(
        e.contains("for root") || e.contains("Permission denied"),
        "{e}"
    );
}

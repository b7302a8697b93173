//! Running as a service: systemd's readiness protocol spoken to a socket the test listens on
//! (systemd is not PID 1 here), `portcullis doctor`, and JSON logs.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use portcullis::kernel::KernelState;
use portcullis::kernel::table::Slot;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, ok, portcullis_bin};
use portcullis_tests::netns::NetnsPair;
use portcullis_tests::privileged;

/// Deny entries the second start must put into fresh maps before it says READY.
const ENTRIES: u32 = 60_000;

fn host_slots(dirs: &AgentDirs) -> usize {
    KernelState::read_pinned(&dirs.pins.0)
        .map(|k| {
            k.slots
                .keys()
                .filter(|s| matches!(s, Slot::V4Host(_)))
                .count()
        })
        .unwrap_or(0)
}

/// Every notification until `until` is seen (included) or `within` passes.
fn collect(sock: &UnixDatagram, until: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .expect("timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg == until;
                got.push(msg);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[test]
fn ready_only_once_the_maps_hold_the_store_then_status_watchdog_and_stopping() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    // A store with ENTRIES deny entries, then no pinned state at all: the next start has
    // to fill fresh maps and attach before it may say READY.
    {
        let agent = Agent::start(&dirs, &AgentOpts::on_server(&pair)).expect("agent");
        let file = dirs.root.join("feed.txt");
        let lines: Vec<String> = (0..ENTRIES)
            .map(|i| format!("198.19.{}.{}", i / 256, i % 256))
            .collect();
        std::fs::write(&file, lines.join("\n")).expect("feed");
        ok(&agent.cli(&["deny", "import", file.to_str().expect("utf8")]));
    }
    ok(&portcullis_tests::agent::cli(
        &dirs.socket(),
        &["detach", "--pin-dir", dirs.pins.0.to_str().expect("utf8")],
    ));
    std::fs::remove_dir_all(&dirs.pins.0).expect("remove the pins");
    assert_eq!(pair.server_xdp_mode(), "none");

    let path = dirs.root.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
    let opts = AgentOpts {
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        ..AgentOpts::on_server(&pair)
    };
    let start = std::thread::scope(|s| {
        let agent = s.spawn(|| Agent::start(&dirs, &opts));
        let before = collect(&sock, "READY=1", Duration::from_secs(30));
        // Read the moment READY arrives: the maps and the link must already be there.
        let at_ready = (host_slots(&dirs), pair.server_xdp_mode());
        (agent.join().expect("start thread"), before, at_ready)
    });
    let (agent, before, (slots, mode)) = start;
    let mut agent = agent.expect("agent");
    assert_eq!(
        before.last().map(String::as_str),
        Some("READY=1"),
        "{before:?}"
    );
    assert_eq!(
        slots, ENTRIES as usize,
        "every stored entry in the kernel at READY"
    );
    assert_ne!(mode, "none", "the filter attached at READY");
    assert!(
        before
            .iter()
            .any(|m| m.starts_with("STATUS=starting: making the kernel maps equal")),
        "{before:?}"
    );
    // After READY: what it enforces, then the watchdog every 200 ms (half of 400 ms).
    let after = collect(&sock, "", Duration::from_millis(1500));
    let expect = format!(
        "STATUS=enforcing on {}; {ENTRIES} deny and 0 allow entries",
        pair.server_if
    );
    assert_eq!(after.first(), Some(&expect), "{after:?}");
    let pets = after.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        (4..=10).contains(&pets),
        "{pets} WATCHDOG=1 in 1.5 s: {after:?}"
    );
    assert!(
        !after.iter().any(|m| m == "READY=1" || m == "STOPPING=1"),
        "{after:?}"
    );

    agent.stop().expect("clean stop");
    let end = collect(&sock, "", Duration::from_millis(300));
    let stopping = end.iter().position(|m| m == "STOPPING=1");
    assert!(stopping.is_some(), "STOPPING=1 on SIGTERM: {end:?}");
    assert!(
        end.iter().any(|m| m.starts_with("STATUS=stopping")),
        "{end:?}"
    );
}

#[test]
fn without_watchdog_usec_no_watchdog_and_a_missing_socket_does_not_stop_the_agent() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    let path = dirs.root.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind");
    let opts = AgentOpts {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts).expect("agent");
    let got = collect(&sock, "", Duration::from_millis(800));
    assert!(got.iter().any(|m| m == "READY=1"), "{got:?}");
    assert!(!got.iter().any(|m| m == "WATCHDOG=1"), "{got:?}");
    drop(agent);
    // systemd gone (the socket path no longer exists): the agent runs and answers anyway.
    drop(sock);
    std::fs::remove_file(&path).expect("rm");
    let opts = AgentOpts {
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "100000".into()),
        ],
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts).expect("agent without a listener");
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.status().interfaces.len() == 1);
}

#[test]
fn doctor_tells_native_from_generic_and_names_what_is_missing() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let doctor = |prefix: &[&str], extra: &[&str]| {
        let mut cmd = std::process::Command::new(prefix[0]);
        cmd.args(&prefix[1..])
            .arg(portcullis_bin())
            .args([
                "doctor",
                "--json",
                "--iface",
                &pair.server_if,
                "--iface",
                "lo",
            ])
            .args(extra);
        cmd.output().expect("doctor")
    };
    let ns = format!("--net=/run/netns/{}", pair.server);
    let out = doctor(&["nsenter", &ns, "--"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let find = |name: &str| {
        checks
            .as_array()
            .and_then(|a| a.iter().find(|c| c["check"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} missing: {checks}"))
    };
    for c in ["kernel", "bpffs", "capabilities"] {
        assert_eq!(find(c)["outcome"], "ok", "{checks}");
    }
    let veth = find(&format!("iface {}", pair.server_if));
    assert_eq!(veth["outcome"], "ok", "veth runs XDP natively: {veth}");
    let lo = find("iface lo");
    assert_eq!(lo["outcome"], "warn", "{lo}");
    assert!(
        lo["fix"].as_str().is_some_and(|f| f.contains("generic")),
        "{lo}"
    );

    // Without capabilities (root with an empty bounding set) and with a missing interface:
    // both fail, both say what to do, and the exit status says so.
    let out = doctor(
        &["nsenter", &ns, "--", "setpriv", "--bounding-set=-all", "--"],
        &["--iface", "pc-none0"],
    );
    assert_eq!(out.status.code(), Some(1));
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let caps = checks
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == "capabilities").cloned())
        .expect("capabilities");
    assert_eq!(caps["outcome"], "fail", "{caps}");
    assert!(
        caps["found"]
            .as_str()
            .is_some_and(|f| f.contains("CAP_BPF")),
        "{caps}"
    );
    assert!(
        caps["fix"].as_str().is_some_and(|f| f.contains("root")),
        "{caps}"
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("2 check(s) failed"), "{e}");

    // An XDP program on the interface: the agent's own (its pins, named by the config) is
    // fine; seen with another pin_dir, it is a program Portcullis cannot attach behind.
    let dirs = AgentDirs::new();
    let _agent = Agent::start(&dirs, &AgentOpts::on_server(&pair)).expect("agent");
    let config = dirs.root.join("doctor.toml");
    std::fs::write(
        &config,
        format!("pin_dir = \"{}\"\n", dirs.pins.0.display()),
    )
    .expect("config");
    let config = config.display().to_string();
    let xdp = |out: &std::process::Output| -> serde_json::Value {
        let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        checks
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|c| c["check"] == format!("xdp {}", pair.server_if))
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no xdp check: {checks}"))
    };
    let ours = doctor(&["nsenter", &ns, "--"], &["--config", &config]);
    assert_eq!(
        xdp(&ours)["outcome"],
        "ok",
        "{}",
        String::from_utf8_lossy(&ours.stdout)
    );
    let elsewhere = dirs.root.join("elsewhere.toml");
    std::fs::write(&elsewhere, "pin_dir = \"/sys/fs/bpf/pc-not-these\"\n").expect("config");
    let foreign = doctor(
        &["nsenter", &ns, "--"],
        &["--config", &elsewhere.display().to_string()],
    );
    assert_eq!(foreign.status.code(), Some(1));
    let c = xdp(&foreign);
    assert_eq!(c["outcome"], "fail", "{c}");
    assert!(
        c["fix"]
            .as_str()
            .is_some_and(|f| f.contains("does not chain")),
        "{c}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_the_documented_fields() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    let opts = AgentOpts {
        args: vec!["--log-format".into(), "json".into()],
        ..AgentOpts::on_server(&pair)
    };
    let mut agent = Agent::start(&dirs, &opts).expect("agent");
    agent.add("deny", &[&["ip", "198.19.7.7"]]);
    agent.stop().expect("stop");
    let log = agent.log_text();
    let mut ready = false;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(
                v.get(key).is_some_and(|x| x.is_string()),
                "{key} missing: {line}"
            );
        }
        if v["message"] == "agent ready" {
            ready = true;
            assert_eq!(v["level"], "INFO");
            assert!(
                v["socket"].is_string(),
                "the event's own fields at the top: {line}"
            );
        }
    }
    assert!(ready, "{log}");
}

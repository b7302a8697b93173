//! The off switch, tried as an operator handling a false positive would: `portcullis detach`
//! takes the filter off the interface at once, with the agent running (also after a restart
//! that reused the pinned link) or stopped; a running agent reports the interface detached
//! and leaves it off until `portcullis attach`; `status` tells the XDP mode the kernel has,
//! and a changed `--xdp-mode` is applied on restart.

use std::process::Output;
use std::time::Duration;

use portcullis::control::answer::LinkState;
use portcullis::kernel::AttachMode;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, TempGroup, ok, portcullis_bin};
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use portcullis_tests::privileged;

/// The XDP mode `status` reports for `iface` (`none` while detached), as `ip link` names it.
fn mode(agent: &Agent, iface: &str) -> &'static str {
    agent
        .interface(iface)
        .xdp_mode
        .map_or("none", AttachMode::as_str)
}

/// A namespace pair and an agent configuration attaching to its server end (`--xdp-mode`
/// given when `mode` is).
fn setup(mode: Option<&str>) -> (NetnsPair, AgentDirs, AgentOpts) {
    let pair = NetnsPair::new().expect("namespaces");
    let opts = AgentOpts {
        args: mode
            .map(|m| vec!["--xdp-mode".into(), m.into()])
            .unwrap_or_default(),
        ..AgentOpts::on_server(&pair)
    };
    (pair, AgentDirs::new(), opts)
}

/// Starts the agent and denies `bad`, whose pings are then dropped.
fn denying(pair: &NetnsPair, dirs: &AgentDirs, opts: &AgentOpts, bad: &str) -> Agent {
    let agent = Agent::start(dirs, opts).expect("agent");
    ok(&agent.cli(&["deny", "add", "ip", bad]));
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 0);
    agent
}

fn detach(agent: &Agent, dirs: &AgentDirs, iface: &str) -> Output {
    let pins = dirs.pins.0.to_str().expect("utf8");
    agent.cli(&["detach", "--iface", iface, "--pin-dir", pins])
}

#[test]
fn detach_takes_the_filter_off_while_the_agent_runs_and_it_stays_off() {
    privileged!();
    let (pair, dirs, opts) = setup(None);
    let iface = pair.server_if.as_str();
    let [bad, ..] = CLIENT_V4;
    let mut agent = denying(&pair, &dirs, &opts, bad);
    // A restart reuses the pinned link: the case where detach used to lie.
    agent.stop().expect("stop");
    let agent = Agent::start(&dirs, &opts).expect("restart");
    assert!(agent.interface(iface).reused_pinned_link);
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 0);

    let text = ok(&detach(&agent, &dirs, iface));
    assert!(text.contains(&format!("detached from {iface}")), "{text}");
    pair.assert_pings(
        bad,
        SERVER_V4,
        2,
        2,
        "the filter is off the interface while the agent runs",
    );
    assert_eq!(pair.server_xdp_mode(), "none");
    let s = agent.interface(iface);
    assert_eq!((s.state, s.xdp_mode), (LinkState::Detached, None), "{s:?}");
    let human = ok(&agent.cli(&["status"]));
    assert!(human.contains("DETACHED"), "{human}");
    // The agent does not put it back on its own (its link check runs every second).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 2);
    assert_eq!(agent.interface(iface).state, LinkState::Detached);
    // Lists still change while detached, and apply again once attached.
    ok(&agent.cli(&["deny", "add", "ip", CLIENT_V4[1]]));

    let text = ok(&agent.cli(&["attach", "--iface", iface]));
    assert!(text.contains(&format!("attached to {iface}")), "{text}");
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 0);
    assert_eq!(pair.ping(CLIENT_V4[1], SERVER_V4, 2).expect("ping"), 0);
    assert_eq!(agent.interface(iface).state, LinkState::Attached);
    assert_eq!(mode(&agent, iface), pair.server_xdp_mode());
}

#[test]
fn detach_behind_the_agents_back_and_with_the_agent_stopped() {
    privileged!();
    let (pair, dirs, opts) = setup(None);
    let iface = pair.server_if.as_str();
    let [bad, ..] = CLIENT_V4;
    let mut agent = denying(&pair, &dirs, &opts, bad);
    // An operator on another socket (or an unreachable agent): the CLI detaches in the
    // kernel itself and the agent notices on its own.
    let out = std::process::Command::new(portcullis_bin())
        .args([
            "--socket",
            "/nonexistent/portcullis.sock",
            "detach",
            "--iface",
            iface,
        ])
        .arg("--pin-dir")
        .arg(&dirs.pins.0)
        .output()
        .expect("detach");
    assert!(ok(&out).contains("detached"));
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent.interface(iface).state != LinkState::Detached {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not notice the detach: {:?}",
            agent.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.log_text().contains("detached outside the agent"));

    // Stopped agent: detach, then a restart with the interface configured enforces again.
    ok(&agent.cli(&["attach"]));
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 0);
    agent.stop().expect("stop");
    pair.assert_pings(bad, SERVER_V4, 2, 0, "outlives the agent");
    let out = std::process::Command::new(portcullis_bin())
        .args(["detach", "--pin-dir"])
        .arg(&dirs.pins.0)
        .output()
        .expect("detach");
    assert!(ok(&out).contains(&format!("detached from {iface}")));
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 2);
    let agent = Agent::start(&dirs, &opts).expect("restart");
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 0);
    assert_eq!(agent.interface(iface).state, LinkState::Attached);
}

#[test]
fn status_tells_the_kernels_xdp_mode_and_a_changed_mode_is_applied() {
    privileged!();
    let (pair, dirs, generic) = setup(Some("generic"));
    let iface = pair.server_if.as_str();
    let [bad, ..] = CLIENT_V4;
    let with_mode = |mode: &str| AgentOpts {
        args: vec!["--xdp-mode".into(), mode.into()],
        ..generic.clone()
    };
    let mut agent = Agent::start(&dirs, &with_mode("generic")).expect("agent");
    ok(&agent.cli(&["deny", "add", "ip", bad]));
    assert_eq!(pair.server_xdp_mode(), "generic");
    assert_eq!(mode(&agent, iface), "generic");
    agent.stop().expect("stop");
    // Same mode: the link is reused and still reported as generic (it used to say native).
    let mut agent = Agent::start(&dirs, &with_mode("generic")).expect("agent");
    let s = agent.interface(iface);
    assert_eq!(
        (s.xdp_mode, s.reused_pinned_link),
        (Some(AttachMode::Generic), true),
        "{s:?}"
    );
    agent.stop().expect("stop");
    // A native request over a generic link keeps it (native may have been refused before:
    // replacing it at every restart would open a gap each time) and says so; the operator
    // switches it explicitly.
    let agent = Agent::start(&dirs, &with_mode("native")).expect("agent");
    assert_eq!(pair.server_xdp_mode(), "generic");
    assert_eq!(mode(&agent, iface), "generic");
    assert!(
        agent.log_text().contains("--xdp-mode native"),
        "{}",
        agent.log_text()
    );
    ok(&agent.cli(&["attach", "--iface", iface, "--xdp-mode", "native"]));
    assert_eq!(pair.server_xdp_mode(), "native");
    assert_eq!(mode(&agent, iface), "native");
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 0);
    assert_eq!(pair.ping(CLIENT_V4[1], SERVER_V4, 2).expect("ping"), 2);
}

#[test]
fn a_socket_group_member_can_use_the_off_switch() {
    privileged!();
    let group = TempGroup::new().expect("group");
    let (pair, dirs, mut opts) = setup(None);
    opts.config = format!("socket_group = \"{}\"\n", group.name);
    let iface = pair.server_if.as_str();
    let [bad, ..] = CLIENT_V4;
    let agent = denying(&pair, &dirs, &opts, bad);
    // As in a real install, the socket's directory is open to all (/run/portcullis is 0755)
    // and the socket to the group.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dirs.root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // The member cannot read the pins (root's), but the running agent detaches for it.
    let pins = dirs.pins.0.to_str().expect("utf8");
    let out = group.cli_as_member(&dirs.socket(), &["detach", "--pin-dir", pins]);
    let text = ok(&out);
    assert!(
        text.contains(&format!("detached from {iface} (by the agent)")),
        "{text}"
    );
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 2);
    assert_eq!(agent.interface(iface).state, LinkState::Detached);
    ok(&group.cli_as_member(&dirs.socket(), &["attach"]));
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 0);
}

//! A start that cannot finish does not begin, and one that fails half-way leaves nothing
//! attached that was not attached before: `--check-config` names everything on this machine
//! that would stop a start, and the agent refuses to start on the same checks before it
//! loads or attaches anything.

use std::net::TcpListener;

use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, ok, portcullis_bin};
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4, in_netns};
use portcullis_tests::privileged;

#[test]
fn check_config_names_every_problem_on_this_machine() {
    let dirs = AgentDirs::new();
    let file = dirs.root.join("p.toml");
    std::fs::write(
        &file,
        format!(
            "interfaces = [\"pcnone0\"]\nsocket_group = \"pc-no-such-group\"\nmetrics = \"192.0.2.1:9464\"\n[checker]\nhttps = \"127.0.0.1:18443\"\ntls_cert = \"{0}/missing.crt\"\ntls_key = \"{0}/missing.key\"\napi_dir = \"{0}/no-apis\"\n[abs]\nurl = \"https://abs.test\"\nsecret_key_file = \"{0}/no-secret\"\n",
            dirs.root.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(portcullis_bin())
        .args(["agent", "--check-config", "--config"])
        .arg(&file)
        .output()
        .expect("check-config");
    assert!(!out.status.success(), "problems must fail the check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would not start") && !stdout.contains("configuration OK"),
        "{stdout}"
    );
    let e = String::from_utf8_lossy(&out.stderr);
    for field in [
        "socket_group: group \"pc-no-such-group\" does not exist",
        "interfaces: \"pcnone0\" does not exist",
        "metrics: cannot listen on 192.0.2.1:9464",
        "checker.tls_cert",
        "checker.api_dir",
        "abs.secret_key_file",
    ] {
        assert!(e.contains(field), "{field} missing from:\n{e}");
    }
}

#[test]
fn a_refused_start_attaches_nothing() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    let opts = AgentOpts {
        config: "socket_group = \"pc-no-such-group\"\n".into(),
        ..AgentOpts::on_server(&pair)
    };
    let e = format!("{:#}", Agent::start(&dirs, &opts).err().expect("refused"));
    assert!(e.contains("pc-no-such-group"), "{e}");
    assert!(pair.server_xdp_mode() == "none", "nothing attached");
    assert!(
        !dirs
            .pins
            .0
            .join(format!("link_{}", pair.server_if))
            .exists()
    );
}

#[test]
fn a_start_that_fails_half_way_takes_off_only_what_it_attached() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    // The metrics port is taken in the agent's namespace: only binding it finds out, after
    // the filter is attached.
    let port = 19470;
    let blocker = in_netns(&pair.server, || {
        let l = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        (l, TcpListener::bind(("127.0.0.1", port)))
    })
    .expect("netns");
    let _blocker = blocker.1.expect("bind blocker");
    let busy = AgentOpts {
        args: vec!["--metrics".into(), format!("127.0.0.1:{port}")],
        ..AgentOpts::on_server(&pair)
    };
    let e = format!("{:#}", Agent::start(&dirs, &busy).err().expect("fails"));
    assert!(e.contains("metrics"), "{e}");
    assert!(
        pair.server_xdp_mode() == "none",
        "the failed start took its filter off again"
    );
    assert!(
        !dirs
            .pins
            .0
            .join(format!("link_{}", pair.server_if))
            .exists()
    );

    // An agent that was enforcing before: its link stays through a failed restart.
    let good = AgentOpts::on_server(&pair);
    let mut agent = Agent::start(&dirs, &good).expect("agent");
    let [bad, ..] = CLIENT_V4;
    ok(&agent.cli(&["deny", "add", "ip", bad]));
    agent.stop().expect("stop");
    assert!(Agent::start(&dirs, &busy).is_err());
    assert!(pair.server_xdp_mode() != "none");
    pair.assert_pings(
        bad,
        SERVER_V4,
        2,
        0,
        "still enforced after a failed restart",
    );
}

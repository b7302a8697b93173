//! Upgrades without a gap: a restart whose maps no longer fit the pinned ones (here a changed
//! `[capacity]`, as a new map layout would be) moves the old maps aside instead of refusing
//! to start, fills new maps from the store, and swaps the program in the link: not one
//! packet from a denied source gets through, and changes afterwards reach the kernel.

use std::time::Instant;

use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, ok};
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use portcullis_tests::privileged;

#[test]
fn a_changed_capacity_is_migrated_without_a_gap() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    let opts = AgentOpts::on_server(&pair);
    let [bad, other, _] = CLIENT_V4;
    let mut agent = Agent::start(&dirs, &opts).expect("agent");
    ok(&agent.cli(&["deny", "add", "ip", bad]));
    agent.stop().expect("stop");

    const PINGS: u32 = 60;
    let pinger = pair.ping_in_background(bad, SERVER_V4, PINGS);
    let resized = AgentOpts {
        config: "[capacity]\nv4_hosts = 4096\n".into(),
        ..opts.clone()
    };
    let agent = Agent::start(&dirs, &resized).expect("the agent starts on new maps");
    pinger.assert_none_answered(Instant::now(), "the migration");
    assert!(
        agent.log_text().contains("moved aside"),
        "{}",
        agent.log_text()
    );
    let stale: Vec<_> = std::fs::read_dir(&dirs.pins.0)
        .expect("pins")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("stale-"))
        .collect();
    assert!(stale.is_empty(), "the old maps' pins are removed");
    // The link runs the new program on the new maps: a change now reaches the kernel.
    ok(&agent.cli(&["deny", "add", "ip", other]));
    assert_eq!(pair.ping(other, SERVER_V4, 2).expect("ping"), 0);
    ok(&agent.cli(&["deny", "remove", "ip", bad]));
    assert_eq!(pair.ping(bad, SERVER_V4, 2).expect("ping"), 2);
}
